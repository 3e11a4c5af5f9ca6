"""The embedded default graph store: one SQLite file in the run directory."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
from funlib.geometry import Roi
from numpy.typing import NDArray

from blockwise.errors import DiskFullError, StoreError, as_disk_full
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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    id INTEGER PRIMARY KEY,
    z REAL NOT NULL, y REAL NOT NULL, x REAL NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS nodes_position ON nodes (z, y, x);
CREATE TABLE IF NOT EXISTS edges (
    u INTEGER NOT NULL, v INTEGER NOT NULL,
    score REAL NOT NULL, merge_score REAL, stats BLOB,
    PRIMARY KEY (u, v)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS edges_v ON edges (v);
CREATE INDEX IF NOT EXISTS edges_merge_score ON edges (merge_score) WHERE merge_score IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# a writer waits this long for another worker's transaction before failing
BUSY_TIMEOUT_S = 120.0


class SQLiteGraphStore(GraphStore):
    """Graph store in one SQLite file (WAL mode, safe for local worker processes).

    Ids are uint64; they are stored with their top bit flipped as SQLite's
    signed 64-bit integers, which keeps their order. A full disk ("database or
    disk is full") raises :class:`~blockwise.errors.DiskFullError` naming the
    file; a write that fails leaves nothing of itself (its transaction rolls back).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.uri = f"sqlite:///{self.path}"
        if not self.path.parent.is_dir():
            raise StoreError(f"graph store {self.uri}: directory {self.path.parent} does not exist")
        try:
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            full = as_disk_full(e, self.path)
            if full is not None:
                raise DiskFullError(self.path, full.reason) from None
            raise StoreError(f"graph store {self.uri} cannot be opened: {e}") from None

    def _error(self, error: sqlite3.Error, what: str) -> StoreError | DiskFullError:
        """The error to raise for ``error``: a full disk names the file, the rest a StoreError."""
        full = as_disk_full(error, self.path)
        if full is not None:
            return DiskFullError(self.path, full.reason)
        return StoreError(f"graph store {self.uri}: {what}: {error}")

    def _write(self, statements: list[tuple[str, object]]) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, rows in statements:
                    if isinstance(rows, list):
                        self._db.executemany(sql, rows)
                    else:
                        self._db.execute(sql, rows)  # type: ignore[arg-type]
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite rolls back itself on a full disk
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise self._error(e, "write failed") from None

    def write_nodes(self, id_range: IdRange, nodes: NodeTable) -> None:
        check_block_rows(id_range, nodes.id, "node")
        rows = list(
            zip(
                ids_to_signed(nodes.id).tolist(),
                *nodes.center_nm.T.tolist(),
                nodes.size_vx.tolist(),
                strict=True,
            )
        )
        bounds = (id_to_signed(id_range.first), id_to_signed(id_range.last))
        self._write(
            [
                ("DELETE FROM nodes WHERE id BETWEEN ? AND ?", bounds),
                ("INSERT INTO nodes (id, z, y, x, size) VALUES (?, ?, ?, ?, ?)", rows),
            ]
        )

    def write_edges(self, id_range: IdRange, edges: EdgeTable) -> None:
        check_block_rows(id_range, edges.u, "edge u")
        if np.any(edges.u >= edges.v):
            raise ValueError("every edge must have u < v")
        merge = [None if np.isnan(m) else float(m) for m in edges.merge_score.tolist()]
        stats = edges.statistics if edges.statistics is not None else [None] * len(edges)
        rows = list(
            zip(
                ids_to_signed(edges.u).tolist(),
                ids_to_signed(edges.v).tolist(),
                edges.score.astype(np.float64).tolist(),
                merge,
                stats,
                strict=True,
            )
        )
        bounds = (id_to_signed(id_range.first), id_to_signed(id_range.last))
        self._write(
            [
                ("DELETE FROM edges WHERE u BETWEEN ? AND ?", bounds),
                (
                    "INSERT INTO edges (u, v, score, merge_score, stats) VALUES (?, ?, ?, ?, ?)",
                    rows,
                ),
            ]
        )

    def _query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise self._error(e, "query failed") from None

    @staticmethod
    def _roi_clause(roi: Roi | None, prefix: str = "") -> tuple[str, tuple[object, ...]]:
        if roi is None:
            return "", ()
        clause = " AND ".join(f"{prefix}{a} >= ? AND {prefix}{a} < ?" for a in "zyx")
        params = tuple(v for b, e in zip(roi.begin, roi.end, strict=True) for v in (b, e))
        return f" WHERE {clause}", params

    def read_nodes(self, roi: Roi | None = None) -> NodeTable:
        where, params = self._roi_clause(roi)
        rows = self._query(f"SELECT id, z, y, x, size FROM nodes{where} ORDER BY id", params)
        if not rows:
            return NodeTable.empty()
        table = np.array(rows, dtype=object)
        return NodeTable(
            ids_from_signed(table[:, 0].astype(np.int64)),
            table[:, 1:4].astype(np.float64),
            table[:, 4].astype(np.int64),
        )

    @staticmethod
    def _edges(rows: list[tuple[object, ...]]) -> EdgeTable:
        if not rows:
            return EdgeTable.empty()
        table = np.array(rows, dtype=object)
        merge = np.array([np.nan if m is None else m for m in table[:, 3]], dtype=np.float32)
        stats = None
        if table.shape[1] > 4:
            stats = tuple(b"" if s is None else bytes(s) for s in table[:, 4])
        return EdgeTable(
            ids_from_signed(table[:, 0].astype(np.int64)),
            ids_from_signed(table[:, 1].astype(np.int64)),
            table[:, 2].astype(np.float32),
            merge,
            stats,
        )

    def read_edges(self, roi: Roi | None = None, with_statistics: bool = False) -> EdgeTable:
        columns = "e.u, e.v, e.score, e.merge_score" + (", e.stats" if with_statistics else "")
        if roi is None:
            rows = self._query(f"SELECT {columns} FROM edges e ORDER BY e.u, e.v")
        else:
            where, params = self._roi_clause(roi, "n.")
            rows = self._query(
                f"SELECT {columns} FROM edges e "
                f"JOIN nodes n ON n.id = e.u{where} ORDER BY e.u, e.v",
                params,
            )
        return self._edges(rows)

    def node_ids(self) -> NDArray[np.uint64]:
        rows = self._query("SELECT id FROM nodes ORDER BY id")
        return ids_from_signed(np.array([r[0] for r in rows], dtype=np.int64))

    def stream_merged_edges(self, chunk_size: int) -> Iterator[EdgeTable]:
        try:
            cursor = self._db.execute(
                "SELECT u, v, score, merge_score FROM edges WHERE merge_score IS NOT NULL "
                "ORDER BY merge_score, u, v"
            )
            while rows := cursor.fetchmany(chunk_size):
                yield self._edges(rows)
        except sqlite3.Error as e:
            raise StoreError(f"graph store {self.uri}: reading edges failed: {e}") from None

    def count_nodes(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM nodes")[0][0])  # type: ignore[call-overload]

    def count_edges(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM edges")[0][0])  # type: ignore[call-overload]

    def clear(self, table: Literal["nodes", "edges"]) -> None:
        if table not in ("nodes", "edges"):
            raise ValueError(f"table must be nodes or edges, got {table!r}")
        self._write([(f"DELETE FROM {table}", ())])

    def get_meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self._write([("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))])

    def close(self) -> None:
        self._db.close()
