"""Hierarchical mean-affinity agglomeration on synthetic region graphs of 1e6 .. 1e8 edges.

The graph is laid out like a real RAG: one fragment per site of an L**3
lattice, edges to the 3 face neighbours (plus a few diagonal and long-range
ones), fragments grouped into "neurons" (random boxes of varied size, a few of
them spanning much of the volume) with high affinities inside and low ones
across; N per edge 1..30, S quantised. Each fragment's home block is the
block of B**3 lattice sites holding it.

Reported, side by side in one run:

* hierarchical: wall time of ``run_hierarchy`` (all tasks, one process), the
  number of tasks, per level the residual handed upwards (clusters, edges) and
  the largest task; then the largest task re-run alone in a subprocess for its
  peak RSS (and its inputs' RSS) next to ``estimate_task_memory``;
* global: the same compiled kernel as one root task over the whole graph,
  in a subprocess (time, peak RSS), and whether its records equal the
  hierarchy's;
* waterz-style: ``blockwise.kernels.region_merging.merge_graph`` (float32
  mean statistics, waterz's queue) on the same graph, in a subprocess (time,
  peak RSS), for scale only: its scores are not exact.

    python tests/benchmarks/bench_hierarchical.py                 # 1e6 and 1e7
    python tests/benchmarks/bench_hierarchical.py --edges 1e6
    python tests/benchmarks/bench_hierarchical.py --with-1e8      # adds 1e8 (~15+ GB)
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from blockwise.hierarchical import (
    build_fragment_graph,
    estimate_task_memory,
    run_hierarchy,
    run_task,
)
from blockwise.kernels.mean_merge import ClusterEdges, TaskOutput, merge_bound, merge_task
from blockwise.octree import Octree

logger = logging.getLogger("bench_hierarchical")

THRESHOLDS = [0.3, 0.5, 0.7]


def rss_mib() -> float:
    """Current resident set size of this process, MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_mib() -> float:
    """Peak resident set size of this process so far, MiB.

    VmHWM, not ``ru_maxrss``: on Linux a child's ``ru_maxrss`` starts at its
    parent's peak at fork, which would hide a subprocess's own smaller peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_graph(num_edges: int, block: int, seed: int) -> dict[str, np.ndarray]:
    """A RAG-like graph of about ``num_edges`` edges on an L**3 lattice (see module doc)."""
    rng = np.random.default_rng(seed)
    side = max(4, round((num_edges / 3.3) ** (1 / 3)))
    shape = (side, side, side)
    count = side**3
    # neurons: a label per site from random boxes painted in order (later wins);
    # box sizes from 3 to the whole side, so some objects span most blocks
    label = np.zeros(shape, dtype=np.int64)
    n_boxes = max(8, count // 300)
    sizes = np.minimum(side, (3 * (rng.pareto(1.2, (n_boxes, 3)) + 1)).astype(np.int64))
    corners = (rng.random((n_boxes, 3)) * (side - sizes + 1)).astype(np.int64)
    for k in range(n_boxes):
        z, y, x = corners[k]
        dz, dy, dx = sizes[k]
        label[z : z + dz, y : y + dy, x : x + dx] = k + 1
    sites = np.arange(count, dtype=np.int64).reshape(shape)
    pairs = [
        (sites[1:].ravel(), sites[:-1].ravel()),
        (sites[:, 1:].ravel(), sites[:, :-1].ravel()),
        (sites[:, :, 1:].ravel(), sites[:, :, :-1].ravel()),
    ]
    u = np.concatenate([p[0] for p in pairs])
    v = np.concatenate([p[1] for p in pairs])
    # a few diagonal and long-range contacts
    extra = max(1, len(u) // 10)
    diagonal = rng.integers(0, count - side * side - side - 1, extra)
    u = np.concatenate([u, diagonal, rng.integers(0, count, extra // 100 + 1)])
    v = np.concatenate(
        [v, diagonal + side * side + side + 1, rng.integers(0, count, extra // 100 + 1)]
    )
    keep = u != v
    u, v = u[keep], v[keep]
    flat_label = label.ravel()
    same = flat_label[u] == flat_label[v]
    n = rng.integers(1, 31, u.size).astype(np.uint64)
    inside = rng.integers(150, 256, u.size)
    across = rng.integers(0, 130, u.size)
    mean = np.where(same, inside, across).astype(np.uint64)
    mean = (mean // 5) * 5  # quantised: many equal means
    s = mean * n
    coords = np.stack(np.unravel_index(np.arange(count), shape), axis=1)
    home_coords = coords // block
    return {
        "ids": np.arange(1, count + 1, dtype=np.uint64),
        "home_coords": home_coords.astype(np.int64),
        "grid": np.array([-(-side // block)] * 3, dtype=np.int64),
        "u": (u + 1).astype(np.uint64),
        "v": (v + 1).astype(np.uint64),
        "s": s,
        "n": n,
    }


def run_hierarchical(graph_arrays: dict[str, np.ndarray], largest_path: Path) -> dict[str, object]:
    """Run the hierarchy in this process; save the inputs of its largest task."""
    octree = Octree(tuple(int(g) for g in graph_arrays["grid"]))
    start = time.perf_counter()
    graph = build_fragment_graph(
        graph_arrays["ids"],
        octree.block_index(graph_arrays["home_coords"]),
        graph_arrays["u"],
        graph_arrays["v"],
        graph_arrays["s"],
        graph_arrays["n"],
        octree,
    )
    built = time.perf_counter() - start
    largest: dict[str, object] = {"n_edges": -1}

    def recording_kernel(
        ids: np.ndarray, levels: np.ndarray, level: int, edges: ClusterEdges, bound: Fraction
    ) -> TaskOutput:
        if len(edges) > int(largest["n_edges"]):  # type: ignore[arg-type]
            largest.update(ids=ids, levels=levels, level=level, edges=edges, n_edges=len(edges))
        return merge_task(ids, levels, level, edges, bound)

    start = time.perf_counter()
    result = run_hierarchy(graph, octree, THRESHOLDS, task_kernel=recording_kernel)
    seconds = time.perf_counter() - start
    edges = largest["edges"]
    assert isinstance(edges, ClusterEdges)
    np.savez(
        largest_path,
        ids=largest["ids"],
        levels=largest["levels"],
        level=np.array([largest["level"]]),
        **edges.arrays(),
    )
    levels = []
    for level in range(octree.n_levels):
        tasks = [t for t in result.tasks if t.level == level]
        levels.append(
            {
                "level": level,
                "tasks": len(tasks),
                "input_edges": sum(t.n_edges for t in tasks),
                "max_task_edges": max(t.n_edges for t in tasks),
                "max_task_clusters": max(t.n_clusters for t in tasks),
                "residual_clusters": sum(t.n_residual_clusters for t in tasks),
                "residual_edges": sum(t.n_residual_edges for t in tasks),
                "max_task_seconds": round(max(t.seconds for t in tasks), 3),
                "seconds": round(sum(t.seconds for t in tasks), 2),
            }
        )
    order = np.lexsort((result.records.b, result.records.a))
    np.save(
        largest_path.with_name("records.npy"),
        np.stack(
            [
                result.records.a[order],
                result.records.b[order],
                result.records.s[order],
                result.records.n[order],
            ]
        ),
    )
    return {
        "fragments": int(graph.fragment_ids.size),
        "edges": len(graph.edges),
        "grid": list(octree.grid_shape),
        "levels": octree.n_levels,
        "tasks": len(result.tasks),
        "build_seconds": round(built, 2),
        "hierarchy_seconds": round(seconds, 2),
        "records": len(result.records),
        "per_level": levels,
        "largest_task_edges": int(largest["n_edges"]),  # type: ignore[call-overload]
        "largest_task_clusters": int(np.asarray(largest["ids"]).size),
        "peak_rss_mib_in_process": round(peak_mib()),
    }


def worker(kind: str, path: Path) -> None:
    """Subprocess body: load inputs, run one kind of merge, print JSON with time and RSS."""
    data = np.load(path)
    if kind == "largest_task":
        ids, levels, level = data["ids"], data["levels"], int(data["level"][0])
        edges = ClusterEdges(*(data[name] for name in ("a", "b", "s", "n", "tau_hi", "tau_lo")))
        baseline = rss_mib()
        start = time.perf_counter()
        # run_task as a scheduler would: one child part holding the whole input
        from blockwise.hierarchical import Residual

        result = run_task(
            level,
            [Residual(ids, levels, edges)],
            ClusterEdges.empty(),
            merge_bound(max(THRESHOLDS)),
        )
        seconds = time.perf_counter() - start
        out = {
            "seconds": round(seconds, 2),
            "inputs_rss_mib": round(baseline),
            "peak_rss_mib": round(peak_mib()),
            "estimate_mib": round(estimate_task_memory(ids.size, len(edges)) / 2**20),
            "records": len(result.records),
        }
    elif kind == "global_kernel":
        ids = data["ids"]
        graph = build_fragment_graph(
            ids,
            np.zeros(ids.size, np.int64),
            data["u"],
            data["v"],
            data["s"],
            data["n"],
            Octree((1, 1, 1)),
        )
        del data
        baseline = rss_mib()
        start = time.perf_counter()
        output = merge_task(
            graph.fragment_ids,
            np.zeros(ids.size, np.uint8),
            0,
            graph.edges,
            merge_bound(max(THRESHOLDS)),
        )
        seconds = time.perf_counter() - start
        order = np.lexsort((output.records.b, output.records.a))
        expected = np.load(path.with_name("records.npy"))
        same = bool(
            np.array_equal(
                expected,
                np.stack(
                    [
                        output.records.a[order],
                        output.records.b[order],
                        output.records.s[order],
                        output.records.n[order],
                    ]
                ),
            )
        )
        out = {
            "seconds": round(seconds, 2),
            "inputs_rss_mib": round(baseline),
            "peak_rss_mib": round(peak_mib()),
            "records": len(output.records),
            "records_equal_hierarchy": same,
            "stale_pops": output.n_stale_pops,
        }
    elif kind == "merge_graph":
        from blockwise.kernels.region_merging import Scoring, merge_graph

        u, v = np.minimum(data["u"], data["v"]), np.maximum(data["u"], data["v"])
        key = u * np.uint64(2**32) + v
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        s = np.bincount(inverse, weights=data["s"].astype(np.float64))
        n = np.bincount(inverse, weights=data["n"].astype(np.float64))
        u, v = u[first], v[first]
        mean = (s / (255.0 * n)).astype("<f4")
        blobs = [
            b"\x10" + m.tobytes() + int(c).to_bytes(8, "little")
            for m, c in zip(mean, n, strict=True)
        ]
        del data, s
        baseline = rss_mib()
        start = time.perf_counter()
        graph = merge_graph(u, v, blobs, max(THRESHOLDS), Scoring("mean"))
        seconds = time.perf_counter() - start
        out = {
            "seconds": round(seconds, 2),
            "inputs_rss_mib": round(baseline),
            "peak_rss_mib": round(peak_mib()),
            "merges": graph.n_merges,
        }
    else:
        raise SystemExit(f"unknown worker kind {kind!r}")
    sys.stdout.write(json.dumps(out) + "\n")


def in_subprocess(kind: str, path: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, __file__, "--worker", kind, "--input", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:] or ["?"]}
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def bench(num_edges: int, block: int, seed: int, with_merge_graph: bool) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as folder:
        graph_path = Path(folder) / "graph.npz"
        arrays = synthetic_graph(num_edges, block, seed)
        np.savez(graph_path, **arrays)
        report = run_hierarchical(arrays, Path(folder) / "largest.npz")
        del arrays
        report["largest_task_alone"] = in_subprocess("largest_task", Path(folder) / "largest.npz")
        report["global_kernel"] = in_subprocess("global_kernel", graph_path)
        if with_merge_graph:
            report["merge_graph_float32"] = in_subprocess("merge_graph", graph_path)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--edges", type=float, nargs="*", default=[1e6, 1e7])
    parser.add_argument("--with-1e8", action="store_true", help="also run 1e8 edges")
    parser.add_argument("--block", type=int, default=16, help="block side in lattice sites")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-merge-graph", action="store_true", help="skip the waterz-style peer")
    parser.add_argument("--json", type=Path, help="also write the reports here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.input)
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sizes = [int(e) for e in args.edges] + ([10**8] if args.with_1e8 else [])
    reports = []
    for size in sizes:
        report = bench(size, args.block, args.seed, not args.no_merge_graph and size <= 10**7)
        report["requested_edges"] = size
        logger.info("%s", json.dumps(report, indent=1))
        reports.append(report)
    if args.json:
        args.json.write_text(json.dumps(reports, indent=1))


if __name__ == "__main__":
    main()
