"""Graph-store throughput: block-wise edge writes, then the merge-ordered stream.

Run from the repository root::

    python tests/benchmarks/bench_store.py [--edges 1000000] [--mongo-edges 100000]

For each backend (an SQLite file; a database on a SecantusDB server started
here) it writes ``--edges`` random edges block by block through
``write_edges``, then streams them through ``stream_merged_edges`` into a
union-find, the way ``find_segments`` consumes them. Each phase runs in a
fresh subprocess, so its peak RSS (``getrusage``) is its own. SecantusDB
inserts about 5-9k documents a second, so MongoDB gets ``--mongo-edges``
(default 1e5) edges.

Not a pytest module (no ``test_`` prefix); it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from blockwise.geometry import IdRange  # noqa: E402
from blockwise.store import EdgeTable, open_store  # noqa: E402

NAN_FRACTION = 0.1  # edges never merged in their block (stored without merge score)


def block_edges(block: int, per_block: int, count: int) -> tuple[IdRange, EdgeTable]:
    """The edges block ``block`` owns: ~``count`` distinct (u, v), u in its ids.

    Block ``b`` owns ids ``b * 2 * per_block + [1, 2 * per_block]``; v reaches
    into the next block, as edges across a block face do.
    """
    rng = np.random.default_rng(block)
    ids = 2 * per_block
    id_range = IdRange(block * ids + 1, (block + 1) * ids)
    u = rng.integers(id_range.first, id_range.last + 1, size=count, dtype=np.uint64)
    v = u + rng.integers(1, ids, size=count, dtype=np.uint64)
    pairs = np.unique(np.stack([u, v], axis=1), axis=0)
    n = len(pairs)
    merge = rng.random(n, dtype=np.float32)
    merge[rng.random(n) < NAN_FRACTION] = np.nan
    return id_range, EdgeTable(pairs[:, 0], pairs[:, 1], rng.random(n, dtype=np.float32), merge)


def peak_rss_mib() -> float:
    """Peak resident memory of this process, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_write(uri: str, edges: int, per_block: int) -> dict[str, float | int]:
    """Write ``edges`` edges in blocks of ``per_block``; time only the store calls."""
    written, seconds, block = 0, 0.0, 0
    with open_store(uri) as store:
        while written < edges:
            id_range, table = block_edges(block, per_block, min(per_block, edges - written))
            start = time.perf_counter()
            store.write_edges(id_range, table)
            seconds += time.perf_counter() - start
            written += len(table)
            block += 1
        stored = store.count_edges()
    return {
        "edges": stored,
        # v reaches into the block after the last one written
        "max_id": (block + 1) * 2 * per_block,
        "seconds": seconds,
        "edges_per_s": stored / seconds,
        "peak_rss_mib": peak_rss_mib(),
    }


