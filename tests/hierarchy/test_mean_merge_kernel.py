"""The compiled mean-merge task against the pseudocode reference; exact bounds; input checks."""

from __future__ import annotations

import importlib.machinery
import itertools
from fractions import Fraction

import numpy as np
import pytest
from hierarchy.graphs import LEVELS, unique_ids
from hierarchy.reference import greedy_merge, records_of, reference_task

from blockwise.kernels import _mean_merge
from blockwise.kernels.mean_merge import (
    ClusterEdges,
    MeanMergeInputError,
    TaskOutput,
    fragment_edge_keys,
    merge_bound,
    merge_task,
    scores,
    scores_below,
)


def test_compiled_kernel_is_loaded() -> None:
    assert _mean_merge.__file__ is not None
    assert _mean_merge.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    assert merge_task.__module__ == "blockwise.kernels.mean_merge"


def random_task(
    seed: int, n_clusters: int = 40, n_edges: int = 120, level: int = 2
) -> tuple[np.ndarray, np.ndarray, ClusterEdges]:
    """Clusters with levels around ``level`` and random edges, some pairs repeated, heavy ties."""
    rng = np.random.default_rng(seed)
    ids = unique_ids(rng, n_clusters)
    levels = rng.choice([0, level, level + 1, level + 3], size=n_clusters, p=[0.5, 0.3, 0.15, 0.05])
    i = rng.integers(0, n_clusters, n_edges)
    j = (i + rng.integers(1, n_clusters, n_edges)) % n_clusters
    a, b = ids[i], ids[j]
    n = rng.integers(1, 5, n_edges).astype(np.uint64)
    s = LEVELS[rng.integers(0, LEVELS.size, n_edges)] * n
    # unique tie keys, as fragment-edge keys or maxima of disjoint key sets are
    keys = unique_ids(rng, 2 * n_edges)
    edges = ClusterEdges(a, b, s, n, keys[:n_edges].copy(), keys[n_edges:].copy())
    return ids, levels.astype(np.uint8), edges


def assert_same_output(got: TaskOutput, expected: TaskOutput) -> None:
    assert records_of(got.records) == records_of(expected.records)  # same order, too
    assert got.residual_ids.tolist() == expected.residual_ids.tolist()
    assert got.residual_levels.tolist() == expected.residual_levels.tolist()
    assert records_of(got.residual_edges) == records_of(expected.residual_edges)
    assert sorted(records_of(got.dropped)) == sorted(records_of(expected.dropped))


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("threshold", [0.3, Fraction(2, 5), 0.7, 1.0])
def test_task_matches_pseudocode_reference(seed: int, threshold: float | Fraction) -> None:
    ids, levels, edges = random_task(seed)
    bound = merge_bound(threshold)
    got = merge_task(ids, levels, 2, edges, bound)
    assert_same_output(got, reference_task(ids, levels, 2, edges, bound))
    # conservation of contacts: merged + residual + dropped = input
    total = got.records.total_count() + got.residual_edges.total_count()
    assert total + got.dropped.total_count() == edges.total_count()
    # merge records name the merged cluster by the smaller id
    assert np.all(got.records.a < got.records.b)


@pytest.mark.parametrize("seed", range(6))
def test_root_task_equals_global_greedy(seed: int) -> None:
    # nothing frozen: one task is the whole greedy agglomeration
    ids, _, edges = random_task(seed, n_clusters=60, n_edges=200)
    u, v = edges.a, edges.b
    tau_hi, tau_lo = fragment_edge_keys(u, v)
    fragment_edges = ClusterEdges(u, v, edges.s, edges.n, tau_hi, tau_lo)
    bound = merge_bound(0.8)
    got = merge_task(ids, np.zeros(ids.size, np.uint8), 0, fragment_edges, bound)
    expected = greedy_merge(ids, u, v, edges.s, edges.n, bound)
    assert records_of(got.records) == expected
    assert got.residual_ids.size == 0 and len(got.residual_edges) == 0
    # the greedy's heights never decrease
    heights = scores(got.records.s, got.records.n)
    assert np.all(np.diff(heights) >= 0)


