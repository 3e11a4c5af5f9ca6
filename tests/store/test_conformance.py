"""One conformance suite for every graph-store backend, plus MongoDB-only failure modes.

Every test taking ``backend`` or ``store`` runs against an SQLite file and a
real MongoDB-wire server (SecantusDB, see conftest.py). Graphs stay small:
the test server inserts about 9k documents a second and scans for box queries.
"""

from __future__ import annotations

import logging
import multiprocessing
import random
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from funlib.geometry import Roi
from pymongo import MongoClient

from blockwise.errors import StoreError
from blockwise.geometry import IdRange
from blockwise.store import EdgeTable, GraphStore, NodeTable, open_store
from blockwise.store.mongo import INDEXES, MongoGraphStore, RetryPolicy, redact_uri

from .conftest import Backend, SecantusServer, free_port

REPO = Path(__file__).resolve().parents[2]
UINT64_MAX = 2**64 - 1
BLOCK_IDS = 1000  # ids per block in the synthetic grids below


# -- synthetic graphs ---------------------------------------------------------------


def block_range(block: int, base: int = 0) -> IdRange:
    """The ids of ``block``: ``base + block * BLOCK_IDS + [1, BLOCK_IDS]``."""
    first = base + block * BLOCK_IDS + 1
    return IdRange(first, first + BLOCK_IDS - 1)


def random_nodes(rng: np.random.Generator, id_range: IdRange, n: int) -> NodeTable:
    """``n`` distinct ids from ``id_range``, centres uniform in [0, 100)^3 nm."""
    span = id_range.last - id_range.first + 1
    offsets = rng.choice(span, size=n, replace=False).astype(np.uint64)
    ids = np.uint64(id_range.first) + offsets
    sizes = rng.integers(1, 2**40, size=n, dtype=np.int64)
    return NodeTable(ids, rng.uniform(0, 100, size=(n, 3)), sizes)


def random_edges(
    rng: np.random.Generator,
    u_candidates: np.ndarray,
    n: int,
    *,
    nan_fraction: float = 0.3,
    max_gap: int = 2 * BLOCK_IDS,
) -> EdgeTable:
    """Up to ``n`` distinct edges (u, v), u from ``u_candidates``, u < v <= u + max_gap.

    Merge scores come from a few values (many ties) with some NaN.
    """
    u = rng.choice(u_candidates, size=n).astype(np.uint64)
    room = np.minimum(np.uint64(max_gap), np.uint64(UINT64_MAX) - u)
    keep = room > 0
    u, room = u[keep], room[keep]
    v = u + np.uint64(1) + (rng.random(len(u)) * room.astype(np.float64)).astype(np.uint64) % room
    pairs = np.unique(np.stack([u, v], axis=1), axis=0)
    m = len(pairs)
    merge = rng.integers(0, 8, size=m).astype(np.float32) / np.float32(8)
    merge[rng.random(m) < nan_fraction] = np.nan
    return EdgeTable(pairs[:, 0], pairs[:, 1], rng.random(m, dtype=np.float32), merge)


def assert_nodes_equal(actual: NodeTable, expected: NodeTable) -> None:
    """Same rows in the same order, with the interface's dtypes."""
    assert actual.id.dtype == np.uint64
    np.testing.assert_array_equal(actual.id, expected.id)
    np.testing.assert_array_equal(actual.center_nm, expected.center_nm)
    np.testing.assert_array_equal(actual.size_vx, expected.size_vx)


def assert_edges_equal(actual: EdgeTable, expected: EdgeTable) -> None:
    """Same rows in the same order (NaN merge scores equal), with the interface's dtypes."""
    assert actual.u.dtype == actual.v.dtype == np.uint64
    assert actual.score.dtype == actual.merge_score.dtype == np.float32
    np.testing.assert_array_equal(actual.u, expected.u)
    np.testing.assert_array_equal(actual.v, expected.v)
    np.testing.assert_array_equal(actual.score, expected.score)
    np.testing.assert_array_equal(actual.merge_score, expected.merge_score)


def concat_nodes(tables: list[NodeTable]) -> NodeTable:
    """Rows of all tables."""
    return NodeTable(
        np.concatenate([t.id for t in tables]),
        np.concatenate([t.center_nm for t in tables]),
        np.concatenate([t.size_vx for t in tables]),
    )


def block_graph(block: int, base: int = 0) -> tuple[IdRange, NodeTable, EdgeTable]:
    """A deterministic small graph of ``block``: its nodes and the edges it owns."""
    rng = np.random.default_rng(1000 + block)
    id_range = block_range(block, base)
    nodes = random_nodes(rng, id_range, 40)
    return id_range, nodes, random_edges(rng, nodes.id, 80)


