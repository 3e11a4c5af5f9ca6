"""Slow, obviously-correct references for the hierarchical mean-affinity agglomeration.

* :func:`greedy_merge`: one process merges the whole graph greedily. Each
  step scans every edge for the best one (exact comparison with Python ints:
  ``S1 * N2`` vs ``S2 * N1``, ties by the larger tie key), merges it and sums
  the statistics of the merged clusters' common edges. The merged cluster
  keeps the smaller id.
* :func:`reference_task`: one task of ../shared/AGGLOMERATION.md written out
  as its pseudocode (a scan instead of a heap), with the signature of
  :func:`blockwise.kernels.mean_merge.merge_task`, so the same orchestration
  can run on it.

Both take variants that are known to be wrong, for negative controls:
``tie_break="smaller_id"`` (on equal means prefer the edge between smaller
cluster ids, which change under merging) and ``arithmetic="float32"`` (each
edge keeps a float32 running mean, as waterz does, instead of integer sums).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import numpy as np

from blockwise.kernels.mean_merge import ClusterEdges, TaskOutput

TieBreak = Literal["tau", "smaller_id", "larger_id"]
Arithmetic = Literal["exact", "float32"]

#: A merge record: (a, b, s, n, tau_hi, tau_lo) with a < b; the merged cluster is a.
Record = tuple[int, int, int, int, int, int]


@dataclass
class _Edge:
    s: int
    n: int
    tau: tuple[int, int]
    mean32: np.float32


def _below(edge: _Edge, bound: Fraction) -> bool:
    """Whether 1 - s / (255 n) < bound, exactly (also for the float32 variant)."""
    return Fraction(255 * edge.n - edge.s, 255 * edge.n) < bound


def _better_fn(
    tie_break: TieBreak, arithmetic: Arithmetic
) -> Callable[[tuple[int, int], _Edge, tuple[int, int], _Edge], bool]:
    def better(key1: tuple[int, int], e1: _Edge, key2: tuple[int, int], e2: _Edge) -> bool:
        if arithmetic == "exact":
            left, right = e1.s * e2.n, e2.s * e1.n
            if left != right:
                return left > right
        elif e1.mean32 != e2.mean32:
            return bool(e1.mean32 > e2.mean32)
        if tie_break == "tau":
            return e1.tau > e2.tau
        if tie_break == "smaller_id":
            return key1 < key2
        return key1 > key2

    return better


def _combine(kept: _Edge, other: _Edge) -> None:
    total = kept.n + other.n
    kept.mean32 = np.float32(
        (
            np.float32(kept.mean32) * np.float32(kept.n)
            + np.float32(other.mean32) * np.float32(other.n)
        )
        / np.float32(total)
    )
    kept.s += other.s
    kept.n = total
    kept.tau = max(kept.tau, other.tau)


class _Graph:
    """Clusters with their adjacency; edges keyed by (smaller id, larger id)."""

    def __init__(self, ids: list[int]) -> None:
        self.edges: dict[tuple[int, int], _Edge] = {}
        self.neighbours: dict[int, set[int]] = {i: set() for i in ids}

    def add(self, a: int, b: int, s: int, n: int, tau: tuple[int, int]) -> None:
        key = (min(a, b), max(a, b))
        edge = _Edge(s, n, tau, np.float32(s / (255 * n)))
        if key in self.edges:
            _combine(self.edges[key], edge)
        else:
            self.edges[key] = edge
            self.neighbours[a].add(b)
            self.neighbours[b].add(a)

    def merge(self, a: int, b: int) -> list[tuple[int, int]]:
        """Merge cluster b into a (a < b); return the keys of edges whose statistics changed."""
        del self.edges[(a, b)]
        self.neighbours[a].discard(b)
        self.neighbours[b].discard(a)
        changed = []
        for x in sorted(self.neighbours.pop(b)):
            edge = self.edges.pop((min(b, x), max(b, x)))
            self.neighbours[x].discard(b)
            key = (min(a, x), max(a, x))
            if key in self.edges:
                _combine(self.edges[key], edge)
                changed.append(key)
            else:
                self.edges[key] = edge
                self.neighbours[a].add(x)
                self.neighbours[x].add(a)
        return changed


def greedy_merge(
    fragment_ids: list[int] | np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    s: np.ndarray,
    n: np.ndarray,
    bound: Fraction,
    *,
    tie_break: TieBreak = "tau",
    arithmetic: Arithmetic = "exact",
    premerged: Sequence[tuple[int, int]] = (),
) -> list[Record]:
    """Merge the whole graph greedily, best edge first, until no edge scores below ``bound``.

    Partial statistics of one pair are summed; the tie key of a fragment
    edge is ``(min(u, v), max(u, v))``, of a cluster edge the largest inside.
    The fragment pairs in ``premerged`` (halves of a cut basin) are merged
    first, in the order given, each recorded with height 0 (``s = 255 n``, n = 1).

    Returns:
        The merge records in the order done.
    """
    graph = _Graph([int(f) for f in fragment_ids])
    for x, y, sx, nx in zip(u.tolist(), v.tolist(), s.tolist(), n.tolist(), strict=True):
        graph.add(x, y, sx, nx, (min(x, y), max(x, y)))
    records: list[Record] = []
    cluster = {int(f): int(f) for f in fragment_ids}

    def find(x: int) -> int:
        while cluster[x] != x:
            x = cluster[x]
        return x

    for a, b in premerged:
        ra, rb = find(a), find(b)
        if ra != rb:
            low, high = min(ra, rb), max(ra, rb)
            graph.merge(low, high)
            cluster[high] = low
            records.append((low, high, 255, 1, 0, 0))
    better = _better_fn(tie_break, arithmetic)
    while True:
        best: tuple[int, int] | None = None
        for key, edge in graph.edges.items():
            if _below(edge, bound) and (best is None or better(key, edge, best, graph.edges[best])):
                best = key
        if best is None:
            return records
        edge = graph.edges[best]
        records.append((best[0], best[1], edge.s, edge.n, edge.tau[0], edge.tau[1]))
        graph.merge(*best)


def reference_task(
    ids: np.ndarray,
    levels: np.ndarray,
    level: int,
    edges: ClusterEdges | list[ClusterEdges],
    bound: Fraction,
    futures: np.ndarray | None = None,
    *,
    tie_break: TieBreak = "tau",
    arithmetic: Arithmetic = "exact",
    freezing: Literal["full", "no_contagion"] = "full",
) -> TaskOutput:
    """One task of AGGLOMERATION.md, the pseudocode written out with a scan for the best edge.

    With ``futures`` (C, K), an open cluster (level above the task's) is not
    frozen from the start: an edge taken from the queue merges its clusters if
    neither is blocked and its mean exceeds both clusters' future bounds at
    this level (a code ``c`` stands for the mean ``(c - 1) / 2**24``; 0: no
    future edge); otherwise both are blocked. Without them, open clusters are
    frozen from the start.

    ``freezing="no_contagion"`` is a broken variant for a negative control: it
    never freezes the partner of a frozen cluster.
    """
    if not isinstance(edges, ClusterEdges):
        edges = ClusterEdges.concatenate(list(edges))
    id_list = [int(i) for i in ids]
    graph = _Graph(id_list)
    level_of = dict(zip(id_list, (int(x) for x in levels), strict=True))
    width = 0 if futures is None else futures.shape[1]
    future_rows: dict[int, list[int]] = {
        i: ([int(x) for x in futures[k]] if futures is not None else [])
        for k, i in enumerate(id_list)
    }

    def future_now(cluster: int) -> Fraction | None:
        """The bound on the mean of the cluster's edges still to come (None: no bound)."""
        if futures is None:
            return Fraction(-1) if level_of[cluster] <= level else None
        code = future_rows[cluster][level] if level < width else 0
        return Fraction(-1) if code == 0 else Fraction(code - 1, 2**24)

    def can_merge(cluster: int, edge: _Edge) -> bool:
        limit = future_now(cluster)
        return limit is not None and Fraction(edge.s, edge.n) > limit

    frozen: set[int] = set()
    for a, b, s, n, th, tl in zip(*(x.tolist() for x in edges.arrays().values()), strict=True):
        graph.add(a, b, s, n, (th, tl))
    better = _better_fn(tie_break, arithmetic)
    # the heap: edges below the bound not yet taken (an edge whose statistics
    # change goes back in)
    candidates = {key for key, edge in graph.edges.items() if _below(edge, bound)}
    records: list[Record] = []
    while candidates:
        best = None
        for key in candidates:
            if best is None or better(key, graph.edges[key], best, graph.edges[best]):
                best = key
        assert best is not None
        candidates.discard(best)
        a, b = best
        edge = graph.edges[best]
        if a in frozen or b in frozen or not (can_merge(a, edge) and can_merge(b, edge)):
            if freezing == "full":
                frozen.update(best)
            else:  # broken: only the clusters that cannot merge themselves
                frozen.update(k for k in best if not can_merge(k, edge))
            continue
        records.append((a, b, edge.s, edge.n, edge.tau[0], edge.tau[1]))
        was_candidate = {
            x: (min(b, x), max(b, x)) in candidates for x in graph.neighbours[b] if x != a
        }
        candidates -= {(min(b, x), max(b, x)) for x in was_candidate}
        changed = set(graph.merge(a, b))
        level_of[a] = max(level_of[a], level_of.pop(b))
        merged_future = future_rows.pop(b)
        future_rows[a] = [max(x, y) for x, y in zip(future_rows[a], merged_future, strict=True)]
        for x, candidate in was_candidate.items():
            key = (min(a, x), max(a, x))
            # a summed edge goes back in if below the bound; a moved one keeps its place
            if (key in changed and _below(graph.edges[key], bound)) or (
                key not in changed and candidate
            ):
                candidates.add(key)
            elif key in changed:
                candidates.discard(key)
    kept = {i for i in graph.neighbours if i in frozen or level_of[i] > level}
    residual_ids = sorted(kept)
    residual = sorted(k for k in graph.edges if k[0] in kept and k[1] in kept)
    dropped = sorted(k for k in graph.edges if not (k[0] in kept and k[1] in kept))

    def as_edges(rows: list[Record]) -> ClusterEdges:
        columns = list(zip(*rows, strict=True)) if rows else [()] * 6
        return ClusterEdges(*(np.array(c, dtype=np.uint64) for c in columns))

    def rows_of(keys: list[tuple[int, int]]) -> list[Record]:
        return [
            (a, b, graph.edges[(a, b)].s, graph.edges[(a, b)].n, *graph.edges[(a, b)].tau)
            for a, b in keys
        ]

    return TaskOutput(
        records=as_edges(records),
        residual_ids=np.array(residual_ids, dtype=np.uint64),
        residual_levels=np.array([level_of[i] for i in residual_ids], dtype=np.uint8),
        residual_futures=np.array([future_rows[i] for i in residual_ids], dtype=np.uint32).reshape(
            len(residual_ids), width
        ),
        residual_edges=as_edges(rows_of(residual)),
        dropped=as_edges(rows_of(dropped)),
        n_stale_pops=0,
    )


def records_of(edges: ClusterEdges) -> list[Record]:
    """The records of an edge set as tuples of Python ints, in order."""
    return list(zip(*(x.tolist() for x in edges.arrays().values()), strict=True))


def partition_labels(
    fragment_ids: np.ndarray, records: list[Record], bound: Fraction
) -> np.ndarray:
    """Segment id (smallest fragment id) per sorted fragment after the records below ``bound``.

    A plain dict-based union-find, independent of the library's.
    """
    ids = sorted(int(f) for f in fragment_ids)
    parent = {f: f for f in ids}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b, s, n, _, _ in records:
        if Fraction(255 * n - s, 255 * n) < bound:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(f) for f in ids], dtype=np.uint64)