def test_equal_means_are_equal_exactly_and_ties_go_to_the_larger_key() -> None:
    # means 1/3 as (85, 1) and (170, 2); float32 would round 170/510 and 85/255
    # the same here, but (1, 3) vs (0, 1) must not be confused: compare exactly
    ids = np.array([1, 2, 3, 4], dtype=np.uint64)
    a = np.array([1, 3, 1], dtype=np.uint64)
    b = np.array([2, 4, 3], dtype=np.uint64)
    s = np.array([85, 170, 84], dtype=np.uint64)
    n = np.array([1, 2, 1], dtype=np.uint64)
    tau_hi = np.array([5, 7, 9], dtype=np.uint64)
    tau_lo = np.zeros(3, dtype=np.uint64)
    out = merge_task(
        ids, np.zeros(4, np.uint8), 0, ClusterEdges(a, b, s, n, tau_hi, tau_lo), Fraction(2)
    )
    # (3, 4) has the larger key among the two equal means, then (1, 2), then (1, 3)
    # (now the edge between clusters 1 and 3, summed with nothing)
    assert records_of(out.records) == [
        (3, 4, 170, 2, 7, 0),
        (1, 2, 85, 1, 5, 0),
        (1, 3, 84, 1, 9, 0),
    ]


def test_scores_below_is_exact_at_the_bound() -> None:
    rng = np.random.default_rng(3)
    n = rng.integers(1, 2**40, 2000).astype(np.uint64)
    s = (rng.random(2000) * 255 * n.astype(np.float64)).astype(np.uint64)
    s[:5] = np.array([0, 255, 153, 102, 255 * 7], dtype=np.uint64)
    n[:5] = np.array([1, 1, 1, 1, 7], dtype=np.uint64)
    for threshold in [0.0, 0.3, Fraction(2, 5), 0.6, 1.0, Fraction(1, 3), 0.9999]:
        bound = merge_bound(threshold)
        expected = [
            Fraction(255 * int(y) - int(x), 255 * int(y)) < bound for x, y in zip(s, n, strict=True)
        ]
        assert scores_below(s, n, bound).tolist() == expected


def test_merge_bound_is_the_exact_value() -> None:
    assert merge_bound(0.5) == Fraction(1, 2)
    assert merge_bound(0.1) == Fraction(0.1)  # the binary value, not 1/10
    assert merge_bound(Fraction(2, 5)) == Fraction(2, 5)
    assert merge_bound(-1.0) == 0
    assert merge_bound(7) == 2
    with pytest.raises(MeanMergeInputError, match="denominator"):
        merge_bound(1e-4)
    with pytest.raises(MeanMergeInputError, match="finite"):
        merge_bound(float("nan"))
    with pytest.raises(MeanMergeInputError, match="finite float or a Fraction"):
        merge_bound("0.5")  # type: ignore[arg-type]


def test_empty_task() -> None:
    empty = np.zeros(0, np.uint64)
    out = merge_task(empty, np.zeros(0, np.uint8), 0, ClusterEdges.empty(), Fraction(1, 2))
    assert len(out.records) == len(out.dropped) == len(out.residual_edges) == 0
    # clusters without edges: frozen ones stay, others are done
    ids = np.array([5, 9], dtype=np.uint64)
    out = merge_task(ids, np.array([0, 3], np.uint8), 1, ClusterEdges.empty(), Fraction(1, 2))
    assert out.residual_ids.tolist() == [9] and out.residual_levels.tolist() == [3]


def good_task() -> tuple[np.ndarray, np.ndarray, ClusterEdges]:
    ids = np.array([1, 2, 3], dtype=np.uint64)
    levels = np.zeros(3, np.uint8)
    one = np.ones(2, dtype=np.uint64)
    edges = ClusterEdges(
        np.array([1, 2], np.uint64),
        np.array([2, 3], np.uint64),
        one * 200,
        one.copy(),
        one * 7,
        one * 8,
    )
    return ids, levels, edges


