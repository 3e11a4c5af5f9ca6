"""Exact hierarchical mean-affinity agglomeration over an octree of blocks (issue 9).

The algorithm of ../shared/AGGLOMERATION.md (after ABISS; Lu, Zlateski & Seung,
arXiv 2106.10795): the same merges, with the same statistics and heights, as
one greedy mean-affinity agglomeration of the whole region graph, while each
task holds only its children's residual graphs and the fragment edges whose
lowest common ancestor (LCA) it is.

Pure orchestration on arrays (no daisy, no store):

* :func:`build_fragment_graph` checks and normalises the input: fragment ids
  with their home leaf block; fragment edges ``(u, v, S, N)`` whose partial
  statistics of one pair are summed; tie keys from
  :func:`~blockwise.kernels.mean_merge.fragment_edge_keys`.
* :func:`plan_hierarchy` finds each edge's LCA node and each fragment's level
  ``lambda`` (the highest LCA level of its edges, 0 without edges);
  :func:`fragment_futures` bounds, per fragment and level, the mean of the
  edges below the bound that the fragment has not been given yet there.
* :func:`run_task` is one task, standalone: children's residuals + seam edges
  + level -> merge records + residual (:class:`TaskResult`);
  :func:`save_task_result` / :func:`load_task_result` store a result as one
  file, written atomically and byte-identical on a re-run.
* :func:`run_hierarchy` runs every task in a topological order (by default
  leaves first, node ids increasing; a seed gives a random valid order).
* :func:`segment_tables` turns merge records into a fragment -> segment table
  per threshold in one union-find pass; a segment's id is its smallest
  fragment id.

Future bounds (an exact refinement of ABISS's freezing rule): a cluster that
may still receive edges from outside its task ("open", level above the task's)
is not frozen outright. The edges it will receive are sums of fragment edges
whose LCA lies above the task, so their means are at most the best mean among
those fragment edges below the bound; if the cluster's best edge in the task
beats that strictly (and its partner's too), the pair is mutually best in the
whole graph and merges now. Otherwise both are blocked (frozen, with
contagion) as in ABISS. The merged cluster stays open; a fragment absorbed
into a cluster with another id is named by an alias, so that seam edges
further up find it. With ``use_futures=False`` (or residuals without
``futures``, e.g. from stages that do not pass them) the plain rule runs; the
records are identical either way, only the residuals differ.

Merge records are :class:`~blockwise.kernels.mean_merge.ClusterEdges`: record
``i`` merged the clusters ``a[i] < b[i]`` (each named by its smallest fragment
id) along an edge with the statistics ``s[i], n[i], tau[i]``; the merged
cluster is named ``a[i]``; its height is ``1 - s / (255 n)``.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import struct
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from blockwise.errors import InputError
from blockwise.kernels.mean_merge import (
    UNKNOWN_FUTURE,
    ClusterEdges,
    TaskOutput,
    fragment_edge_keys,
    future_bound_codes,
    merge_bound,
    merge_task,
    scores_below,
)
from blockwise.kernels.union_find import UnionFind
from blockwise.octree import Octree

__all__ = [
    "FragmentGraph",
    "HierarchyInputError",
    "HierarchyPlan",
    "HierarchyResult",
    "Residual",
    "TaskKernel",
    "TaskResult",
    "TaskStats",
    "build_fragment_graph",
    "estimate_task_memory",
    "fragment_futures",
    "leaf_residual",
    "load_task_result",
    "merge_forced",
    "plan_hierarchy",
    "read_arrays",
    "run_hierarchy",
    "run_task",
    "save_task_result",
    "segment_tables",
    "write_arrays",
]

logger = logging.getLogger(__name__)

#: The signature of a task kernel: ``(ids, levels, level, edge_parts, bound,
#: futures)``, as :func:`blockwise.kernels.mean_merge.merge_task` (the edges
#: come in parts, one per child and one of seam edges, never concatenated).
#: Tests pass a slow reference through the same orchestration.
TaskKernel = Callable[
    [
        NDArray[np.uint64],
        NDArray[np.uint8],
        int,
        list[ClusterEdges],
        Fraction,
        NDArray[np.uint32] | None,
    ],
    TaskOutput,
]

_FILE_FORMAT = 3
_EDGE_FIELDS = ("a", "b", "s", "n", "tau_hi", "tau_lo")


class HierarchyInputError(InputError, ValueError):
    """Fragments, edges, thresholds or a task file given to the hierarchy are invalid."""


@dataclass(frozen=True)
class FragmentGraph:
    """The region graph of all fragments, checked and normalised.

    Attributes:
        fragment_ids: (F,) uint64 fragment ids, sorted, unique.
        home_blocks: (F,) int64 block index (leaf node id) of each fragment.
        edges: the fragment edges, one per pair, ``a = u < b = v``, sorted by
            ``(u, v)``, with their summed statistics and tie keys ``(u, v)``.
        forced: per edge, whether its two fragments are one basin cut by a
            block face and merge before anything else (None: no such edge).
    """

    fragment_ids: NDArray[np.uint64]
    home_blocks: NDArray[np.int64]
    edges: ClusterEdges
    forced: NDArray[np.bool_] | None = None


@dataclass(frozen=True)
class HierarchyPlan:
    """Which task gets which fragments and edges.

    Attributes:
        octree: the octree of blocks.
        graph: the fragment graph.
        fragment_levels: (F,) uint8 level lambda of each fragment: the highest
            LCA level of its edges, 0 without edges.
        edge_nodes: (E,) int64 LCA node id of each edge.
        fragment_order, fragment_starts: fragments of leaf ``k`` are
            ``fragment_order[fragment_starts[k]:fragment_starts[k + 1]]``.
        edge_order, edge_starts: edges whose LCA is node ``k`` are
            ``edge_order[edge_starts[k]:edge_starts[k + 1]]``.
    """

    octree: Octree
    graph: FragmentGraph
    fragment_levels: NDArray[np.uint8]
    edge_nodes: NDArray[np.int64]
    fragment_order: NDArray[np.int64]
    fragment_starts: NDArray[np.int64]
    edge_order: NDArray[np.int64]
    edge_starts: NDArray[np.int64]

    def leaf_fragments(self, block: int) -> tuple[NDArray[np.uint64], NDArray[np.uint8]]:
        """The fragment ids (sorted) and levels whose home is leaf ``block``."""
        index = self.leaf_index(block)
        return self.graph.fragment_ids[index], self.fragment_levels[index]

    def leaf_index(self, block: int) -> NDArray[np.int64]:
        """The positions (in ``graph.fragment_ids``) of the fragments of leaf ``block``."""
        return self.fragment_order[self.fragment_starts[block] : self.fragment_starts[block + 1]]

    def seam_edges(self, node: int) -> ClusterEdges:
        """The fragment edges whose LCA is ``node``, sorted by ``(u, v)``."""
        index = self.edge_order[self.edge_starts[node] : self.edge_starts[node + 1]]
        return self.graph.edges.take(index)

    def seam_forced(self, node: int) -> NDArray[np.bool_] | None:
        """Which of :meth:`seam_edges` are forced (None if the graph has none)."""
        if self.graph.forced is None:
            return None
        index = self.edge_order[self.edge_starts[node] : self.edge_starts[node + 1]]
        return self.graph.forced[index]


@dataclass(frozen=True)
class Residual:
    """What a task hands to its parent: frozen clusters and the edges among them.

    Attributes:
        ids: (C,) uint64 cluster ids (smallest fragment id of each), sorted.
        levels: (C,) uint8 level lambda of each cluster.
        edges: every edge between two of these clusters, ``a < b``.
        alias_from, alias_to: fragments absorbed (by forced merges, or by
            merges of open clusters allowed by their future bounds) into a
            residual cluster, and that cluster's id: a seam edge further up
            that names such a fragment means the cluster.
        futures: (C, K) uint32 future bounds per cluster and octree level
            (:func:`fragment_futures`), or None: none known, every open
            cluster is blocked at its first edge (the plain ABISS rule).
    """

    ids: NDArray[np.uint64]
    levels: NDArray[np.uint8]
    edges: ClusterEdges
    alias_from: NDArray[np.uint64] = field(default_factory=lambda: np.zeros(0, np.uint64))
    alias_to: NDArray[np.uint64] = field(default_factory=lambda: np.zeros(0, np.uint64))
    futures: NDArray[np.uint32] | None = None


@dataclass(frozen=True)
class TaskResult:
    """The outcome of one task.

    Attributes:
        node: the task's octree node id (-1 if not given).
        level: the task's octree level.
        records: its merge records, in the order done.
        residual: its frozen clusters and the edges among them.
        dropped: its edges to done clusters (lost for any bound above the
            one merged to; kept for accounting).
    """

    node: int
    level: int
    records: ClusterEdges
    residual: Residual
    dropped: ClusterEdges


@dataclass(frozen=True)
class TaskStats:
    """Sizes and time of one task, for cost accounting.

    Attributes:
        node: octree node id.
        level: octree level.
        n_clusters: clusters the task started with.
        n_edges: edges the task started with (children's residual + seam).
        n_records: merges done.
        n_residual_clusters: clusters handed to the parent.
        n_residual_open: of these, the open ones (level above the task's:
            they may still receive edges); the others are blocked.
        n_residual_edges: edges handed to the parent.
        n_dropped: edges dropped.
        seconds: wall time of the task (kernel and bookkeeping).
    """

    node: int
    level: int
    n_clusters: int
    n_edges: int
    n_records: int
    n_residual_clusters: int
    n_residual_edges: int
    n_dropped: int
    seconds: float
    n_residual_open: int = 0


@dataclass(frozen=True)
class HierarchyResult:
    """All merge records of a hierarchical run.

    Attributes:
        bound: the merge bound (the largest threshold, exact).
        records: every merge of every task, sorted by ``(a, b)``.
        dropped: every edge dropped by any task, sorted by ``(a, b)``. Which
            edges these are depends on the block layout (an edge to a done
            cluster is dropped before or after its other end merges); only
            their total count is invariant.
        tasks: per task, in the order run, its sizes and time.
    """

    bound: Fraction
    records: ClusterEdges
    dropped: ClusterEdges
    tasks: list[TaskStats] = field(default_factory=list)


def build_fragment_graph(
    fragment_ids: ArrayLike,
    home_blocks: ArrayLike,
    u: ArrayLike,
    v: ArrayLike,
    s: ArrayLike,
    n: ArrayLike,
    octree: Octree,
    forced: ArrayLike | None = None,
) -> FragmentGraph:
    """Check fragments and edges and bring them into the form the tasks use.

    Partial statistics of one fragment pair (in either orientation, e.g.
    measured by different blocks) are summed; long-range edges are ordinary
    edges here.

    Args:
        fragment_ids: (F,) unique non-negative integer fragment ids.
        home_blocks: (F,) block indices or (F, 3) leaf coordinates of each
            fragment's home block in ``octree``.
        u: (E,) fragment id of one end of each edge.
        v: (E,) fragment id of the other end, ``u != v``.
        s: (E,) sum of the uint8 affinities on the edge's contacts (>= 0).
        n: (E,) number of affinity edges on the contacts (>= 1); ``s <= 255 n``.
        octree: the octree of blocks.
        forced: (E,) bool, optional: edges joining the halves of one basin cut
            by a block face; a pair is forced if any of its partial edges is.

    Returns:
        The normalised graph.

    Raises:
        HierarchyInputError: if an array has the wrong shape or is not of
            integers, ids repeat or are negative, an edge end is not a
            fragment, an edge joins a fragment to itself, ``n < 1`` or
            ``s > 255 n`` after summing.
    """
    ids = _int_array("fragment_ids", fragment_ids)
    ids_u64 = ids.astype(np.uint64)
    order = np.argsort(ids_u64, kind="stable")
    ids_sorted = ids_u64[order]
    if ids_sorted.size > 1 and np.any(ids_sorted[1:] == ids_sorted[:-1]):
        j = int(np.flatnonzero(ids_sorted[1:] == ids_sorted[:-1])[0])
        raise HierarchyInputError(f"fragment_ids must be unique, but {ids_sorted[j]} repeats")
    blocks = np.asarray(home_blocks)
    if blocks.ndim == 0 or blocks.shape[0] != ids.shape[0]:
        raise HierarchyInputError(
            f"home_blocks must hold one block per fragment ({ids.shape[0]}), "
            f"received shape {blocks.shape}"
        )
    block_index = octree.block_index(octree.block_coords(blocks))[order]

    u_arr = _int_array("u", u)
    count = u_arr.shape[0]
    v_arr = _int_array("v", v, count)
    s_arr = _int_array("s", s, count)
    n_arr = _int_array("n", n, count)
    u64, v64 = u_arr.astype(np.uint64), v_arr.astype(np.uint64)
    if np.any(u64 == v64):
        i = int(np.flatnonzero(u64 == v64)[0])
        raise HierarchyInputError(f"edge {i} joins fragment {u64[i]} to itself")
    for name, values in (("u", u64), ("v", v64)):
        position = np.searchsorted(ids_sorted, values)
        missing = (position >= ids_sorted.size) | (
            ids_sorted[np.minimum(position, max(ids_sorted.size - 1, 0))] != values
            if ids_sorted.size
            else np.ones(values.shape, bool)
        )
        if np.any(missing):
            i = int(np.flatnonzero(missing)[0])
            raise HierarchyInputError(
                f"edge {i} has {name} = {values[i]}, which is not in fragment_ids"
            )
    forced_arr: NDArray[np.bool_] | None = None
    if forced is not None:
        forced_arr = np.asarray(forced)
        if forced_arr.dtype != np.bool_ or forced_arr.shape != (count,):
            raise HierarchyInputError(
                f"forced must be a bool array with one entry per edge ({count}), received "
                f"shape {forced_arr.shape} and dtype {forced_arr.dtype}"
            )
    low, high = fragment_edge_keys(u64, v64)
    edge_order = np.lexsort((high, low))
    low, high = low[edge_order], high[edge_order]
    s64 = s_arr.astype(np.uint64)[edge_order]
    n64 = n_arr.astype(np.uint64)[edge_order]
    if forced_arr is not None:
        forced_arr = forced_arr[edge_order]
    if count:
        first = np.ones(count, dtype=bool)
        first[1:] = (low[1:] != low[:-1]) | (high[1:] != high[:-1])
        starts = np.flatnonzero(first)
        low, high = low[starts], high[starts]
        s64 = np.add.reduceat(s64, starts).astype(np.uint64)
        n64 = np.add.reduceat(n64, starts).astype(np.uint64)
        if forced_arr is not None:
            forced_arr = np.logical_or.reduceat(forced_arr, starts)
        if np.any(n64 < 1):
            i = int(np.flatnonzero(n64 < 1)[0])
            raise HierarchyInputError(
                f"edge ({low[i]}, {high[i]}) has N = {n64[i]}; every edge needs N >= 1"
            )
        if np.any(s64 > n64 * np.uint64(255)):
            i = int(np.flatnonzero(s64 > n64 * np.uint64(255))[0])
            raise HierarchyInputError(
                f"edge ({low[i]}, {high[i]}) has S = {s64[i]} > 255 N = {255 * int(n64[i])}"
            )
    edges = ClusterEdges(
        a=np.ascontiguousarray(low),
        b=np.ascontiguousarray(high),
        s=np.ascontiguousarray(s64),
        n=np.ascontiguousarray(n64),
        tau_hi=np.ascontiguousarray(low).copy(),
        tau_lo=np.ascontiguousarray(high).copy(),
    )
    return FragmentGraph(
        fragment_ids=ids_sorted,
        home_blocks=block_index,
        edges=edges,
        forced=forced_arr if forced_arr is not None and forced_arr.any() else None,
    )


def plan_hierarchy(graph: FragmentGraph, octree: Octree) -> HierarchyPlan:
    """Assign every fragment to its leaf task and every edge to its LCA's task.

    Args:
        graph: the fragment graph (from :func:`build_fragment_graph` with the
            same octree).
        octree: the octree of blocks.

    Returns:
        The plan, with each fragment's level lambda.
    """
    ids = graph.fragment_ids
    index_u = np.searchsorted(ids, graph.edges.a)
    index_v = np.searchsorted(ids, graph.edges.b)
    block_u = graph.home_blocks[index_u]
    block_v = graph.home_blocks[index_v]
    edge_levels = octree.lca_level(block_u, block_v)
    edge_nodes = octree.lca_node(block_u, block_v)
    fragment_levels = np.zeros(ids.size, dtype=np.int64)
    np.maximum.at(fragment_levels, index_u, edge_levels)
    np.maximum.at(fragment_levels, index_v, edge_levels)
    fragment_order = np.argsort(graph.home_blocks, kind="stable")
    fragment_starts = np.searchsorted(
        graph.home_blocks[fragment_order], np.arange(octree.num_blocks + 1)
    ).astype(np.int64)
    edge_order = np.argsort(edge_nodes, kind="stable")
    edge_starts = np.searchsorted(edge_nodes[edge_order], np.arange(octree.num_nodes + 1)).astype(
        np.int64
    )
    return HierarchyPlan(
        octree=octree,
        graph=graph,
        fragment_levels=fragment_levels.astype(np.uint8),
        edge_nodes=edge_nodes,
        fragment_order=fragment_order.astype(np.int64),
        fragment_starts=fragment_starts,
        edge_order=edge_order.astype(np.int64),
        edge_starts=edge_starts,
    )


def leaf_residual(
    fragment_ids: NDArray[np.uint64],
    levels: NDArray[np.uint8],
    futures: NDArray[np.uint32] | None = None,
) -> Residual:
    """The input of a leaf task: the block's fragments as singleton clusters, no edges.

    Args:
        fragment_ids: (C,) the block's fragment ids.
        levels: (C,) their levels lambda.
        futures: (C, K) their future bounds (rows of :func:`fragment_futures`),
            or None.
    """
    return Residual(
        ids=np.ascontiguousarray(fragment_ids, dtype=np.uint64),
        levels=np.ascontiguousarray(levels, dtype=np.uint8),
        edges=ClusterEdges.empty(),
        futures=None if futures is None else np.ascontiguousarray(futures, dtype=np.uint32),
    )


def fragment_futures(plan: HierarchyPlan, bound: Fraction) -> NDArray[np.uint32]:
    """Per fragment and octree level, a bound on the edges it can still receive there.

    ``futures[f, l]`` is the largest :func:`~blockwise.kernels.mean_merge.future_bound_codes`
    code over the fragment edges of ``f`` that score below ``bound`` and whose
    LCA level exceeds ``l`` (0 if there are none): the edges a task at level
    ``l`` does not see. Any edge a cluster holding ``f`` later gets from outside
    the task is a sum of such fragment edges (or of edges scoring at or above
    the bound, whose sums stay there), so its mean is at most the mean this
    code stands for. A task merges an open cluster along an edge whose mean
    exceeds it (:func:`~blockwise.kernels.mean_merge.merge_task`). A forced
    edge (:func:`run_task`) gets the code ``UNKNOWN_FUTURE``: its two halves
    merge with nothing before it.

    Args:
        plan: the hierarchy plan (its graph and octree).
        bound: the merge bound (the largest threshold, exact).

    Returns:
        (F, K) uint32, rows in the order of ``plan.graph.fragment_ids``, K the
        octree's number of levels; column ``K - 1`` (the root) is 0.
    """
    graph, octree = plan.graph, plan.octree
    edges = graph.edges
    edge_levels = octree.node_level(plan.edge_nodes).astype(np.int64)
    return futures_of(
        graph.fragment_ids,
        edges.a,
        edges.b,
        edges.s,
        edges.n,
        graph.forced,
        edge_levels,
        octree.n_levels,
        bound,
    )


def futures_of(
    fragment_ids: NDArray[np.uint64],
    a: NDArray[np.uint64],
    b: NDArray[np.uint64],
    s: NDArray[np.uint64],
    n: NDArray[np.uint64],
    forced: NDArray[np.bool_] | None,
    edge_levels: NDArray[np.int64],
    n_levels: int,
    bound: Fraction,
) -> NDArray[np.uint32]:
    """The future bounds of ``fragment_ids`` (see :func:`fragment_futures`) from fragment edges.

    Args:
        fragment_ids: (F,) sorted, distinct: the fragments whose rows are returned.
        a, b, s, n: (E,) fragment edges (ends, affinity sums, counts); edges with
            neither end among ``fragment_ids`` are ignored, so the edges may be
            any superset of those touching the fragments.
        forced: (E,) whether each edge is forced (a cut basin), or None.
        edge_levels: (E,) the octree level of each edge's LCA.
        n_levels: the octree's number of levels.
        bound: the merge bound.

    Returns:
        (F, n_levels) uint32 codes.
    """
    futures = np.zeros((fragment_ids.size, n_levels), dtype=np.uint32)
    if len(a) == 0 or fragment_ids.size == 0:
        return futures
    below_mask = scores_below(s, n, bound)
    if forced is not None:
        below_mask |= forced
    below = np.flatnonzero(below_mask)
    codes = future_bound_codes(np.ascontiguousarray(s[below]), np.ascontiguousarray(n[below]))
    if forced is not None:
        # a forced edge merges before anything: its halves wait for it
        codes[forced[below]] = UNKNOWN_FUTURE
    levels_below = np.asarray(edge_levels, dtype=np.int64)[below]
    for ends in (a, b):
        values = np.asarray(ends, dtype=np.uint64)[below]
        index = np.searchsorted(fragment_ids, values)
        mine = index < fragment_ids.size
        mine[mine] = fragment_ids[index[mine]] == values[mine]
        np.maximum.at(futures, (index[mine], levels_below[mine]), codes[mine])
    # now futures[f, m] is the best code at LCA level exactly m; column l needs m > l
    running = np.zeros(fragment_ids.size, dtype=np.uint32)
    for level in range(n_levels - 1, -1, -1):
        at_level = futures[:, level].copy()
        futures[:, level] = running
        np.maximum(running, at_level, out=running)
    return futures


def run_task(
    level: int,
    children: Sequence[Residual],
    seam_edges: ClusterEdges,
    bound: Fraction,
    *,
    forced: NDArray[np.bool_] | None = None,
    node: int = -1,
    task_kernel: TaskKernel = merge_task,
) -> TaskResult:
    """Run one task of the hierarchy: one octree node.

    Forced seam edges (the halves of a basin cut by a block face) are merged
    before anything else, whether their clusters are frozen or not: both
    halves were frozen below this node (the forced edge's LCA), so neither
    merged with anything yet, and the merged cluster, whose edges are the sums
    of its halves' and whose level is the larger of theirs, is exactly the
    basin a whole-volume run would have had as one fragment. Each forced merge
    is recorded with the height 0 (``s = 255 n``: below every threshold);
    edges that end up inside a merged cluster are dropped.

    Args:
        level: the node's octree level; clusters with a level above it are frozen.
        children: the residuals of the node's children (for a leaf: one
            :func:`leaf_residual` of its fragments).
        seam_edges: the fragment edges whose LCA is this node.
        bound: the merge bound (:func:`~blockwise.kernels.mean_merge.merge_bound`
            of the largest threshold).
        node: the node id, recorded in the result.
        task_kernel: the kernel that merges (tests pass a reference).
        forced: (len(seam_edges),) bool: which seam edges are forced.

    Returns:
        The task's records, residual and dropped edges.
    """
    ids = np.concatenate([child.ids for child in children]) if children else np.zeros(0, np.uint64)
    levels = (
        np.concatenate([child.levels for child in children]) if children else np.zeros(0, np.uint8)
    )
    futures = _children_futures(children)
    alias_from = np.concatenate([np.zeros(0, np.uint64)] + [c.alias_from for c in children])
    alias_to = np.concatenate([np.zeros(0, np.uint64)] + [c.alias_to for c in children])
    if alias_from.size:
        seam_edges = _apply_aliases(seam_edges, alias_from, alias_to)
    # the kernel reads the parts in turn: no concatenated copy of the task's input
    parts = [part for part in [child.edges for child in children] + [seam_edges] if len(part)]
    pre_records = pre_dropped = ClusterEdges.empty()
    has_forced = forced is not None and bool(np.any(forced))
    # an aliased seam edge inside one cluster (possible after forced merges) is dropped there
    inside = alias_from.size > 0 and bool(np.any(seam_edges.a == seam_edges.b))
    if has_forced or inside:
        edges = ClusterEdges.concatenate(parts)
        mask = np.zeros(len(edges), dtype=bool)
        if forced is not None and has_forced:
            if forced.shape != (len(seam_edges),):
                raise HierarchyInputError(
                    f"forced must have one entry per seam edge ({len(seam_edges)}), "
                    f"received shape {forced.shape}"
                )
            mask[len(edges) - len(seam_edges) :] = forced
        before = ids
        ids, levels, edges, pre_records, pre_dropped, futures = merge_forced(
            ids, levels, edges, mask, futures=futures
        )
        parts = [edges]
        if len(pre_records):
            # fragments absorbed here, and earlier aliases, now name their merged cluster
            absorbed = np.setdiff1d(before, ids)
            mapping = _Relabel(pre_records)
            alias_from = np.concatenate([alias_from, absorbed])
            alias_to = mapping(np.concatenate([alias_to, absorbed]))
    ids = np.ascontiguousarray(ids, dtype=np.uint64)
    levels = np.ascontiguousarray(levels, dtype=np.uint8)
    output = task_kernel(ids, levels, int(level), parts, bound, futures)
    if futures is not None and len(output.records):
        # open clusters merged into another id: seam edges further up name them
        alias_from, alias_to = _absorbed_aliases(
            ids, levels > level, output.records, alias_from, alias_to
        )
    return TaskResult(
        node=int(node),
        level=int(level),
        records=ClusterEdges.concatenate([pre_records, output.records]),
        residual=Residual(
            ids=output.residual_ids,
            levels=output.residual_levels,
            edges=output.residual_edges,
            # only residual clusters can still be named by seam edges further up
            **_frozen_aliases(alias_from, alias_to, output.residual_ids),
            futures=None if futures is None else output.residual_futures,
        ),
        dropped=ClusterEdges.concatenate([pre_dropped, output.dropped]),
    )


def _children_futures(children: Sequence[Residual]) -> NDArray[np.uint32] | None:
    """The children's future bounds stacked, or None if no child has any."""
    with_futures = [child.futures is not None for child in children]
    if not any(with_futures):
        return None
    if not all(with_futures):
        raise HierarchyInputError(
            "either every child residual of a task has future bounds or none has; received "
            f"{sum(with_futures)} of {len(children)} with them"
        )
    parts = [child.futures for child in children if child.futures is not None]
    widths = {part.shape[1] if part.ndim == 2 else -1 for part in parts}
    if len(widths) != 1 or any(
        part.ndim != 2 or part.shape[0] != child.ids.size
        for part, child in zip(parts, children, strict=True)
    ):
        raise HierarchyInputError(
            "every child's futures must be a (clusters, levels) array with one row per "
            f"cluster and the same number of levels; received shapes {[p.shape for p in parts]}"
        )
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.uint32)