# -- round trips -------------------------------------------------------------------


def test_nodes_and_edges_round_trip_with_ids_above_2_pow_63(store: GraphStore) -> None:
    rng = np.random.default_rng(0)
    ranges = [
        IdRange(1, 1000),
        IdRange(2**63 - 500, 2**63 + 499),  # crosses the sign bit of the stored int64
        IdRange(UINT64_MAX - 999, UINT64_MAX),
    ]
    all_nodes, all_edges = [], []
    for id_range in ranges:
        nodes = random_nodes(rng, id_range, 200)
        ids = np.append(nodes.id[:-1], np.uint64(id_range.last))  # the range's extreme
        nodes = NodeTable(ids, nodes.center_nm, nodes.size_vx)
        edges = random_edges(rng, nodes.id, 300)
        store.write_nodes(id_range, nodes)
        store.write_edges(id_range, edges)
        all_nodes.append(nodes)
        all_edges.append(edges)
    nodes = concat_nodes(all_nodes).sorted()
    edges = EdgeTable.concatenate(all_edges).sorted()

    assert int(nodes.id.max()) == UINT64_MAX
    assert np.any(edges.v > np.uint64(2**63))
    assert_nodes_equal(store.read_nodes(), nodes)
    assert_edges_equal(store.read_edges(), edges)
    np.testing.assert_array_equal(store.node_ids(), nodes.id)
    assert store.count_nodes() == len(nodes)
    assert store.count_edges() == len(edges)


def test_edge_statistics_round_trip(store: GraphStore) -> None:
    id_range, nodes, edges = block_graph(3, base=2**63)
    rng = np.random.default_rng(5)
    stats = tuple(rng.bytes(int(n)) for n in rng.integers(0, 300, len(edges)))
    with_stats = EdgeTable(edges.u, edges.v, edges.score, edges.merge_score, stats)
    store.write_nodes(id_range, nodes)
    store.write_edges(id_range, with_stats)
    read = store.read_edges(with_statistics=True)
    expected = with_stats.sorted()
    assert_edges_equal(read, expected)
    assert read.statistics == expected.statistics
    assert store.read_edges().statistics is None
    # edges written without statistics read back as empty bytes
    store.write_edges(id_range, edges)
    assert set(store.read_edges(with_statistics=True).statistics or ()) == {b""}


def test_empty_store_reads_empty_tables(store: GraphStore) -> None:
    assert len(store.read_nodes()) == 0
    assert len(store.read_edges()) == 0
    assert len(store.read_edges(Roi((0, 0, 0), (10, 10, 10)))) == 0
    assert store.node_ids().dtype == np.uint64 and len(store.node_ids()) == 0
    assert list(store.stream_merged_edges(10)) == []
    assert store.count_nodes() == store.count_edges() == 0


def test_roi_queries_match_brute_force(store: GraphStore) -> None:
    rng = np.random.default_rng(1)
    all_nodes, all_edges = [], []
    for block in range(3):
        id_range = block_range(block)
        nodes = random_nodes(rng, id_range, 400)
        edges = random_edges(rng, nodes.id, 800)
        store.write_nodes(id_range, nodes)
        store.write_edges(id_range, edges)
        all_nodes.append(nodes)
        all_edges.append(edges)
    nodes = concat_nodes(all_nodes).sorted()
    edges = EdgeTable.concatenate(all_edges).sorted()
    centre_of = dict(zip(nodes.id.tolist(), nodes.center_nm, strict=True))

    rois = [Roi((0, 0, 0), (100, 100, 100)), Roi((200, 0, 0), (10, 10, 10))]
    for _ in range(8):
        begin = rng.integers(0, 80, size=3)
        shape = rng.integers(1, 60, size=3)
        rois.append(Roi(tuple(begin.tolist()), tuple(shape.tolist())))
    for roi in rois:
        begin, end = np.array(roi.begin), np.array(roi.end)

        def inside(c: np.ndarray, begin: np.ndarray = begin, end: np.ndarray = end) -> np.ndarray:
            return np.all((c >= begin) & (c < end), axis=-1)

        in_roi = inside(nodes.center_nm)
        expected_nodes = NodeTable(nodes.id[in_roi], nodes.center_nm[in_roi], nodes.size_vx[in_roi])
        assert_nodes_equal(store.read_nodes(roi), expected_nodes)

        u_inside = np.array([bool(inside(centre_of[u])) for u in edges.u.tolist()], dtype=bool)
        expected_edges = EdgeTable(
            edges.u[u_inside], edges.v[u_inside], edges.score[u_inside], edges.merge_score[u_inside]
        )
        assert_edges_equal(store.read_edges(roi), expected_edges)


