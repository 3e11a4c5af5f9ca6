"""Hierarchical mean-affinity agglomeration on synthetic region graphs of 1e6 .. 1e8 edges.

The graph is laid out like a real RAG: one fragment per site of an L**3
lattice, edges to the 3 face neighbours (plus a few diagonal and long-range
ones), fragments grouped into "neurons" (random boxes of varied size, a few of
them spanning much of the volume) with high affinities inside and low ones
across; N per edge 1..30, S quantised. Each fragment's home block is the
block of B**3 lattice sites holding it.

Reported, side by side in one run:

* hierarchical: wall time of ``run_hierarchy`` (all tasks, one process), the
  number of tasks, per level the residual handed upwards (clusters, of which
  open, and edges) and the largest task; then the largest task re-run alone
  in a subprocess for its peak RSS (and its inputs' RSS) next to
  ``estimate_task_memory``. By default with future bounds
  (:func:`blockwise.hierarchical.fragment_futures`); ``--plain`` gives the
  plain ABISS freezing rule (same records, larger residuals). ``--streamed E``
  never holds the whole graph: subtrees of at most E edges are generated and
  run in memory, larger nodes run from their children's residuals and their
  own seam edges (the way 1e8 edges fit);
* global: the same compiled kernel as one root task over the whole graph,
  in a subprocess (time, peak RSS), and whether its records equal the
  hierarchy's;
* waterz-style: ``blockwise.kernels.region_merging.merge_graph`` (float32
  mean statistics, waterz's queue) on the same graph, in a subprocess (time,
  peak RSS), for scale only: its scores are not exact.

    python tests/benchmarks/bench_hierarchical.py                 # 1e6 and 1e7
    python tests/benchmarks/bench_hierarchical.py --edges 1e6 --plain
    python tests/benchmarks/bench_hierarchical.py --edges 1e7 --streamed 2e6   # checks streaming
    python tests/benchmarks/bench_hierarchical.py --edges --with-1e8 --streamed 8e6 \
        --no-global --no-merge-graph                              # 1e8, ~3 GB
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
from typing import ClassVar

import numpy as np

from blockwise.hierarchical import (
    Residual,
    TaskStats,
    build_fragment_graph,
    estimate_task_memory,
    fragment_futures,
    leaf_residual,
    plan_hierarchy,
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


_OFFSETS = np.array([(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1)], dtype=np.int64)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 of uint64 values (wrapping arithmetic): a counter-free random function."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class SyntheticVolume:
    """A RAG-like graph on an L**3 lattice whose any part can be generated alone.

    One fragment per lattice site (id = flat index + 1); edges to the 3 face
    neighbours, a diagonal one at ~30 % of the sites and ~1 long-range edge
    per 1000 face edges (3.3 edges per site in all); "neurons" are random boxes
    of varied size (Pareto, from 3 sites to the whole side, later boxes paint
    over earlier ones; unpainted sites form one more object) with affinities
    150..255 inside and 0..129 across (profile "boxes"; "sharp": 220..255 and
    0..49), quantised to multiples of 5; N per edge
    1..30 and ``S = mean N``. Every edge's statistics are a hash of its key, so
    the edges of a region or of one octree node's seams come out the same as
    in the whole graph.
    """

    #: Affinity profiles: (lowest inside, inside levels, across levels): "boxes"
    #: 150..255 inside and 0..129 across (39 % of the contacts between objects
    #: score below 0.7), "sharp" 220..255 inside and 0..49 across (none does).
    PROFILES: ClassVar[dict[str, tuple[int, int, int]]] = {
        "boxes": (150, 106, 130),
        "sharp": (220, 36, 50),
    }

    def __init__(self, num_edges: int, block: int, seed: int, profile: str = "boxes") -> None:
        rng = np.random.default_rng(seed)
        self.profile = self.PROFILES[profile]
        self.side = max(4, round((num_edges / 3.3) ** (1 / 3)))
        self.block = block
        self.count = self.side**3
        self.salt = np.uint64(int(rng.integers(0, 2**63)))
        shape = (self.side,) * 3
        label = np.zeros(shape, dtype=np.int32)
        n_boxes = max(8, self.count // 300)
        sizes = np.minimum(self.side, (3 * (rng.pareto(1.2, (n_boxes, 3)) + 1)).astype(np.int64))
        corners = (rng.random((n_boxes, 3)) * (self.side - sizes + 1)).astype(np.int64)
        for k in range(n_boxes):
            z, y, x = corners[k]
            dz, dy, dx = sizes[k]
            label[z : z + dz, y : y + dy, x : x + dx] = k + 1
        self.label = label.ravel()
        n_long = max(1, 3 * self.count // 1000)
        pairs = rng.integers(0, self.count, (n_long, 2))
        pairs = pairs[pairs[:, 0] != pairs[:, 1]]
        self.long_u, self.long_v = pairs[:, 0].copy(), pairs[:, 1].copy()
        self.grid = np.array([-(-self.side // block)] * 3, dtype=np.int64)
        self.octree = Octree(tuple(int(g) for g in self.grid))
        self.long_nodes = self.octree.lca_node(self.home(self.long_u), self.home(self.long_v))

    def home(self, sites: np.ndarray) -> np.ndarray:
        """The leaf block index of lattice sites (flat indices)."""
        coords = np.stack(np.unravel_index(sites, (self.side,) * 3), axis=1)
        return self.octree.block_index(coords // self.block)

    def owned_edges(
        self, lo: np.ndarray, hi: np.ndarray, axis_slab: int = -1
    ) -> tuple[np.ndarray, np.ndarray]:
        """Face and diagonal edges (u, v) whose first end (the owner) lies in the box [lo, hi)."""
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, self.side)
        if np.any(hi <= lo):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        grids = np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi, strict=True)), indexing="ij")
        owners = np.stack([g.ravel() for g in grids], axis=1)
        del grids
        us, vs = [], []
        flat = np.ravel_multi_index(tuple(owners.T), (self.side,) * 3)
        for k, offset in enumerate(_OFFSETS):
            if axis_slab >= 0 and offset[axis_slab] == 0:
                continue  # a seam slab only needs the edges crossing its plane
            other = owners + offset
            keep = np.all(other < self.side, axis=1)
            if k == 3:  # diagonals at ~30 % of the sites
                keep &= _mix(flat.astype(np.uint64) ^ self.salt) % np.uint64(10) < np.uint64(3)
            us.append(flat[keep])
            vs.append(np.ravel_multi_index(tuple(other[keep].T), (self.side,) * 3))
        return np.concatenate(us), np.concatenate(vs)

    def statistics(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(S, N)`` of edges (u, v), from a hash of the pair."""
        key = np.minimum(u, v).astype(np.uint64) * np.uint64(self.count) + np.maximum(u, v).astype(
            np.uint64
        )
        h = _mix(key ^ self.salt)
        n = np.uint64(1) + h % np.uint64(30)
        h2 = _mix(h)
        same = self.label[u] == self.label[v]
        low, inside, across = (np.uint64(x) for x in self.profile)
        mean = np.where(same, low + h2 % inside, h2 % across)
        mean = (mean // np.uint64(5)) * np.uint64(5)  # quantised: many equal means
        return (mean * n).astype(np.uint64), n.astype(np.uint64)

    def region_edges(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every edge (u, v) with an end in the box [lo, hi) of sites (long-range ones too)."""
        u, v = self.owned_edges(lo - 1, hi)
        inside_u, inside_v = self.inside(u, lo, hi), self.inside(v, lo, hi)
        keep = inside_u | inside_v
        long_keep = self.inside(self.long_u, lo, hi) | self.inside(self.long_v, lo, hi)
        return (
            np.concatenate([u[keep], self.long_u[long_keep]]),
            np.concatenate([v[keep], self.long_v[long_keep]]),
        )

    def inside(self, sites: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        coords = np.stack(np.unravel_index(sites, (self.side,) * 3), axis=1)
        return np.all((coords >= lo) & (coords < hi), axis=1)

    def node_box(self, node: int) -> tuple[np.ndarray, np.ndarray]:
        """The box of sites [lo, hi) an octree node covers."""
        level = int(self.octree.node_level([node])[0])
        coords = self.octree.node_coords([node])[0]
        span = (1 << level) * self.block
        return coords * span, np.minimum((coords + 1) * span, self.side)

    def seam_edges(self, node: int) -> ClusterEdges:
        """The fragment edges whose LCA is ``node``, as build_fragment_graph gives them."""
        level = int(self.octree.node_level([node])[0])
        lo, hi = self.node_box(node)
        half = (1 << (level - 1)) * self.block
        us, vs = [], []
        for axis in range(3):
            plane = lo[axis] + half
            if plane >= hi[axis]:
                continue
            slab_lo, slab_hi = lo.copy(), hi.copy()
            slab_lo[axis], slab_hi[axis] = plane - 1, plane
            u, v = self.owned_edges(slab_lo, slab_hi, axis_slab=axis)
            us.append(u)
            vs.append(v)
        u = np.concatenate(us) if us else np.zeros(0, np.int64)
        v = np.concatenate(vs) if vs else np.zeros(0, np.int64)
        # an owner on two planes lists its diagonal twice: keep one
        key = np.minimum(u, v) * self.count + np.maximum(u, v)
        _, first = np.unique(key, return_index=True)
        u, v = u[first], v[first]
        keep = self.octree.lca_node(self.home(u), self.home(v)) == node
        u, v = u[keep], v[keep]
        at_node = self.long_nodes == node
        u = np.concatenate([u, self.long_u[at_node]])
        v = np.concatenate([v, self.long_v[at_node]])
        s, n = self.statistics(u, v)
        low = (np.minimum(u, v) + 1).astype(np.uint64)
        high = (np.maximum(u, v) + 1).astype(np.uint64)
        # partial statistics of one pair (a long-range edge equal to a face edge) are summed
        order = np.lexsort((high, low))
        low, high, s, n = low[order], high[order], s[order], n[order]
        first = np.ones(low.size, dtype=bool)
        first[1:] = (low[1:] != low[:-1]) | (high[1:] != high[:-1])
        starts = np.flatnonzero(first)
        low, high = low[starts], high[starts]
        if low.size:
            s = np.add.reduceat(s, starts).astype(np.uint64)
            n = np.add.reduceat(n, starts).astype(np.uint64)
        return ClusterEdges(low, high.copy(), s, n, low.copy(), high.copy())

    def whole(self) -> dict[str, np.ndarray]:
        """The whole graph as arrays (fragment ids, home coordinates, u, v, s, n)."""
        zero = np.zeros(3, dtype=np.int64)
        full = np.full(3, self.side, dtype=np.int64)
        u, v = self.region_edges(zero, full)
        s, n = self.statistics(u, v)
        sites = np.arange(self.count, dtype=np.int64)
        coords = np.stack(np.unravel_index(sites, (self.side,) * 3), axis=1)
        return {
            "ids": (sites + 1).astype(np.uint64),
            "home_coords": (coords // self.block).astype(np.int64),
            "grid": self.grid,
            "u": (u + 1).astype(np.uint64),
            "v": (v + 1).astype(np.uint64),
            "s": s,
            "n": n,
        }


def synthetic_graph(
    num_edges: int, block: int, seed: int, profile: str = "boxes"
) -> dict[str, np.ndarray]:
    """A RAG-like graph of about ``num_edges`` edges (:class:`SyntheticVolume`), whole."""
    return SyntheticVolume(num_edges, block, seed, profile).whole()


class _Largest:
    """Keeps the inputs of the largest task seen so far in a file (for the RSS-alone run)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.n_edges = -1
        self.n_clusters = 0

    def kernel(
        self,
        ids: np.ndarray,
        levels: np.ndarray,
        level: int,
        edges: list[ClusterEdges],
        bound: Fraction,
        futures: np.ndarray | None,
    ) -> TaskOutput:
        count = sum(len(part) for part in edges)
        if count > self.n_edges:
            self.n_edges, self.n_clusters = count, int(ids.size)
            # stored as one part: the run alone reads one array per field
            whole = ClusterEdges.concatenate(edges)
            np.savez(
                self.path,
                ids=ids,
                levels=levels,
                futures=futures if futures is not None else np.zeros((ids.size, 0), np.uint32),
                level=np.array([level]),
                **whole.arrays(),
            )
            del whole
        return merge_task(ids, levels, level, edges, bound, futures)


def run_streamed(
    volume: SyntheticVolume, largest_path: Path, max_region_edges: int, keep_records: bool = True
) -> dict[str, object]:
    """Run the hierarchy without ever holding the whole graph (for 1e8 edges).

    A node whose region has at most ``max_region_edges`` edges gets its
    region's graph (its edges and the edges leaving it, for the levels and
    future bounds of its fragments) and runs its whole subtree in memory;
    a larger node runs its children that way (recursively), then its own
    task on their residuals and its seam edges, generated alone.
    ``keep_records=False`` only counts the records (1e8 edges make ~3e7 of
    them, 1.4 GB).
    """
    octree = volume.octree
    bound = merge_bound(max(THRESHOLDS))
    largest = _Largest(largest_path)
    stats: list[TaskStats] = []
    records: list[ClusterEdges] = []
    seam_total = [0]
    n_records = [0]

    def task(node: int, level: int, children: list[Residual], seam: ClusterEdges) -> Residual:
        start = time.perf_counter()
        n_clusters = sum(child.ids.size for child in children)
        n_edges = sum(len(child.edges) for child in children) + len(seam)
        seam_total[0] += len(seam)
        result = run_task(level, children, seam, bound, node=node, task_kernel=largest.kernel)
        n_records[0] += len(result.records)
        if keep_records:
            records.append(result.records)
        stats.append(
            TaskStats(
                node=node,
                level=level,
                n_clusters=n_clusters,
                n_edges=n_edges,
                n_records=len(result.records),
                n_residual_clusters=int(result.residual.ids.size),
                n_residual_edges=len(result.residual.edges),
                n_dropped=len(result.dropped),
                seconds=time.perf_counter() - start,
                n_residual_open=int(np.count_nonzero(result.residual.levels > level)),
            )
        )
        return result.residual

    def in_memory(node: int) -> Residual:
        lo, hi = volume.node_box(node)
        u, v = volume.region_edges(lo, hi)
        grids = np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi, strict=True)), indexing="ij")
        sites = np.ravel_multi_index(tuple(g.ravel() for g in grids), (volume.side,) * 3)
        del grids
        outside = np.setdiff1d(np.concatenate([u, v]), sites)
        fragments = np.concatenate([sites, outside])
        s, n = volume.statistics(u, v)
        graph = build_fragment_graph(
            (fragments + 1).astype(np.uint64),
            volume.home(fragments),
            (u + 1).astype(np.uint64),
            (v + 1).astype(np.uint64),
            s,
            n,
            octree,
        )
        del u, v, s, n, sites, outside, fragments
        plan = plan_hierarchy(graph, octree)
        futures = fragment_futures(plan, bound)
        pending: dict[int, Residual] = {}

        def subtree(sub: int) -> None:
            level = int(octree.node_level([sub])[0])
            if level == 0:
                children = [leaf_residual(*plan.leaf_fragments(sub), futures[plan.leaf_index(sub)])]
            else:
                for child in octree.children(sub):
                    subtree(int(child))
                children = [pending.pop(int(child)) for child in octree.children(sub)]
            pending[sub] = task(sub, level, children, plan.seam_edges(sub))

        subtree(node)
        return pending.pop(node)

    def run(node: int) -> Residual:
        level = int(octree.node_level([node])[0])
        lo, hi = volume.node_box(node)
        if level == 0 or 3.3 * float(np.prod(hi - lo)) <= max_region_edges:
            return in_memory(node)
        children = [run(int(child)) for child in octree.children(node)]
        return task(node, level, children, volume.seam_edges(node))

    start = time.perf_counter()
    root = run(octree.root)
    seconds = time.perf_counter() - start
    if root.ids.size or len(root.edges):
        raise RuntimeError(f"the root left {root.ids.size} clusters")
    if keep_records:
        all_records = ClusterEdges.concatenate(records)
        order = np.lexsort((all_records.b, all_records.a))
        np.save(
            largest_path.with_name("records.npy"),
            np.stack([getattr(all_records, k)[order] for k in ("a", "b", "s", "n")]),
        )
    return {
        "fragments": volume.count,
        "edges": seam_total[0],
        "grid": list(octree.grid_shape),
        "levels": octree.n_levels,
        "use_futures": True,
        "streamed_max_region_edges": max_region_edges,
        "tasks": len(stats),
        "hierarchy_seconds": round(seconds, 2),
        "records": n_records[0],
        "per_level": per_level(stats, octree.n_levels),
        "largest_task_edges": largest.n_edges,
        "largest_task_clusters": largest.n_clusters,
        "peak_rss_mib_in_process": round(peak_mib()),
    }