def _absorbed_aliases(
    ids: NDArray[np.uint64],
    is_open: NDArray[np.bool_],
    records: ClusterEdges,
    alias_from: NDArray[np.uint64],
    alias_to: NDArray[np.uint64],
) -> tuple[NDArray[np.uint64], NDArray[np.uint64]]:
    """Aliases after the task's merges: open input clusters and old alias targets -> final id."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    union_find = UnionFind(sorted_ids.size)
    union_find.union(
        np.searchsorted(sorted_ids, records.a).astype(np.int64),
        np.searchsorted(sorted_ids, records.b).astype(np.int64),
    )
    # sorted ids: the smallest index of a set is its smallest id, the merged cluster's id
    final = sorted_ids[union_find.components()]
    absorbed = is_open[order] & (final != sorted_ids)
    if alias_to.size:
        position = np.searchsorted(sorted_ids, alias_to)
        hit = (position < sorted_ids.size) & (
            sorted_ids[np.minimum(position, max(sorted_ids.size - 1, 0))] == alias_to
        )
        alias_to = np.where(hit, final[np.minimum(position, sorted_ids.size - 1)], alias_to)
    return (
        np.concatenate([alias_from, sorted_ids[absorbed]]).astype(np.uint64),
        np.concatenate([alias_to, final[absorbed]]).astype(np.uint64),
    )


class _Relabel:
    """Maps fragment ids to the cluster they are in after the given merge records."""

    def __init__(self, records: ClusterEdges) -> None:
        self.parent: dict[int, int] = {}
        for a, b in zip(records.a.tolist(), records.b.tolist(), strict=True):
            self.parent[int(b)] = int(a)

    def find(self, x: int) -> int:
        while x in self.parent:
            x = self.parent[x]
        return x

    def __call__(self, ids: NDArray[np.uint64]) -> NDArray[np.uint64]:
        return np.array([self.find(int(x)) for x in ids.tolist()], dtype=np.uint64)


def _apply_aliases(
    edges: ClusterEdges, alias_from: NDArray[np.uint64], alias_to: NDArray[np.uint64]
) -> ClusterEdges:
    """``edges`` with every endpoint that is an alias replaced by its cluster (not reordered)."""
    order = np.argsort(alias_from)
    keys, values = alias_from[order], alias_to[order]

    def mapped(ends: NDArray[np.uint64]) -> NDArray[np.uint64]:
        position = np.minimum(np.searchsorted(keys, ends), keys.size - 1)
        hit = keys[position] == ends
        return np.where(hit, values[position], ends).astype(np.uint64)

    return ClusterEdges(
        a=mapped(edges.a),
        b=mapped(edges.b),
        s=edges.s,
        n=edges.n,
        tau_hi=edges.tau_hi,
        tau_lo=edges.tau_lo,
    )


def _frozen_aliases(
    alias_from: NDArray[np.uint64], alias_to: NDArray[np.uint64], frozen: NDArray[np.uint64]
) -> dict[str, NDArray[np.uint64]]:
    keep = np.isin(alias_to, frozen)
    order = np.argsort(alias_from[keep], kind="stable")
    return {
        "alias_from": np.ascontiguousarray(alias_from[keep][order], dtype=np.uint64),
        "alias_to": np.ascontiguousarray(alias_to[keep][order], dtype=np.uint64),
    }


def merge_forced(
    ids: NDArray[np.uint64],
    levels: NDArray[np.uint8],
    edges: ClusterEdges,
    forced: NDArray[np.bool_],
    *,
    futures: NDArray[np.uint32] | None = None,
) -> tuple[
    NDArray[np.uint64],
    NDArray[np.uint8],
    ClusterEdges,
    ClusterEdges,
    ClusterEdges,
    NDArray[np.uint32] | None,
]:
    """Merge the clusters joined by forced edges, before any scored merge.

    Forced edges are taken in increasing ``(a, b)`` order; each that joins two
    clusters is one record ``(smaller id, larger id, 255 n, n)`` (height 0). A
    merged cluster is named by its smallest id, takes the largest level of its
    parts, and its edges to another cluster are summed into one (``s`` and
    ``n`` added, the largest tie key kept, as the kernel combines edges).
    Other edges inside a merged cluster (also forced ones that joined nothing
    new) are dropped.

    Args:
        ids: (C,) cluster ids.
        levels: (C,) their levels.
        edges: every edge among the clusters.
        forced: (E,) which edges are forced.
        futures: (C, K) their future bounds, or None; a merged cluster takes
            the largest of its parts' per level.

    Returns:
        The clusters (sorted), their levels, their edges, the forced records,
        the dropped edges and the clusters' future bounds (None if not given).
    """
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    sorted_levels = levels[order]
    index_a = _fragment_index(sorted_ids, edges.a, "edge a")
    index_b = _fragment_index(sorted_ids, edges.b, "edge b")
    parent = list(range(sorted_ids.size))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    chosen = np.flatnonzero(forced)
    chosen = chosen[np.lexsort((edges.b[chosen], edges.a[chosen]))]
    record_rows: list[tuple[int, int, int, int, int, int]] = []
    recorded = np.zeros(len(edges), dtype=bool)
    for i in chosen.tolist():
        ra, rb = find(int(index_a[i])), find(int(index_b[i]))
        if ra == rb:
            continue
        recorded[i] = True
        low, high = min(ra, rb), max(ra, rb)  # sorted ids: the smaller index is the smaller id
        parent[high] = low
        n = int(edges.n[i])
        record_rows.append(
            (
                int(sorted_ids[low]),
                int(sorted_ids[high]),
                255 * n,
                n,
                int(edges.tau_hi[i]),
                int(edges.tau_lo[i]),
            )
        )
    roots = np.array([find(k) for k in range(sorted_ids.size)], dtype=np.int64)
    merged_levels = sorted_levels.copy()
    np.maximum.at(merged_levels, roots, sorted_levels)
    merged_futures = None
    if futures is not None:
        sorted_futures = futures[order]
        merged_futures = sorted_futures.copy()
        np.maximum.at(merged_futures, roots, sorted_futures)
    keep_clusters = roots == np.arange(sorted_ids.size)
    root_a, root_b = roots[index_a], roots[index_b]
    inside = (root_a == root_b) & ~recorded
    outside = root_a != root_b
    dropped = edges.take(np.flatnonzero(inside))
    a = np.minimum(root_a, root_b)[outside]
    b = np.maximum(root_a, root_b)[outside]
    rest = edges.take(np.flatnonzero(outside))
    combined = ClusterEdges.empty()
    if a.size:
        # sum parallel edges; keep the largest tie key (tau_hi, tau_lo)
        key_order = np.lexsort((rest.tau_lo, rest.tau_hi, b, a))
        a, b = a[key_order], b[key_order]
        rest = rest.take(key_order)
        first = np.ones(a.size, dtype=bool)
        first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
        starts = np.flatnonzero(first)
        last = np.r_[starts[1:] - 1, a.size - 1]
        combined = ClusterEdges(
            a=np.ascontiguousarray(sorted_ids[a[starts]]),
            b=np.ascontiguousarray(sorted_ids[b[starts]]),
            s=np.add.reduceat(rest.s, starts).astype(np.uint64),
            n=np.add.reduceat(rest.n, starts).astype(np.uint64),
            tau_hi=np.ascontiguousarray(rest.tau_hi[last]),
            tau_lo=np.ascontiguousarray(rest.tau_lo[last]),
        )
    records = ClusterEdges(
        *(
            np.array([row[k] for row in record_rows], dtype=np.uint64)
            for k in range(len(_EDGE_FIELDS))
        )
    )
    return (
        np.ascontiguousarray(sorted_ids[keep_clusters]),
        np.ascontiguousarray(merged_levels[keep_clusters]),
        combined,
        records,
        dropped,
        None
        if merged_futures is None
        else np.ascontiguousarray(merged_futures[keep_clusters], dtype=np.uint32),
    )


def run_hierarchy(
    graph: FragmentGraph,
    octree: Octree,
    thresholds: Sequence[float | Fraction],
    *,
    order_seed: int | None = None,
    task_kernel: TaskKernel = merge_task,
    use_futures: bool = True,
) -> HierarchyResult:
    """Run every task of the octree, children before parents, and collect the records.

    Args:
        graph: the fragment graph.
        octree: the octree of blocks (the one the graph was built with).
        thresholds: score thresholds; merging goes up to the largest.
        order_seed: None runs the tasks leaves first, by increasing node id;
            a seed runs them in a random order in which every task still
            follows its children (the result must not depend on it).
        task_kernel: the kernel that merges (tests pass a reference).
        use_futures: give the tasks each fragment's future bounds
            (:func:`fragment_futures`), so that open clusters merge where no
            edge still to come can be better; False: the plain ABISS rule.
            The records are the same either way; the residuals are smaller
            with them.

    Returns:
        All records and dropped edges, each sorted by ``(a, b)``, and per-task
        sizes.
    """
    bound = _largest_bound(thresholds)
    plan = plan_hierarchy(graph, octree)
    futures = fragment_futures(plan, bound) if use_futures else None
    pending: dict[int, Residual] = {}
    records: list[ClusterEdges] = []
    dropped: list[ClusterEdges] = []
    stats: list[TaskStats] = []
    for node in _task_order(octree, order_seed):
        start = time.perf_counter()
        level = int(octree.node_level([node])[0])
        if level == 0:
            children = [
                leaf_residual(
                    *plan.leaf_fragments(node),
                    None if futures is None else futures[plan.leaf_index(node)],
                )
            ]
        else:
            children = [pending.pop(int(child)) for child in octree.children(node)]
        seam = plan.seam_edges(node)
        n_clusters = sum(child.ids.size for child in children)
        n_edges = sum(len(child.edges) for child in children) + len(seam)
        result = run_task(
            level,
            children,
            seam,
            bound,
            forced=plan.seam_forced(node),
            node=node,
            task_kernel=task_kernel,
        )
        del children
        pending[node] = result.residual
        records.append(result.records)
        dropped.append(result.dropped)
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
    root = pending.pop(octree.root)
    if root.ids.size or len(root.edges) or pending:
        raise RuntimeError(
            f"the root left {root.ids.size} frozen clusters and {len(pending)} tasks "
            "unconsumed; the octree and the graph's home blocks disagree"
        )
    all_records = _sorted_edges(ClusterEdges.concatenate(records))
    all_dropped = _sorted_edges(ClusterEdges.concatenate(dropped))
    logger.info(
        "hierarchical agglomeration: %d tasks on %d levels, %d merges, %d dropped edges",
        len(stats),
        octree.n_levels,
        len(all_records),
        len(all_dropped),
    )
    return HierarchyResult(bound=bound, records=all_records, dropped=all_dropped, tasks=stats)


def segment_tables(
    fragment_ids: NDArray[np.uint64],
    records: ClusterEdges,
    thresholds: Sequence[float | Fraction],
    *,
    bound: Fraction | None = None,
) -> list[NDArray[np.uint64]]:
    """The fragment -> segment table at each threshold, in one union-find pass.

    At threshold ``t`` two fragments are in one segment iff the records with a
    height (score) below ``t``, compared exactly, connect them; heights are
    monotone along the merge order, so this is the greedy agglomeration
    stopped at ``t``. A segment's id is its smallest fragment id.

    Args:
        fragment_ids: (F,) sorted unique uint64 fragment ids (as
            :attr:`FragmentGraph.fragment_ids`).
        records: merge records whose ``a`` and ``b`` are fragment ids.
        thresholds: score thresholds, any order.
        bound: the bound the records were made with; a threshold above it
            is refused, since merges above the bound were never made.

    Returns:
        Per threshold (in the order given), a (F,) uint64 array: the segment
        id of each fragment.

    Raises:
        HierarchyInputError: if the fragment ids are not sorted and unique, a
            record names an unknown fragment, or a threshold exceeds ``bound``.
    """
    ids = np.asarray(fragment_ids)
    if ids.dtype != np.uint64 or ids.ndim != 1:
        raise HierarchyInputError(
            f"fragment_ids must be a 1D uint64 array, received {ids.ndim}D {ids.dtype}"
        )
    if ids.size > 1 and np.any(ids[1:] <= ids[:-1]):
        raise HierarchyInputError("fragment_ids must be sorted and unique")
    bounds = [merge_bound(t) for t in thresholds]
    if bound is not None and any(b > bound for b in bounds):
        raise HierarchyInputError(
            f"thresholds {list(thresholds)} exceed the bound {bound} the records were made "
            "with; merge again up to the largest threshold"
        )
    index_a = _fragment_index(ids, records.a, "records.a")
    index_b = _fragment_index(ids, records.b, "records.b")
    # first[i]: position (in increasing bounds) of the first threshold that
    # record i is below; records below a bound are below every larger one
    ascending = sorted(range(len(bounds)), key=lambda k: bounds[k])
    below_count = np.zeros(len(records), dtype=np.int64)
    for k in ascending:
        below_count += scores_below(records.s, records.n, bounds[k])
    first = len(bounds) - below_count
    union_find = UnionFind(ids.size)
    tables: list[NDArray[np.uint64]] = [np.zeros(0, np.uint64)] * len(bounds)
    for position, k in enumerate(ascending):
        now = first == position
        union_find.union(index_a[now], index_b[now])
        tables[k] = ids[union_find.components()]
    return tables


def estimate_task_memory(n_clusters: int, n_edges: int) -> int:
    """An upper estimate of one task's peak memory in bytes from its input sizes.

    Counts the task's inputs as Python arrays (48 bytes per edge, and their
    concatenation when they come from several children: another 48), the
    kernel's state (edges 41, adjacency about 32, sorted queue 4 and changed
    edges' heap entries; about 100 bytes per cluster with its future bounds)
    and the outputs (written straight into their arrays, 48 bytes per kept
    edge), plus 64 MiB for the interpreter and libraries. Measured by
    ``tests/benchmarks/bench_hierarchical.py``: the largest task of 1e7 edges
    (1.45 M edges, 287 k clusters, one input part) peaked at 273 MiB, 119
    bytes per edge above its loaded inputs.

    Args:
        n_clusters: clusters in the task's input.
        n_edges: edges in the task's input (children's residual + seam).
    """
    return int(64 * 2**20 + 230 * n_edges + 150 * n_clusters)


def save_task_result(path: str | os.PathLike[str], result: TaskResult) -> None:
    """Write a task result to ``path`` (an uncompressed .npz), atomically.

    The file is written next to ``path`` under a temporary name and moved
    into place with ``os.replace``, so a reader sees either no file or the
    whole one; a re-run writes the same bytes (fixed zip timestamps, arrays
    in a fixed order).
    """
    target = Path(path)
    arrays: dict[str, NDArray[np.generic]] = {
        "format": np.array([_FILE_FORMAT, result.node, result.level], dtype=np.int64),
        "residual_ids": result.residual.ids,
        "residual_levels": result.residual.levels,
        "residual_alias_from": result.residual.alias_from,
        "residual_alias_to": result.residual.alias_to,
        # (C, 0): no future bounds
        "residual_futures": (
            result.residual.futures
            if result.residual.futures is not None
            else np.zeros((result.residual.ids.size, 0), dtype=np.uint32)
        ),
    }
    for prefix, edges in (
        ("records", result.records),
        ("residual_edges", result.residual.edges),
        ("dropped", result.dropped),
    ):
        for name in _EDGE_FIELDS:
            arrays[f"{prefix}_{name}"] = getattr(edges, name)
    write_arrays(target, arrays)


def write_arrays(path: str | os.PathLike[str], arrays: dict[str, NDArray[np.generic]]) -> None:
    """Write named arrays to ``path`` as an uncompressed .npz, atomically and reproducibly.

    The file is written next to ``path`` under a temporary name, synced and
    moved into place with ``os.replace``: a reader sees no file or the whole
    one, and the same arrays always give the same bytes (fixed zip timestamps,
    arrays in the order given).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    # built in memory and written at once: zipfile seeks back to every member's
    # header, which on a file cost more than the write itself (the hierarchy
    # writes thousands of small files)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            with archive.open(info, "w", force_zip64=True) as stream:
                np.lib.format.write_array(stream, np.ascontiguousarray(array), allow_pickle=False)
    try:
        with open(temporary, "wb") as handle:
            handle.write(buffer.getbuffer())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    finally:
        if temporary.exists():
            temporary.unlink()


