"""The cluster graph store: a MongoDB (or MongoDB-wire) database shared by every worker.

Layout of the database named in the URI (``mongodb://host:port/dbname``):

``nodes``
    ``{id, z, y, x, size}`` — ``id`` is the fragment id mapped to int64 by
    :func:`~blockwise.store.tables.ids_to_signed` (BSON has no uint64; the map
    keeps the order, so id ranges stay range queries); ``z, y, x`` the centre
    in nm, ``size`` in voxels.
``edges``
    ``{u, v, score[, merge_score]}`` — ``u < v`` mapped like ``id``;
    ``merge_score`` is absent when it is NaN (never merged in its block).
``meta``
    ``{_id: key, value}`` — run metadata; ``_id`` makes keys unique for free.

Indexes (created on open, see :data:`INDEXES`): nodes ``id`` (unique) and
``(z, y, x)``; edges ``(u, v)`` (unique), ``v`` and ``(merge_score, u, v)``.
``u`` has no index of its own: ``(u, v)`` starts with it, so every ``u``
lookup already uses that index (MongoDB's own advice is to drop an index
that is the prefix of another), and a redundant index costs every insert.
``(merge_score, u, v)`` gives the streaming order itself, so a real MongoDB
server can stream the merged edges without a blocking sort.

Index policy on open: a collection that is missing one of these indexes
gets it when the collection is empty (a new store, or one that another
worker is creating right now — creating an existing index is a no-op);
a collection that already holds data without them was made by something
else, and opening it raises :class:`~blockwise.errors.StoreError` rather
than build indexes on a live store behind its owner's back (and rather
than let a missing unique index allow duplicates).

Failures: a server that does not answer when the store is opened is
reported at once (a wrong URI or a server that is not running is far more
likely than an outage at that moment). After that every operation is
retried on transient failures (lost connection, timeouts, server shutting
down or stepping down) as :class:`RetryPolicy` says; only when the server
stays unreachable does it raise StoreError, naming the URI.
"""

from __future__ import annotations

import logging
import math
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import bson
import numpy as np
from funlib.geometry import Roi
from numpy.typing import NDArray
from pymongo import IndexModel, MongoClient, uri_parser
from pymongo.collection import Collection
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    CursorNotFound,
    OperationFailure,
    PyMongoError,
)