def per_level(tasks: list[TaskStats], n_levels: int) -> list[dict[str, object]]:
    """Per octree level: tasks, their input and the residual they hand up."""
    levels: list[dict[str, object]] = []
    for level in range(n_levels):
        here = [t for t in tasks if t.level == level]
        levels.append(
            {
                "level": level,
                "tasks": len(here),
                "input_edges": sum(t.n_edges for t in here),
                "max_task_edges": max(t.n_edges for t in here),
                "max_task_clusters": max(t.n_clusters for t in here),
                "residual_clusters": sum(t.n_residual_clusters for t in here),
                "residual_open": sum(t.n_residual_open for t in here),
                "residual_edges": sum(t.n_residual_edges for t in here),
                "max_task_seconds": round(max(t.seconds for t in here), 3),
                "seconds": round(sum(t.seconds for t in here), 2),
            }
        )
    return levels


def run_hierarchical(
    graph_arrays: dict[str, np.ndarray], largest_path: Path, use_futures: bool = True
) -> dict[str, object]:
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
    largest = _Largest(largest_path)
    start = time.perf_counter()
    result = run_hierarchy(
        graph, octree, THRESHOLDS, task_kernel=largest.kernel, use_futures=use_futures
    )
    seconds = time.perf_counter() - start
    order = np.lexsort((result.records.b, result.records.a))
    np.save(
        largest_path.with_name("records.npy"),
        np.stack([getattr(result.records, k)[order] for k in ("a", "b", "s", "n")]),
    )
    return {
        "fragments": int(graph.fragment_ids.size),
        "edges": len(graph.edges),
        "grid": list(octree.grid_shape),
        "levels": octree.n_levels,
        "use_futures": use_futures,
        "tasks": len(result.tasks),
        "build_seconds": round(built, 2),
        "hierarchy_seconds": round(seconds, 2),
        "records": len(result.records),
        "per_level": per_level(result.tasks, octree.n_levels),
        "largest_task_edges": largest.n_edges,
        "largest_task_clusters": largest.n_clusters,
        "peak_rss_mib_in_process": round(peak_mib()),
    }