# the header numpy writes for a plain (non-structured) array: dtype, order, shape
_NPY_HEADER = re.compile(
    r"\{'descr': '([<>|=][a-zA-Z][0-9]*)', 'fortran_order': False, 'shape': \(([0-9, ]*)\), \}"
)
# a zip local file header: signature .. name length (offset 26), extra length (28)
_LOCAL_HEADER = struct.Struct("<4s22xHH")


def _stored_member(blob: bytearray, info: zipfile.ZipInfo) -> NDArray[Any] | None:
    """The array of one uncompressed .npy member, read in place (None: not such a member)."""
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    signature, name_length, extra_length = _LOCAL_HEADER.unpack_from(blob, info.header_offset)
    if signature != b"PK\x03\x04":
        return None
    begin = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
    member = memoryview(blob)[begin : begin + info.file_size]
    if len(member) < 10 or bytes(member[:6]) != b"\x93NUMPY":
        return None
    if member[6] == 1:
        (header_length,), header_begin = struct.unpack_from("<H", member, 8), 10
    else:
        (header_length,), header_begin = struct.unpack_from("<I", member, 8), 12
    data_begin = header_begin + header_length
    header = bytes(member[header_begin:data_begin]).decode("latin1")
    match = _NPY_HEADER.match(header)
    if match is None:
        return None
    dtype = np.dtype(match.group(1))
    shape = tuple(int(x) for x in match.group(2).replace(" ", "").split(",") if x)
    count = math.prod(shape)
    if data_begin + count * dtype.itemsize > len(member):
        raise ValueError(f"{info.filename} is truncated")
    return np.frombuffer(member, dtype=dtype, count=count, offset=data_begin).reshape(shape)