# -- idempotent block writes --------------------------------------------------------


def test_rewriting_a_block_replaces_exactly_that_block(store: GraphStore) -> None:
    rng = np.random.default_rng(2)
    neighbour_range, neighbour_nodes, neighbour_edges = block_graph(1)
    store.write_nodes(neighbour_range, neighbour_nodes)
    store.write_edges(neighbour_range, neighbour_edges)
    id_range = block_range(0)
    first_nodes = random_nodes(rng, id_range, 300)
    first_edges = random_edges(rng, first_nodes.id, 600)

    for _ in range(2):  # the same content twice: a re-run block
        store.write_nodes(id_range, first_nodes)
        store.write_edges(id_range, first_edges)
    assert store.count_nodes() == len(first_nodes) + len(neighbour_nodes)
    assert store.count_edges() == len(first_edges) + len(neighbour_edges)

    # different content (other ids, fewer rows): the second write replaces the first
    second_nodes = random_nodes(rng, id_range, 100)
    second_edges = random_edges(rng, second_nodes.id, 150)
    store.write_nodes(id_range, second_nodes)
    store.write_edges(id_range, second_edges)
    assert_nodes_equal(store.read_nodes(), concat_nodes([second_nodes, neighbour_nodes]).sorted())
    assert_edges_equal(
        store.read_edges(), EdgeTable.concatenate([second_edges, neighbour_edges]).sorted()
    )

    # an empty block clears its rows only
    store.write_nodes(id_range, NodeTable.empty())
    store.write_edges(id_range, EdgeTable.empty())
    assert_nodes_equal(store.read_nodes(), neighbour_nodes.sorted())
    assert_edges_equal(store.read_edges(), neighbour_edges.sorted())


def test_writes_reject_rows_outside_the_block_and_unordered_edges(store: GraphStore) -> None:
    id_range, nodes, edges = block_graph(0)
    outside = block_range(1).first
    bad_nodes = NodeTable(
        np.append(nodes.id, np.uint64(outside)),
        np.vstack([nodes.center_nm, [[1.0, 2.0, 3.0]]]),
        np.append(nodes.size_vx, 5),
    )
    with pytest.raises(ValueError, match="range"):
        store.write_nodes(id_range, bad_nodes)

    def with_edge(u: int, v: int) -> EdgeTable:
        extra = EdgeTable(
            np.array([u], np.uint64),
            np.array([v], np.uint64),
            np.array([0.5], np.float32),
            np.array([0.5], np.float32),
        )
        return EdgeTable.concatenate([edges, extra])

    with pytest.raises(ValueError, match="range"):
        store.write_edges(id_range, with_edge(outside, outside + 1))
    with pytest.raises(ValueError, match="u < v"):
        store.write_edges(id_range, with_edge(id_range.first + 5, id_range.first + 5))
    with pytest.raises(ValueError, match="u < v"):
        store.write_edges(id_range, with_edge(id_range.first + 9, id_range.first + 2))
    assert store.count_nodes() == store.count_edges() == 0  # nothing half-written


def rewrite_blocks(uri: str, seed: int, num_blocks: int, rounds: int) -> None:
    """Worker process: write every block ``rounds`` times, in a shuffled order."""
    order = list(range(num_blocks)) * rounds
    random.Random(seed).shuffle(order)
    with open_store(uri) as store:
        for block in order:
            id_range, nodes, edges = block_graph(block)
            store.write_nodes(id_range, nodes)
            store.write_edges(id_range, edges)


def test_concurrent_rewrites_from_several_processes_never_duplicate(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = backend.open()
    num_blocks, workers = 5, 4
    # spawned children import this module by name, so the repository root must be on their path
    monkeypatch.syspath_prepend(str(REPO))
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=rewrite_blocks, args=(backend.uri, seed, num_blocks, 2))
        for seed in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()
    assert [p.exitcode for p in processes] == [0] * workers

    graphs = [block_graph(block) for block in range(num_blocks)]
    nodes = concat_nodes([g[1] for g in graphs]).sorted()
    edges = EdgeTable.concatenate([g[2] for g in graphs]).sorted()
    assert store.count_nodes() == len(nodes)
    assert store.count_edges() == len(edges)
    stored = store.read_edges()
    assert len(np.unique(np.stack([stored.u, stored.v], axis=1), axis=0)) == len(stored)
    assert_nodes_equal(store.read_nodes(), nodes)
    assert_edges_equal(stored, edges)