def worker(kind: str, path: Path) -> None:
    """Subprocess body: load inputs, run one kind of merge, print JSON with time and RSS."""
    data = np.load(path)
    if kind == "largest_task":
        ids, levels, level = data["ids"], data["levels"], int(data["level"][0])
        futures = data["futures"]
        edges = ClusterEdges(*(data[name] for name in ("a", "b", "s", "n", "tau_hi", "tau_lo")))
        baseline = rss_mib()
        start = time.perf_counter()
        # run_task as a scheduler would: one child part holding the whole input
        from blockwise.hierarchical import Residual

        result = run_task(
            level,
            [Residual(ids, levels, edges, futures=futures if futures.shape[1] else None)],
            ClusterEdges.empty(),
            merge_bound(max(THRESHOLDS)),
        )
        seconds = time.perf_counter() - start
        peak = peak_mib()
        out = {
            "seconds": round(seconds, 2),
            "edges": len(edges),
            "inputs_rss_mib": round(baseline),
            "peak_rss_mib": round(peak),
            "peak_bytes_per_edge_above_inputs": round(
                (peak - baseline) * 2**20 / max(len(edges), 1)
            ),
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


def bench(
    num_edges: int,
    block: int,
    seed: int,
    with_merge_graph: bool,
    use_futures: bool = True,
    with_global: bool = True,
    streamed: int | None = None,
    profile: str = "boxes",
) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as folder:
        graph_path = Path(folder) / "graph.npz"
        largest_path = Path(folder) / "largest.npz"
        volume = SyntheticVolume(num_edges, block, seed, profile)
        if streamed is not None:
            report = run_streamed(volume, largest_path, streamed, keep_records=with_global)
        if with_global or with_merge_graph or streamed is None:
            arrays = volume.whole()
            if with_global or with_merge_graph:
                np.savez(graph_path, **arrays)
            if streamed is None:
                report = run_hierarchical(arrays, largest_path, use_futures)
            del arrays
        del volume
        report["largest_task_alone"] = in_subprocess("largest_task", largest_path)
        if with_global:
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
    parser.add_argument("--no-global", action="store_true", help="skip the one-task global run")
    parser.add_argument(
        "--plain", action="store_true", help="no future bounds: the plain ABISS freezing rule"
    )
    parser.add_argument(
        "--profile",
        choices=sorted(SyntheticVolume.PROFILES),
        default="boxes",
        help="affinities inside and across objects (see SyntheticVolume.PROFILES)",
    )
    parser.add_argument(
        "--streamed",
        type=float,
        help="never hold the whole graph: subtrees of at most this many edges run in memory, "
        "larger nodes from their children's residuals and their own seams (used for 1e8)",
    )
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
        report = bench(
            size,
            args.block,
            args.seed,
            not args.no_merge_graph and size <= 10**7,
            use_futures=not args.plain,
            with_global=not args.no_global,
            streamed=None if args.streamed is None else int(args.streamed),
            profile=args.profile,
        )
        report["profile"] = args.profile
        report["requested_edges"] = size
        logger.info("%s", json.dumps(report, indent=1))
        reports.append(report)
    if args.json:
        args.json.write_text(json.dumps(reports, indent=1))


if __name__ == "__main__":
    main()
