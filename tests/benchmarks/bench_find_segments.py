"""How far the single-pass find_segments goes on one node: time and peak RSS.

Feeds ``segment_tables`` (the union-find pass of find_segments, the part whose
memory must stay O(fragments)) with N random edges in increasing merge score,
in chunks as a store stream would deliver them, over F fragments, for four
thresholds. The store itself is left out (see bench_store.py for its read
rates); this measures what the pass holds.

    python tests/benchmarks/bench_find_segments.py --edges 100000000 --fragments 20000000
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Iterator

import numpy as np

from blockwise.stages.find_segments import segment_tables
from blockwise.store import EdgeTable


def chunks(ids: np.ndarray, num_edges: int, chunk: int, seed: int) -> Iterator[EdgeTable]:
    """Random edges between the ids, merge scores increasing across chunks."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < num_edges:
        n = min(chunk, num_edges - done)
        a = ids[rng.integers(0, len(ids), n)]
        b = ids[rng.integers(0, len(ids), n)]
        u, v = np.minimum(a, b), np.maximum(a, b)
        low = done / num_edges
        scores = np.sort(rng.uniform(low, (done + n) / num_edges, n)).astype(np.float32)
        yield EdgeTable(u, v, np.zeros(n, np.float32), scores)
        done += n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--edges", type=int, default=10_000_000)
    parser.add_argument("--fragments", type=int, default=2_000_000)
    parser.add_argument("--chunk", type=int, default=1_000_000)
    args = parser.parse_args()
    # ids as blocks hand them out: sparse in uint64, sorted
    ids = np.sort(
        np.random.default_rng(0).choice(2**40, size=args.fragments, replace=False)
    ).astype(np.uint64) + np.uint64(1)
    start = time.perf_counter()
    tables = segment_tables(
        ids, chunks(ids, args.edges, args.chunk, 1), [0.2, 0.4, 0.6, 0.8], "bench"
    )
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{args.edges:.2e} edges, {args.fragments:.2e} fragments, 4 thresholds: "
        f"{seconds:.1f} s ({args.edges / seconds / 1e6:.2f} M edges/s), "
        f"peak RSS {peak_mib:.0f} MiB, "
        f"segments at 0.2/0.8: {tables[0].num_segments}/{tables[-1].num_segments}"
    )


if __name__ == "__main__":
    main()