from blockwise.errors import StoreError
from blockwise.geometry import IdRange
from blockwise.store.base import GraphStore, check_block_rows
from blockwise.store.tables import (
    EdgeTable,
    NodeTable,
    id_to_signed,
    ids_from_signed,
    ids_to_signed,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
Document = dict[str, Any]


@dataclass(frozen=True)
class IndexSpec:
    """One index the store needs: its name, key fields (all ascending), uniqueness."""

    name: str
    keys: tuple[str, ...]
    is_unique: bool = False


INDEXES: dict[str, tuple[IndexSpec, ...]] = {
    "nodes": (
        IndexSpec("id_unique", ("id",), is_unique=True),
        IndexSpec("position", ("z", "y", "x")),
    ),
    "edges": (
        # also serves every lookup by u alone (u is its leading field)
        IndexSpec("u_v_unique", ("u", "v"), is_unique=True),
        IndexSpec("v", ("v",)),
        IndexSpec("merge_order", ("merge_score", "u", "v")),
    ),
}

# server error codes that mean "try again": the server is shutting down,
# stepping down or was briefly unreachable from the node that answered
_TRANSIENT_CODES = frozenset({6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436})
_DUPLICATE_KEY = 11000
# a block written by two workers at once (a straggler and its re-run) ends
# in duplicate-key errors; each writer then rewrites the block, so the last
# writer wins. Bounded, with jitter, so two writers cannot chase each other.
_CONFLICT_ATTEMPTS = 8
# ids per $in query when reading the edges of the nodes in a ROI
_IN_CHUNK = 10_000
_EDGE_FIELDS = {"_id": 0, "u": 1, "v": 1, "score": 1, "merge_score": 1}
_NODE_FIELDS = {"_id": 0, "id": 1, "z": 1, "y": 1, "x": 1, "size": 1}


@dataclass(frozen=True)
class RetryPolicy:
    """How hard the store tries before it declares the server unreachable.

    An operation is tried ``attempts`` times; before try ``k + 1`` it waits
    ``min(first_backoff_s * 2**(k - 1), max_backoff_s)``. Each try waits at
    most ``server_selection_timeout_s`` for a server, so the defaults give up
    after about 5 * 3 s + (1 + 2 + 4 + 8) s = 30 s.

    Attributes:
        attempts: tries per operation, at least 1.
        first_backoff_s: wait after the first failure, in seconds.
        max_backoff_s: longest wait between two tries, in seconds.
        server_selection_timeout_s: how long one try waits for a reachable server.
        connect_timeout_s: how long opening one connection may take.
        socket_timeout_s: how long one request may wait for its reply; it must
            cover the server's sort of every merged edge on the first batch.
    """

    attempts: int = 5
    first_backoff_s: float = 1.0
    max_backoff_s: float = 8.0
    server_selection_timeout_s: float = 3.0
    connect_timeout_s: float = 3.0
    socket_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"retry attempts must be at least 1, got {self.attempts}")
        for name in (
            "first_backoff_s",
            "max_backoff_s",
            "server_selection_timeout_s",
            "connect_timeout_s",
            "socket_timeout_s",
        ):
            if not getattr(self, name) >= 0:
                raise ValueError(f"retry {name} must be >= 0, got {getattr(self, name)}")

    def backoff_s(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure in a row (1-based)."""
        return float(min(self.first_backoff_s * 2.0 ** (failures - 1), self.max_backoff_s))


def redact_uri(uri: str) -> str:
    """``uri`` with any password replaced by ``***``, fit for messages and logs."""
    return re.sub(r"^(mongodb(?:\+srv)?://[^:/@]*):[^@/]*@", r"\1:***@", uri)


def is_transient(error: PyMongoError) -> bool:
    """Whether ``error`` is worth retrying (network trouble, a server going down)."""
    if isinstance(error, ConnectionFailure):  # AutoReconnect, NetworkTimeout, ServerSelection...
        return True
    if isinstance(error, BulkWriteError):
        errors = error.details.get("writeErrors", []) + error.details.get("writeConcernErrors", [])
        return bool(errors) and all(e.get("code") in _TRANSIENT_CODES for e in errors)
    if isinstance(error, OperationFailure):
        return error.code in _TRANSIENT_CODES or error.has_error_label("RetryableWriteError")
    return False


def _only_duplicates(error: BulkWriteError) -> bool:
    errors = error.details.get("writeErrors", [])
    return (
        bool(errors)
        and not error.details.get("writeConcernErrors")
        and all(e.get("code") == _DUPLICATE_KEY for e in errors)
    )


class MongoGraphStore(GraphStore):
    """Graph store in a MongoDB database, for many workers on many machines.

    Args:
        uri: ``mongodb://host:port/dbname[?options]``; the database name is
            required. Timeouts given as URI options win over ``retry``'s.
        retry: retry and timeout policy.
        batch_size: documents per server round trip when reading; bounds the
            memory a read holds besides its result.

    Raises:
        StoreError: if the URI is malformed or names no database, the server
            does not answer, or the collections lack their indexes and
            already hold data.
    """

    def __init__(
        self, uri: str, *, retry: RetryPolicy | None = None, batch_size: int = 10_000
    ) -> None:
        self.uri = uri
        self.retry = retry or RetryPolicy()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self._name = redact_uri(uri)
        try:
            parsed = uri_parser.parse_uri(uri)
        except (PyMongoError, ValueError) as e:
            raise StoreError(
                f"graph store URI {self._name!r} is malformed: {e}; expected "
                "mongodb://HOST:PORT/DBNAME[?OPTIONS]"
            ) from e
        database = parsed["database"]
        if not database:
            raise StoreError(
                f"graph store URI {self._name!r} names no database; expected "
                "mongodb://HOST:PORT/DBNAME[?OPTIONS], e.g. mongodb://localhost:27017/my_run"
            )
        options: Mapping[str, Any] = parsed["options"]  # case-insensitive keys
        timeouts: dict[str, Any] = {
            "serverSelectionTimeoutMS": self.retry.server_selection_timeout_s * 1000,
            "connectTimeoutMS": self.retry.connect_timeout_s * 1000,
            "socketTimeoutMS": self.retry.socket_timeout_s * 1000,
        }
        kwargs = {k: v for k, v in timeouts.items() if k not in options}
        try:
            self._client: MongoClient[Document] = MongoClient(uri, **kwargs)
        except (PyMongoError, ValueError) as e:
            raise StoreError(f"graph store URI {self._name!r} is not usable: {e}") from e
        self._db = self._client[database]
        try:
            self._ping()
            self._retry("checking the indexes", self._ensure_indexes)
        except BaseException:
            self._client.close()
            raise

    # -- plumbing ----------------------------------------------------------------

    def _collection(self, name: str) -> Collection[Document]:
        return self._db[name]

    def _ping(self) -> None:
        try:
            self._client.admin.command("ping")
        except PyMongoError as e:
            raise StoreError(
                f"graph store {self._name} does not answer (waited "
                f"{self.retry.server_selection_timeout_s:g} s for a server): {e}; check the "
                "host and port and that the server is running"
            ) from e

    def _retry(self, what: str, operation: Callable[[], T]) -> T:
        """Run ``operation``, retrying transient failures as the policy says."""
        start = time.monotonic()
        for attempt in range(1, self.retry.attempts + 1):
            try:
                return operation()
            except PyMongoError as e:
                self._after_failure(what, e, attempt, start)
        raise AssertionError("unreachable")  # the last failure raised above

    def _after_failure(self, what: str, error: PyMongoError, failures: int, start: float) -> None:
        """Raise StoreError for a final or permanent failure; else log and back off."""
        if not is_transient(error):
            raise StoreError(f"graph store {self._name}: {what} failed: {error}") from error
        if failures >= self.retry.attempts:
            raise StoreError(
                f"graph store {self._name}: {what} failed {failures} times over "
                f"{time.monotonic() - start:.1f} s; the server stayed unreachable "
                f"(last error: {error})"
            ) from error
        delay = self.retry.backoff_s(failures)
        logger.warning(
            "graph store %s: %s hit a transient failure (%s); retry %d of %d in %.1f s",
            self._name,
            what,
            error,
            failures,
            self.retry.attempts - 1,
            delay,
        )
        time.sleep(delay)

    def _ensure_indexes(self) -> None:
        for name, specs in INDEXES.items():
            collection = self._collection(name)
            existing = {
                tuple(key for key, _ in info["key"]): bool(info.get("unique", False))
                for info in collection.index_information().values()
            }
            missing = [
                s
                for s in specs
                if not (s.keys in existing and (existing[s.keys] or not s.is_unique))
            ]
            if not missing:
                continue
            if collection.find_one({}, projection={"_id": 1}) is not None:
                wanted = ", ".join(
                    f"({', '.join(s.keys)}){' unique' if s.is_unique else ''}" for s in missing
                )
                raise StoreError(
                    f"graph store {self._name}: collection {name!r} holds data but lacks the "
                    f"index(es) {wanted}; it was not made by blockwise. Use a fresh database, "
                    "or create these indexes (after removing duplicates) and open it again"
                )
            collection.create_indexes(
                [
                    IndexModel([(key, 1) for key in s.keys], name=s.name, unique=s.is_unique)
                    for s in missing
                ]
            )

    def _replace_block(
        self, name: str, field: str, id_range: IdRange, documents: list[Document]
    ) -> None:
        """Delete the documents whose ``field`` lies in ``id_range``, insert ``documents``."""
        collection = self._collection(name)
        in_range = {"$gte": id_to_signed(id_range.first), "$lte": id_to_signed(id_range.last)}

        def replace() -> None:
            for conflict in range(_CONFLICT_ATTEMPTS):
                collection.delete_many({field: in_range})
                if not documents:
                    return
                try:
                    collection.insert_many(documents, ordered=False)
                    return
                except BulkWriteError as e:
                    if not _only_duplicates(e):
                        raise
                    # another writer is writing this block now: rewrite it
                    logger.debug(
                        "graph store %s: %s of ids [%d, %d] collided with another writer; "
                        "rewriting",
                        self._name,
                        name,
                        id_range.first,
                        id_range.last,
                    )
                    time.sleep(random.uniform(0.01, 0.05) * (conflict + 1))
            raise StoreError(
                f"graph store {self._name}: {name} of ids [{id_range.first}, {id_range.last}] "
                f"still collided with another writer after {_CONFLICT_ATTEMPTS} rewrites; "
                "is the same block being written by several workers at once?"
            )

        what = f"writing {name} of ids [{id_range.first}, {id_range.last}]"
        self._retry(what, replace)

    # -- writes ------------------------------------------------------------------

    def write_nodes(self, id_range: IdRange, nodes: NodeTable) -> None:
        check_block_rows(id_range, nodes.id, "node")
        documents = [
            {"id": i, "z": z, "y": y, "x": x, "size": s}
            for i, (z, y, x), s in zip(
                ids_to_signed(nodes.id).tolist(),
                nodes.center_nm.astype(np.float64).tolist(),
                nodes.size_vx.tolist(),
                strict=True,
            )
        ]
        self._replace_block("nodes", "id", id_range, documents)

    def write_edges(self, id_range: IdRange, edges: EdgeTable) -> None:
        check_block_rows(id_range, edges.u, "edge u")
        if np.any(edges.u >= edges.v):
            raise ValueError("every edge must have u < v")
        documents: list[Document] = []
        stats = edges.statistics if edges.statistics is not None else [None] * len(edges)
        for u, v, score, merge, stat in zip(
            ids_to_signed(edges.u).tolist(),
            ids_to_signed(edges.v).tolist(),
            edges.score.astype(np.float64).tolist(),
            edges.merge_score.astype(np.float64).tolist(),
            stats,
            strict=True,
        ):
            document: Document = {"u": u, "v": v, "score": score}
            if not math.isnan(merge):  # NaN (never merged) is stored as absent
                document["merge_score"] = merge
            if stat is not None:
                document["stats"] = bson.Binary(stat)
            documents.append(document)
        self._replace_block("edges", "u", id_range, documents)

    # -- reads -------------------------------------------------------------------

    @staticmethod
    def _roi_filter(roi: Roi | None) -> Document:
        if roi is None:
            return {}
        return {
            axis: {"$gte": begin, "$lt": end}
            for axis, begin, end in zip("zyx", roi.begin, roi.end, strict=True)
        }

    @staticmethod
    def _nodes(rows: list[tuple[Any, ...]]) -> NodeTable:
        if not rows:
            return NodeTable.empty()
        ids, z, y, x, size = zip(*rows, strict=True)
        return NodeTable(
            ids_from_signed(np.array(ids, dtype=np.int64)),
            np.stack([np.array(c, dtype=np.float64) for c in (z, y, x)], axis=1),
            np.array(size, dtype=np.int64),
        )

    @staticmethod
    def _edges(rows: list[tuple[Any, ...]]) -> EdgeTable:
        if not rows:
            return EdgeTable.empty()
        columns = list(zip(*rows, strict=True))
        u, v, score, merge = columns[:4]
        stats = tuple(bytes(s) for s in columns[4]) if len(columns) > 4 else None
        return EdgeTable(
            ids_from_signed(np.array(u, dtype=np.int64)),
            ids_from_signed(np.array(v, dtype=np.int64)),
            np.array(score, dtype=np.float32),
            # None (absent: never merged) becomes NaN
            np.array(merge, dtype=np.float64).astype(np.float32),
            stats,
        )

    @staticmethod
    def _edge_row(d: Document, with_statistics: bool = False) -> tuple[Any, ...]:
        row = (d["u"], d["v"], d["score"], d.get("merge_score"))
        return (*row, d.get("stats", b"")) if with_statistics else row

    def read_nodes(self, roi: Roi | None = None) -> NodeTable:
        def read() -> NodeTable:
            cursor = self._collection("nodes").find(
                self._roi_filter(roi), _NODE_FIELDS, batch_size=self.batch_size
            )
            with cursor:
                rows = [(d["id"], d["z"], d["y"], d["x"], d["size"]) for d in cursor]
            return self._nodes(rows).sorted()

        return self._retry(f"reading nodes in {roi}", read)

    def read_edges(self, roi: Roi | None = None, with_statistics: bool = False) -> EdgeTable:
        edges = self._collection("edges")
        fields = {**_EDGE_FIELDS, "stats": 1} if with_statistics else _EDGE_FIELDS

        def read_all() -> EdgeTable:
            with edges.find({}, fields, batch_size=self.batch_size) as cursor:
                return self._edges([self._edge_row(d, with_statistics) for d in cursor]).sorted()

        def read_in_roi() -> EdgeTable:
            # the edges of the nodes in the ROI: find the nodes, then their
            # edges by u (indexed), a bounded number of ids per query
            node_ids = self._signed_ids(self._roi_filter(roi))
            rows: list[tuple[Any, ...]] = []
            for start in range(0, len(node_ids), _IN_CHUNK):
                chunk = node_ids[start : start + _IN_CHUNK]
                query = {"u": {"$in": chunk}}
                with edges.find(query, fields, batch_size=self.batch_size) as cursor:
                    rows.extend(self._edge_row(d, with_statistics) for d in cursor)
            return self._edges(rows).sorted()

        if roi is None:
            return self._retry("reading edges", read_all)
        return self._retry(f"reading edges in {roi}", read_in_roi)

    def _signed_ids(self, query: Document) -> list[int]:
        cursor = self._collection("nodes").find(
            query, {"_id": 0, "id": 1}, batch_size=self.batch_size
        )
        with cursor:
            return [d["id"] for d in cursor]

    def node_ids(self) -> NDArray[np.uint64]:
        ids = self._retry("reading node ids", lambda: self._signed_ids({}))
        return np.sort(ids_from_signed(np.array(ids, dtype=np.int64)))

    def stream_merged_edges(self, chunk_size: int) -> Iterator[EdgeTable]:
        """Edges with a merge score, by increasing (merge_score, u, v), ``chunk_size`` at a time.

        The server sorts; the client holds one cursor batch (``batch_size``
        documents) and one chunk at a time. A connection or server cursor lost
        mid-stream (server restart, idle-cursor timeout while the caller works on
        a chunk) resumes after the last edge received, as the retry policy allows.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        edges = self._collection("edges")
        order = [("merge_score", 1), ("u", 1), ("v", 1)]
        buffer: list[tuple[Any, ...]] = []
        last: tuple[Any, ...] | None = None  # the last row received, to resume after
        failures = 0  # in a row, without an edge received in between
        start = time.monotonic()  # of the current run of failures
        while True:
            if last is None:
                # excludes absent (NaN) merge scores, and NaN itself if another writer stored it
                query: Document = {"merge_score": {"$gte": -math.inf}}
            else:
                u, v, _, m = last
                query = {
                    "$or": [
                        {"merge_score": {"$gt": m}},
                        {"merge_score": m, "u": {"$gt": u}},
                        {"merge_score": m, "u": u, "v": {"$gt": v}},
                    ]
                }
            cursor = edges.find(
                query,
                _EDGE_FIELDS,
                sort=order,
                batch_size=min(self.batch_size, max(chunk_size, 1)),
                allow_disk_use=True,
            )
            try:
                for document in cursor:
                    last = self._edge_row(document)
                    buffer.append(last)
                    failures = 0
                    if len(buffer) == chunk_size:
                        yield self._edges(buffer)
                        buffer = []
                if buffer:
                    yield self._edges(buffer)
                return
            except PyMongoError as e:
                if failures == 0:
                    start = time.monotonic()
                failures += 1
                if isinstance(e, CursorNotFound) and failures < self.retry.attempts:
                    # the server restarted, or dropped the cursor while the caller was busy
                    # with a chunk longer than the server's idle-cursor timeout: resume
                    logger.info("graph store %s: merged-edge cursor lost; resuming", self._name)
                    continue
                self._after_failure("streaming merged edges", e, failures, start)
            finally:
                cursor.close()

    def count_nodes(self) -> int:
        return self._retry("counting nodes", lambda: self._collection("nodes").count_documents({}))

    def count_edges(self) -> int:
        return self._retry("counting edges", lambda: self._collection("edges").count_documents({}))

    def clear(self, table: Literal["nodes", "edges"]) -> None:
        if table not in ("nodes", "edges"):
            raise ValueError(f"table must be nodes or edges, got {table!r}")
        self._retry(f"clearing {table}", lambda: self._collection(table).delete_many({}))

    # -- metadata ----------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        document = self._retry(
            f"reading meta {key!r}", lambda: self._collection("meta").find_one({"_id": key})
        )
        return None if document is None else str(document["value"])

    def set_meta(self, key: str, value: str) -> None:
        self._retry(
            f"writing meta {key!r}",
            lambda: self._collection("meta").replace_one(
                {"_id": key}, {"value": value}, upsert=True
            ),
        )

    def close(self) -> None:
        self._client.close()