# -- streaming merged edges ---------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 7, 10_000])
def test_merged_edges_stream_in_merge_score_order(store: GraphStore, chunk_size: int) -> None:
    rng = np.random.default_rng(3)
    all_edges = []
    for block, base in [(0, 0), (1, 0), (0, 2**63 - 1500)]:  # ids on both sides of 2**63
        id_range = block_range(block, base)
        u = np.arange(id_range.first, id_range.first + 60, dtype=np.uint64)
        edges = random_edges(rng, u, 120, nan_fraction=0.25)
        store.write_edges(id_range, edges)
        all_edges.append(edges)
    edges = EdgeTable.concatenate(all_edges)
    merged = ~np.isnan(edges.merge_score)
    assert 0 < merged.sum() < len(edges)
    order = np.lexsort((edges.v[merged], edges.u[merged], edges.merge_score[merged]))
    expected = EdgeTable(
        edges.u[merged][order],
        edges.v[merged][order],
        edges.score[merged][order],
        edges.merge_score[merged][order],
    )

    chunks = list(store.stream_merged_edges(chunk_size))
    assert all(len(c) == chunk_size for c in chunks[:-1])
    assert 0 < len(chunks[-1]) <= chunk_size
    assert_edges_equal(EdgeTable.concatenate(chunks), expected)


def test_abandoned_stream_releases_its_cursor(store: GraphStore) -> None:
    id_range, _, edges = block_graph(0)
    store.write_edges(id_range, edges)
    stream = store.stream_merged_edges(3)
    assert isinstance(stream, Generator)
    assert len(next(stream)) == 3
    stream.close()  # no ResourceWarning (they are errors here), store still usable
    assert store.count_edges() == len(edges)


# -- metadata and persistence -------------------------------------------------------


def test_meta_round_trip(store: GraphStore) -> None:
    assert store.get_meta("config_hash") is None
    store.set_meta("config_hash", "abc123")
    store.set_meta("note", "ünïcode ✓ and 'quotes'")
    assert store.get_meta("config_hash") == "abc123"
    store.set_meta("config_hash", "def456")
    assert store.get_meta("config_hash") == "def456"
    assert store.get_meta("note") == "ünïcode ✓ and 'quotes'"


def test_store_survives_a_restart(backend: Backend) -> None:
    store = backend.open()
    id_range, nodes, edges = block_graph(0, base=2**63)
    store.write_nodes(id_range, nodes)
    store.write_edges(id_range, edges)
    store.set_meta("stage", "fragments")
    store.close()

    backend.restart()

    reopened = backend.open()
    assert_nodes_equal(reopened.read_nodes(), nodes.sorted())
    assert_edges_equal(reopened.read_edges(), edges.sorted())
    assert reopened.get_meta("stage") == "fragments"


# -- MongoDB only: URIs, reachability, indexes, retries -----------------------------


@pytest.mark.parametrize(
    "uri",
    [
        "mongodb://127.0.0.1:notaport/run",
        "mongodb://",
        "mongodb://127.0.0.1:27017/run?noSuchOption=1",
        "mongodb://127.0.0.1:27017/bad name",
    ],
)
def test_malformed_uri_is_a_store_error_naming_it(uri: str) -> None:
    with pytest.raises(StoreError, match="malformed") as error:
        open_store(uri)
    assert uri in str(error.value)


@pytest.mark.parametrize("suffix", ["", "/", "/?directConnection=true"])
def test_uri_without_database_is_a_store_error(suffix: str) -> None:
    with pytest.raises(StoreError, match="names no database"):
        open_store(f"mongodb://127.0.0.1:27017{suffix}")


def test_password_is_redacted_in_messages() -> None:
    assert redact_uri("mongodb://bob:s3cret@db:27017/run") == "mongodb://bob:***@db:27017/run"
    assert redact_uri("mongodb://db:27017/run") == "mongodb://db:27017/run"


def test_unreachable_server_is_a_quick_store_error_naming_the_uri() -> None:
    uri = f"mongodb://127.0.0.1:{free_port()}/run?directConnection=true"
    start = time.monotonic()
    with pytest.raises(StoreError, match="does not answer") as error:
        open_store(uri)
    assert time.monotonic() - start < 10
    assert uri in str(error.value)