def with_field(edges: ClusterEdges, **changes: object) -> ClusterEdges:
    arrays = edges.arrays()
    arrays.update(changes)  # type: ignore[arg-type]
    return ClusterEdges(**arrays)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"a": np.array([1], np.uint64)}, r"edges.a .*|edges.b must have 1 entries"),
        ({"n": np.array([1, 1, 1], np.uint64)}, "edges.n must have 2 entries"),
        ({"s": np.array([200, 200], np.int64)}, "edges.s must be a 1D array of uint64"),
        ({"s": np.array([200, 0, 200, 0], np.uint64)[::2]}, "edges.s must be C-contiguous"),
        ({"tau_lo": [8, 8]}, "edges.tau_lo must be a numpy array"),
        ({"b": np.array([2, 4], np.uint64)}, "edge 1 has b = 4, which is not a cluster id"),
        ({"b": np.array([1, 3], np.uint64)}, "edge 0 joins cluster 1 to itself"),
        ({"n": np.array([1, 0], np.uint64)}, "edge 1 has N = 0"),
        ({"s": np.array([200, 256], np.uint64)}, r"edge 1 has S = 256 > 255 N = 255"),
    ],
)
def test_rejects_bad_edges(change: dict[str, object], message: str) -> None:
    ids, levels, edges = good_task()
    with pytest.raises(MeanMergeInputError, match=message):
        merge_task(ids, levels, 0, with_field(edges, **change), Fraction(1, 2))


def test_rejects_bad_clusters_level_and_bound() -> None:
    ids, levels, edges = good_task()
    with pytest.raises(MeanMergeInputError, match="levels must have 3 entries"):
        merge_task(ids, levels[:2], 0, edges, Fraction(1, 2))
    with pytest.raises(MeanMergeInputError, match="levels must be a 1D array of uint8"):
        merge_task(ids, levels.astype(np.int32), 0, edges, Fraction(1, 2))
    with pytest.raises(MeanMergeInputError, match="ids must be a 1D array of uint64"):
        merge_task(ids.reshape(1, 3), levels, 0, edges, Fraction(1, 2))
    with pytest.raises(MeanMergeInputError, match="cluster ids must be unique, but 2"):
        merge_task(np.array([1, 2, 2], np.uint64), levels, 0, edges, Fraction(1, 2))
    with pytest.raises(MeanMergeInputError, match=r"level must be an integer in 0\.\.255"):
        merge_task(ids, levels, 256, edges, Fraction(1, 2))
    with pytest.raises(MeanMergeInputError, match="bound must be a Fraction"):
        merge_task(ids, levels, 0, edges, 0.5)  # type: ignore[arg-type]
    with pytest.raises(MeanMergeInputError, match="edges must be a ClusterEdges"):
        merge_task(ids, levels, 0, (1, 2), Fraction(1, 2))  # type: ignore[arg-type]
    with pytest.raises(MeanMergeInputError, match=r"s must be <= 255 n"):
        scores_below(np.array([300], np.uint64), np.array([1], np.uint64), Fraction(1, 2))


def test_total_count_overflow_is_refused() -> None:
    ids, levels, edges = good_task()
    big = np.array([2**55, 2**55], dtype=np.uint64)
    with pytest.raises(OverflowError, match="2\\^56"):
        merge_task(ids, levels, 0, with_field(edges, n=big), Fraction(1, 2))


@pytest.mark.parametrize("seed", range(4))
def test_edge_parts_equal_their_concatenation(seed: int) -> None:
    # a task reads its children's residuals as parts, without concatenating
    # them; parallel edges in different parts are summed all the same
    ids, levels, edges = random_task(seed)
    cuts = [0, 10, 10, 57, len(edges)]  # one part is empty
    parts = [edges.take(slice(a, b)) for a, b in itertools.pairwise(cuts)]
    bound = Fraction(7, 10)
    got = merge_task(ids, levels, 2, parts, bound)
    assert_same_output(got, merge_task(ids, levels, 2, edges, bound))
    assert_same_output(got, reference_task(ids, levels, 2, edges, bound))


def test_edge_parts_are_checked() -> None:
    ids, levels, edges = good_task()
    bad = with_field(edges, s=np.array([200, 200], np.int64))
    with pytest.raises(MeanMergeInputError, match=r"edges\[1\]\.s must be a 1D array of uint64"):
        merge_task(ids, levels, 0, [edges, bad], Fraction(1, 2))
    # messages count edges over all parts
    zero_n = with_field(edges, n=np.array([1, 0], np.uint64))
    with pytest.raises(MeanMergeInputError, match="edge 3 has N = 0"):
        merge_task(ids, levels, 0, [edges, zero_n], Fraction(1, 2))
    with pytest.raises(MeanMergeInputError, match="part 1 is a tuple"):
        merge_task(ids, levels, 0, [edges, (1, 2)], Fraction(1, 2))  # type: ignore[list-item]