def read_arrays(path: str | os.PathLike[str], names: Sequence[str]) -> dict[str, NDArray[Any]]:
    """The named arrays of an .npz written by :func:`write_arrays`.

    The file is read whole and its members are viewed in place (no copy, no
    per-member header parsing by ``ast``): the hierarchy reads thousands of
    small files. Members laid out otherwise (compressed, structured dtypes)
    go through ``np.load``; both give the same arrays (writable).

    Raises:
        HierarchyInputError: if the file cannot be read or lacks an array (names both).
    """
    source = Path(path)
    try:
        with open(source, "rb") as handle:
            blob = bytearray(os.fstat(handle.fileno()).st_size)
            if handle.readinto(blob) != len(blob):
                raise OSError("the file changed while it was read")
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            members = {info.filename: info for info in archive.infolist()}
            missing = [name for name in names if f"{name}.npy" not in members]
            if missing:
                raise HierarchyInputError(f"{source} lacks the arrays {missing}")
            arrays: dict[str, NDArray[Any]] = {}
            for name in names:
                array = _stored_member(blob, members[f"{name}.npy"])
                if array is None:
                    with archive.open(f"{name}.npy") as stream:
                        array = np.lib.format.read_array(stream, allow_pickle=False)
                arrays[name] = array
            return arrays
    except (OSError, ValueError, struct.error, zipfile.BadZipFile) as e:
        if isinstance(e, HierarchyInputError):
            raise
        raise HierarchyInputError(f"cannot read {source}: {e}") from e