def test_collections_with_data_but_without_indexes_are_refused(mongo_uri: str) -> None:
    with raw_client(mongo_uri) as client:
        client.get_default_database()["edges"].insert_one({"u": 1, "v": 2, "score": 0.5})
    with pytest.raises(StoreError, match=r"'edges' holds data but lacks the index") as error:
        MongoGraphStore(mongo_uri)
    assert "(u, v) unique" in str(error.value)


def test_empty_collections_without_indexes_get_them(mongo_uri: str) -> None:
    with raw_client(mongo_uri) as client:
        client.get_default_database().create_collection("nodes")
    with MongoGraphStore(mongo_uri):
        pass
    with raw_client(mongo_uri) as client:
        database = client.get_default_database()
        for name, specs in INDEXES.items():
            indexes = database[name].index_information()
            for spec in specs:
                assert indexes[spec.name]["key"] == [(key, 1) for key in spec.keys]
                assert indexes[spec.name].get("unique", False) == spec.is_unique
    with MongoGraphStore(mongo_uri):  # opening again finds them and changes nothing
        pass


def test_edge_lookups_by_u_and_by_v_use_an_index(mongo_uri: str) -> None:
    with MongoGraphStore(mongo_uri) as store:
        id_range, _, edges = block_graph(0)
        store.write_edges(id_range, edges)
    with raw_client(mongo_uri) as client:
        collection = client.get_default_database()["edges"]
        for query in ({"u": {"$gte": 5, "$lte": 50}}, {"u": {"$in": [5, 7]}}, {"v": 9}):
            plan = collection.find(query).explain()["queryPlanner"]["winningPlan"]
            assert "IXSCAN" in str(plan), (query, plan)


def raw_client(uri: str) -> MongoClient[dict[str, Any]]:
    """A plain pymongo client, to set up or inspect what the store sees."""
    return MongoClient(uri, serverSelectionTimeoutMS=5000)


def outage_policy(attempts: int) -> RetryPolicy:
    """Short timeouts, so that an outage of a second or two spans several retries."""
    return RetryPolicy(
        attempts=attempts,
        first_backoff_s=0.2,
        max_backoff_s=1.0,
        server_selection_timeout_s=0.5,
        connect_timeout_s=0.5,
    )


def test_write_during_an_outage_succeeds_after_retries(
    mongo_server: SecantusServer, mongo_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    with MongoGraphStore(mongo_uri, retry=outage_policy(12)) as store:
        first_range, first_nodes, _ = block_graph(0)
        store.write_nodes(first_range, first_nodes)  # a pooled connection, soon dead
        id_range, nodes, edges = block_graph(1)

        mongo_server.stop()

        def restart_soon() -> None:
            time.sleep(1.5)
            mongo_server.start()

        restarter = threading.Thread(target=restart_soon)
        restarter.start()
        try:
            with caplog.at_level(logging.WARNING, logger="blockwise.store.mongo"):
                store.write_nodes(id_range, nodes)
                store.write_edges(id_range, edges)
        finally:
            restarter.join()
        assert any("transient failure" in r.getMessage() for r in caplog.records)
        assert_nodes_equal(store.read_nodes(), concat_nodes([first_nodes, nodes]).sorted())
        assert_edges_equal(store.read_edges(), edges.sorted())


def test_server_that_stays_down_is_a_store_error_naming_the_uri(
    mongo_server: SecantusServer, mongo_uri: str
) -> None:
    with MongoGraphStore(mongo_uri, retry=outage_policy(2)) as store:
        id_range, nodes, _ = block_graph(0)
        mongo_server.stop()
        try:
            with pytest.raises(StoreError, match="stayed unreachable") as error:
                store.write_nodes(id_range, nodes)
        finally:
            mongo_server.start()
    assert mongo_uri in str(error.value)


def test_stream_resumes_after_a_server_restart(
    mongo_server: SecantusServer, mongo_uri: str
) -> None:
    with MongoGraphStore(mongo_uri, retry=outage_policy(8), batch_size=5) as store:
        id_range, _, edges = block_graph(0)
        store.write_edges(id_range, edges)
        merged = ~np.isnan(edges.merge_score)
        order = np.lexsort((edges.v[merged], edges.u[merged], edges.merge_score[merged]))

        stream = store.stream_merged_edges(4)
        chunks = [next(stream)]
        mongo_server.restart()  # the server-side cursor is gone
        chunks.extend(stream)

    streamed = EdgeTable.concatenate(chunks)
    np.testing.assert_array_equal(streamed.u, edges.u[merged][order])
    np.testing.assert_array_equal(streamed.v, edges.v[merged][order])
