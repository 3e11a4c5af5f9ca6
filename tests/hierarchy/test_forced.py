"""Forced edges (the halves of a basin cut by a block face) in the hierarchy.

The reference pre-merges every forced pair (a basin a whole-volume run would
have as one fragment) and then merges greedily; the hierarchy merges forced
edges first in the task of their lowest common ancestor. Partitions must be
identical at every threshold, for any block size and task order.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hierarchy.graphs import THRESHOLDS, Case, blocks_of, chain_case, random_case, voi
from hierarchy.reference import greedy_merge, partition_labels

from blockwise.hierarchical import (
    HierarchyInputError,
    build_fragment_graph,
    merge_forced,
    run_hierarchy,
    segment_tables,
)
from blockwise.kernels.mean_merge import ClusterEdges, merge_bound


def forced_pairs(case: Case, seed: int, share: float = 0.15) -> np.ndarray:
    """A forced flag per edge row of ``case``: about ``share`` of the pairs, all their rows."""
    rng = np.random.default_rng(seed)
    low = np.minimum(case.u, case.v)
    high = np.maximum(case.u, case.v)
    pairs = sorted(set(zip(low.tolist(), high.tolist(), strict=True)))
    chosen = {pairs[i] for i in np.flatnonzero(rng.random(len(pairs)) < share).tolist()}
    return np.array(
        [(a, b) in chosen for a, b in zip(low.tolist(), high.tolist(), strict=True)], dtype=bool
    )


def reference_with_forced(
    case: Case, forced: np.ndarray, bound: Fraction
) -> list[tuple[int, int, int, int, int, int]]:
    """Pre-merge every forced pair, then merge greedily (exact means, tau tie-break)."""
    pairs = sorted(
        {
            (min(a, b), max(a, b))
            for a, b, f in zip(case.u.tolist(), case.v.tolist(), forced.tolist(), strict=True)
            if f
        }
    )
    return greedy_merge(case.fragment_ids, case.u, case.v, case.s, case.n, bound, premerged=pairs)


def check_forced(
    case: Case, forced: np.ndarray, block_shape: tuple[int, int, int], seed: int | None
) -> None:
    octree, home = blocks_of(case, block_shape)
    graph = build_fragment_graph(
        case.fragment_ids, home, case.u, case.v, case.s, case.n, octree, forced=forced
    )
    result = run_hierarchy(graph, octree, THRESHOLDS, order_seed=seed)
    expected = reference_with_forced(case, forced, result.bound)
    ids = graph.fragment_ids
    tables = segment_tables(ids, result.records, THRESHOLDS)
    for threshold, table in zip(THRESHOLDS, tables, strict=True):
        labels = partition_labels(ids, expected, merge_bound(threshold))
        assert np.array_equal(table, labels), f"partitions differ at threshold {threshold}"
        assert voi(table, labels) == 0.0
    # conservation: every contact ends in one record or one dropped edge
    assert result.records.total_count() + result.dropped.total_count() == int(case.n.sum())


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("block_shape", [(2, 2, 2), (3, 4, 2), (8, 8, 8)])
def test_forced_edges_equal_premerged_greedy(seed: int, block_shape: tuple[int, int, int]) -> None:
    case = random_case(seed, n_fragments=60)
    check_forced(case, forced_pairs(case, seed), block_shape, seed)


@pytest.mark.parametrize("seed", range(3))
def test_forced_chains_across_many_blocks(seed: int) -> None:
    # long chains of forced pairs: one basin cut by many faces
    case = chain_case(seed, length=40)
    check_forced(case, forced_pairs(case, seed, share=0.6), (2, 2, 2), seed)


def test_forced_pairs_change_the_result() -> None:
    # negative control: without the forced flags the partitions differ
    case = random_case(3, n_fragments=60)
    forced = forced_pairs(case, 3, share=0.3)
    octree, home = blocks_of(case, (2, 2, 2))
    plain = build_fragment_graph(case.fragment_ids, home, case.u, case.v, case.s, case.n, octree)
    result = run_hierarchy(plain, octree, THRESHOLDS)
    expected = reference_with_forced(case, forced, result.bound)
    table = segment_tables(plain.fragment_ids, result.records, [0.25])[0]
    labels = partition_labels(plain.fragment_ids, expected, merge_bound(0.25))
    assert not np.array_equal(table, labels)


def test_merge_forced_sums_parallel_edges_and_keeps_the_largest_key() -> None:
    ids = np.array([5, 3, 9], dtype=np.uint64)
    levels = np.array([0, 2, 1], dtype=np.uint8)
    edges = ClusterEdges(
        a=np.array([3, 3, 5], dtype=np.uint64),
        b=np.array([5, 9, 9], dtype=np.uint64),
        s=np.array([10, 100, 50], dtype=np.uint64),
        n=np.array([1, 2, 3], dtype=np.uint64),
        tau_hi=np.array([3, 3, 5], dtype=np.uint64),
        tau_lo=np.array([5, 9, 9], dtype=np.uint64),
    )
    futures = np.array([[7, 0], [2, 5], [9, 9]], dtype=np.uint32)
    out_ids, out_levels, out_edges, records, dropped, out_futures = merge_forced(
        ids, levels, edges, np.array([True, False, False]), futures=futures
    )
    assert out_ids.tolist() == [3, 9] and out_levels.tolist() == [2, 1]
    # the merged cluster takes the larger future bound of its parts per level
    assert out_futures is not None and out_futures.tolist() == [[7, 5], [9, 9]]
    assert out_edges.a.tolist() == [3] and out_edges.b.tolist() == [9]
    assert out_edges.s.tolist() == [150] and out_edges.n.tolist() == [5]
    assert (out_edges.tau_hi.tolist(), out_edges.tau_lo.tolist()) == ([5], [9])
    assert records.a.tolist() == [3] and records.b.tolist() == [5]
    assert records.s.tolist() == [255] and records.n.tolist() == [1]
    assert len(dropped) == 0


def test_forced_flags_must_match_the_edges() -> None:
    case = random_case(0, n_fragments=10)
    octree, home = blocks_of(case, (4, 4, 4))
    with pytest.raises(HierarchyInputError, match="forced must be a bool array"):
        build_fragment_graph(
            case.fragment_ids, home, case.u, case.v, case.s, case.n, octree, forced=[True]
        )