def load_task_result(path: str | os.PathLike[str]) -> TaskResult:
    """Read a task result written by :func:`save_task_result`.

    Raises:
        HierarchyInputError: if the file is not such a result (names the file).
    """
    source = Path(path)
    expected = [
        "format",
        "residual_ids",
        "residual_levels",
        "residual_alias_from",
        "residual_alias_to",
        "residual_futures",
    ] + [
        f"{prefix}_{name}"
        for prefix in ("records", "residual_edges", "dropped")
        for name in _EDGE_FIELDS
    ]
    try:
        arrays = read_arrays(source, expected)
    except HierarchyInputError as e:
        raise HierarchyInputError(
            f"{e}; is {source.name} a task result written by save_task_result?"
        ) from e
    header = arrays["format"]
    if header.shape != (3,) or int(header[0]) != _FILE_FORMAT:
        raise HierarchyInputError(
            f"task result {source} has format {header.tolist()}, expected version {_FILE_FORMAT}"
        )

    def edges(prefix: str) -> ClusterEdges:
        return ClusterEdges(*(arrays[f"{prefix}_{name}"] for name in _EDGE_FIELDS))

    return TaskResult(
        node=int(header[1]),
        level=int(header[2]),
        records=edges("records"),
        residual=Residual(
            ids=arrays["residual_ids"],
            levels=arrays["residual_levels"],
            edges=edges("residual_edges"),
            alias_from=arrays["residual_alias_from"],
            alias_to=arrays["residual_alias_to"],
            futures=_loaded_futures(source, arrays["residual_futures"], arrays["residual_ids"]),
        ),
        dropped=edges("dropped"),
    )