def make_union_find(n: int) -> tuple[str, Callable[[np.ndarray, np.ndarray], None]]:
    """blockwise's union-find kernel over 0..n-1, or a numpy one if it does not import."""
    try:
        from blockwise.kernels.union_find import UnionFind

        kernel = UnionFind(n)
        return "blockwise.kernels.union_find", kernel.union
    except Exception:  # a benchmark falls back; the kernel's own tests catch its failures
        parent = np.arange(n, dtype=np.int64)

        def find(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = int(parent[x])
            return x

        def union(a: np.ndarray, b: np.ndarray) -> None:
            for x, y in zip(a.tolist(), b.tolist(), strict=True):
                rx, ry = find(x), find(y)
                if rx != ry:
                    parent[max(rx, ry)] = min(rx, ry)

        return "numpy (pure-Python loop)", union


def run_read(uri: str, max_id: int, chunk_size: int) -> dict[str, float | str]:
    """Stream the merged edges in merge-score order into a union-find over ids 0..max_id."""
    kind, union = make_union_find(max_id + 1)
    streamed, stream_s, union_s = 0, 0.0, 0.0
    previous = -np.inf
    with open_store(uri) as store:
        start = time.perf_counter()
        for chunk in store.stream_merged_edges(chunk_size):
            got = time.perf_counter()
            stream_s += got - start
            if len(chunk) and chunk.merge_score[0] < previous:
                raise RuntimeError("merged edges are not in merge-score order")
            previous = float(chunk.merge_score[-1]) if len(chunk) else previous
            union(chunk.u.astype(np.int64), chunk.v.astype(np.int64))
            streamed += len(chunk)
            start = time.perf_counter()
            union_s += start - got
    total = stream_s + union_s
    return {
        "union_find": kind,
        "merged_edges": streamed,
        "stream_s": stream_s,
        "union_s": union_s,
        "edges_per_s": streamed / total,
        "stream_edges_per_s": streamed / stream_s,
        "peak_rss_mib": peak_rss_mib(),
    }


def run_case(args: list[str]) -> dict[str, float | str]:
    """Run one phase in a fresh interpreter; its result is the last stdout line (JSON)."""
    command = [sys.executable, str(Path(__file__).resolve()), *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    result: dict[str, float | str] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def bench_backend(name: str, uri: str, edges: int, args: argparse.Namespace) -> None:
    write = run_case(["--case", "write", "--uri", uri, "--edges", str(edges), *_shared(args)])
    read = run_case(
        ["--case", "read", "--uri", uri, "--max-id", str(write["max_id"]), *_shared(args)]
    )
    print(
        f"{name:8} {int(write['edges']):>10,} edges  "
        f"write {float(write['edges_per_s']):>9,.0f} edges/s ({float(write['seconds']):7.1f} s, "
        f"peak RSS {float(write['peak_rss_mib']):6.0f} MiB)  "
        f"stream+union {float(read['edges_per_s']):>9,.0f} edges/s "
        f"(stream alone {float(read['stream_edges_per_s']):>9,.0f}/s; "
        f"{int(read['merged_edges']):,} merged edges in "
        f"{float(read['stream_s']) + float(read['union_s']):6.1f} s, "
        f"peak RSS {float(read['peak_rss_mib']):6.0f} MiB)",
        flush=True,
    )
    print(f"         union-find: {read['union_find']}", flush=True)


def _shared(args: argparse.Namespace) -> list[str]:
    return ["--block-edges", str(args.block_edges), "--chunk-size", str(args.chunk_size)]


def server_peak_rss_mib(pid: int) -> float | None:
    """VmHWM (peak resident memory) of a running process, MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edges", type=int, default=1_000_000, help="edges for SQLite")
    parser.add_argument(
        "--mongo-edges", type=int, default=None, help="edges for MongoDB (default min(1e5, N))"
    )
    parser.add_argument("--block-edges", type=int, default=10_000, help="edges per block")
    parser.add_argument("--chunk-size", type=int, default=100_000, help="edges per stream chunk")
    parser.add_argument("--backends", default="sqlite,mongodb", help="comma-separated")
    parser.add_argument("--case", choices=["write", "read"], help=argparse.SUPPRESS)
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    parser.add_argument("--max-id", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.case == "write":
        print(json.dumps(run_write(args.uri, args.edges, args.block_edges)))
        return
    if args.case == "read":
        print(json.dumps(run_read(args.uri, args.max_id, args.chunk_size)))
        return

    backends = args.backends.split(",")
    print(
        f"blocks of {args.block_edges:,} edges, stream chunks of {args.chunk_size:,}, "
        f"{NAN_FRACTION:.0%} edges without merge score; CPU: {os.cpu_count()} cores",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench_store_") as tmp:
        if "sqlite" in backends:
            bench_backend("sqlite", f"sqlite:///{tmp}/graph.sqlite", args.edges, args)
        if "mongodb" in backends:
            from tests.store.conftest import SecantusServer, find_server_executable, free_port

            executable = find_server_executable()
            if executable is None:
                print("mongodb: secantusd-py is not installed; skipped")
                return
            server = SecantusServer(executable, Path(tmp) / "secantus", free_port())
            server.start()
            try:
                edges = args.mongo_edges or min(args.edges, 100_000)
                bench_backend("mongodb", server.uri("bench"), edges, args)
                process = server._process
                peak = server_peak_rss_mib(process.pid) if process is not None else None
                if peak is not None:
                    print(f"         SecantusDB server peak RSS {peak:,.0f} MiB", flush=True)
            finally:
                server.stop()


if __name__ == "__main__":
    main()