def _loaded_futures(
    source: Path, futures: NDArray[Any], ids: NDArray[Any]
) -> NDArray[np.uint32] | None:
    if futures.dtype != np.uint32 or futures.ndim != 2 or futures.shape[0] != ids.shape[0]:
        raise HierarchyInputError(
            f"task result {source} has residual_futures of shape {futures.shape} and dtype "
            f"{futures.dtype}; expected uint32 with one row per residual cluster ({ids.shape[0]})"
        )
    return futures if futures.shape[1] else None


def _largest_bound(thresholds: Sequence[float | Fraction]) -> Fraction:
    if isinstance(thresholds, str | bytes) or not isinstance(thresholds, Sequence):
        raise HierarchyInputError(
            f"thresholds must be a sequence of numbers, received {type(thresholds).__name__}"
        )
    if len(thresholds) == 0:
        raise HierarchyInputError("thresholds must hold at least one threshold, received none")
    return max(merge_bound(t) for t in thresholds)


def _task_order(octree: Octree, seed: int | None) -> list[int]:
    if seed is None:
        return list(range(octree.num_nodes))
    rng = np.random.default_rng(seed)
    waiting = {
        int(node): len(octree.children(int(node)))
        for level in range(1, octree.n_levels)
        for node in octree.nodes_at_level(level)
    }
    ready = [int(node) for node in octree.nodes_at_level(0)]
    order: list[int] = []
    while ready:
        node = ready.pop(int(rng.integers(len(ready))))
        order.append(node)
        if node != octree.root:
            parent = octree.parent(node)
            waiting[parent] -= 1
            if waiting[parent] == 0:
                ready.append(parent)
    return order


def _sorted_edges(edges: ClusterEdges) -> ClusterEdges:
    return edges.take(np.lexsort((edges.b, edges.a)))


def _fragment_index(
    ids: NDArray[np.uint64], values: NDArray[np.uint64], name: str
) -> NDArray[np.int64]:
    position = np.searchsorted(ids, values)
    if values.size and (
        np.any(position >= ids.size) or np.any(ids[np.minimum(position, ids.size - 1)] != values)
    ):
        raise HierarchyInputError(f"{name} names fragments that are not in fragment_ids")
    return position.astype(np.int64)


def _int_array(name: str, values: ArrayLike, length: int | None = None) -> NDArray[np.int64]:
    array = np.asarray(values)
    if array.ndim != 1 or not (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
        raise HierarchyInputError(
            f"{name} must be a 1D integer array, received shape {array.shape} and dtype "
            f"{array.dtype}"
        )
    if array.size and np.issubdtype(array.dtype, np.signedinteger) and array.min() < 0:
        raise HierarchyInputError(f"{name} must be non-negative, received {array.min()}")
    if length is not None and array.shape[0] != length:
        raise HierarchyInputError(
            f"{name} must have one entry per edge ({length}), received {array.shape[0]}"
        )
    return array
