"""Future bounds: open clusters merge where no edge still to come can be better.

A task at level ``L`` sees every edge of a cluster except the fragment edges
whose LCA lies above ``L``. Any edge the cluster later gets from outside is a
sum of such fragment edges, so its mean is at most their best mean (edges
scoring at or above the bound stay there when summed, and never decide a
merge below it). An open cluster may therefore merge along its best edge when
that edge's mean strictly exceeds the best mean of its (and its partner's)
future fragment edges below the bound. These tests check the bounds against
brute force, the kernel against the pseudocode reference, the records of the
whole hierarchy against the single-process greedy merge (unchanged by the
rule, while the residuals shrink), and two broken variants that must be caught.
"""

from __future__ import annotations

import functools
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hierarchy.graphs import (
    THRESHOLDS,
    assert_same_result,
    blocks_of,
    chain_case,
    check_case,
    random_case,
    reference_records,
    run_case,
    spanning_case,
)
from hierarchy.reference import greedy_merge, records_of, reference_task
from hierarchy.test_mean_merge_kernel import assert_same_output, random_task

from blockwise.hierarchical import (
    HierarchyInputError,
    Residual,
    build_fragment_graph,
    fragment_futures,
    leaf_residual,
    load_task_result,
    plan_hierarchy,
    run_task,
    save_task_result,
)
from blockwise.kernels.mean_merge import (
    UNKNOWN_FUTURE,
    ClusterEdges,
    MeanMergeInputError,
    TaskOutput,
    future_bound_codes,
    merge_bound,
    merge_task,
)


def code_of(s: int, n: int) -> int:
    """The future-bound code of one edge, from its definition: 1 + ceil(2**24 s / n)."""
    return -(-(s * 2**24) // n) + 1


def test_future_bound_codes_are_exact_ceilings() -> None:
    rng = np.random.default_rng(0)
    n = rng.integers(1, 10**6, 500).astype(np.uint64)
    s = (rng.random(500) * 255 * n).astype(np.uint64)
    # also huge statistics, which take the exact Python-integer path
    n = np.r_[n, np.uint64(2**50), np.uint64(3)]
    s = np.r_[s, np.uint64(255 * 2**50 - 7), np.uint64(765)]
    codes = future_bound_codes(s, n)
    assert codes.dtype == np.uint32
    assert codes.tolist() == [code_of(int(a), int(b)) for a, b in zip(s, n, strict=True)]
    # the largest code stays below UNKNOWN_FUTURE
    assert int(codes.max()) <= 255 * 2**24 + 1 < UNKNOWN_FUTURE
    with pytest.raises(MeanMergeInputError, match="s <= 255 n"):
        future_bound_codes(np.array([256], np.uint64), np.array([1], np.uint64))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("block_shape", [(2, 3, 2), (1, 2, 4)])
def test_fragment_futures_match_brute_force(seed: int, block_shape: tuple[int, int, int]) -> None:
    case = random_case(seed, long_range=6)
    octree, home = blocks_of(case, block_shape)
    graph = build_fragment_graph(case.fragment_ids, home, case.u, case.v, case.s, case.n, octree)
    plan = plan_hierarchy(graph, octree)
    bound = merge_bound(0.6)
    futures = fragment_futures(plan, bound)
    ids = graph.fragment_ids.tolist()
    index = {f: k for k, f in enumerate(ids)}
    expected = np.zeros((len(ids), octree.n_levels), dtype=np.int64)
    edges = graph.edges
    for k in range(len(edges)):
        s, n = int(edges.s[k]), int(edges.n[k])
        if not Fraction(255 * n - s, 255 * n) < bound:
            continue
        blocks = graph.home_blocks[[index[int(edges.a[k])], index[int(edges.b[k])]]]
        lca = int(octree.lca_level(blocks[:1], blocks[1:])[0])
        for end in (int(edges.a[k]), int(edges.b[k])):
            for level in range(lca):  # levels below the LCA do not see the edge
                expected[index[end], level] = max(expected[index[end], level], code_of(s, n))
    assert futures.tolist() == expected.tolist()
    assert futures[:, -1].max() == 0  # nothing is outside the root
    # a fragment's level lambda is the first level from which it expects nothing
    assert np.all(futures[np.arange(len(ids)), plan.fragment_levels] == 0)


def two_open_clusters(future: int) -> tuple[TaskOutput, TaskOutput]:
    """Clusters 1, 2 (open), 3 (not open); edges 1-2 of mean 200 and 2-3 of mean 100."""
    ids = np.array([1, 2, 3], dtype=np.uint64)
    levels = np.array([1, 1, 0], dtype=np.uint8)
    edges = ClusterEdges(
        a=np.array([1, 2], dtype=np.uint64),
        b=np.array([2, 3], dtype=np.uint64),
        s=np.array([400, 300], dtype=np.uint64),
        n=np.array([2, 3], dtype=np.uint64),
        tau_hi=np.array([1, 2], dtype=np.uint64),
        tau_lo=np.array([2, 3], dtype=np.uint64),
    )
    futures = np.array([[future, 0], [0, 0], [0, 0]], dtype=np.uint32)
    bound = merge_bound(0.9)
    got = merge_task(ids, levels, 0, edges, bound, futures)
    return got, reference_task(ids, levels, 0, edges, bound, futures)


@pytest.mark.parametrize(
    ("future", "merges"),
    [
        (0, 2),  # nothing can come: 1-2 and then 12-3 merge
        (code_of(99, 1), 2),  # what can come is worse than both edges
        (code_of(199, 1), 1),  # better than 12-3 (mean 100): 1-2 merges, 12-3 is blocked
        (code_of(200, 1), 0),  # an equal mean could win on its tie key: blocked
        (code_of(201, 1), 0),
        (UNKNOWN_FUTURE, 0),  # the plain rule: open clusters never merge
    ],
)
def test_open_cluster_merges_only_above_its_future_bound(future: int, merges: int) -> None:
    got, expected = two_open_clusters(future)
    assert_same_output(got, expected)
    assert len(got.records) == merges
    # a merged cluster stays open and keeps the larger bound of its parts per
    # level; the partner of a blocked cluster is blocked too (contagion)
    residual = {2: [1], 1: [1, 3], 0: [1, 2, 3]}[merges]
    assert got.residual_ids.tolist() == residual
    assert got.residual_futures.tolist() == [[future, 0] if c == 1 else [0, 0] for c in residual]


def random_futures(
    seed: int, ids: np.ndarray, levels: np.ndarray, level: int, width: int = 6
) -> np.ndarray:
    """Future bounds for a random task: 0 where a cluster is not open, else a mix of codes."""
    rng = np.random.default_rng(seed + 1000)
    means = rng.choice([0, 51, 102, 153, 204, 230, 255], size=(ids.size, width))
    futures = (means.astype(np.int64) << 24) + 1
    futures[rng.random((ids.size, width)) < 0.2] = UNKNOWN_FUTURE
    futures[rng.random((ids.size, width)) < 0.2] = 0
    futures[levels <= level, level:] = 0
    return np.ascontiguousarray(futures, dtype=np.uint32)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("threshold", [0.3, 0.7, 1.0])
def test_kernel_with_futures_matches_pseudocode(seed: int, threshold: float) -> None:
    ids, levels, edges = random_task(seed)
    futures = random_futures(seed, ids, levels, 2)
    bound = merge_bound(threshold)
    got = merge_task(ids, levels, 2, edges, bound, futures)
    expected = reference_task(ids, levels, 2, edges, bound, futures)
    assert_same_output(got, expected)
    assert got.residual_futures.tolist() == expected.residual_futures.tolist()


def test_kernel_rejects_bad_futures() -> None:
    ids, levels, edges = random_task(0)
    bound = merge_bound(0.5)
    with pytest.raises(MeanMergeInputError, match="one row per cluster"):
        merge_task(ids, levels, 2, edges, bound, np.zeros((ids.size - 1, 3), np.uint32))
    with pytest.raises(MeanMergeInputError, match="uint32"):
        merge_task(ids, levels, 2, edges, bound, np.zeros((ids.size, 3), np.int64))


CASES = [
    functools.partial(random_case, 0, long_range=5),
    functools.partial(random_case, 3),
    functools.partial(spanning_case, 1, (6, 6, 6)),
    functools.partial(chain_case, 2),
]


@pytest.mark.parametrize("make", CASES)
@pytest.mark.parametrize("block_shape", [(2, 2, 2), (2, 3, 2)])
def test_futures_keep_the_records_and_shrink_the_residuals(
    make: functools.partial[object], block_shape: tuple[int, int, int]
) -> None:
    case = make()
    with_futures = check_case(case, block_shape, use_futures=True)
    plain = check_case(case, block_shape, use_futures=False)
    assert records_of(with_futures.records) == records_of(plain.records)
    handed_up = sum(task.n_residual_edges for task in with_futures.tasks)
    handed_up_plain = sum(task.n_residual_edges for task in plain.tasks)
    assert handed_up <= handed_up_plain
    # no task is bigger with future bounds
    for task, task_plain in zip(with_futures.tasks, plain.tasks, strict=True):
        assert task.node == task_plain.node and task.n_edges <= task_plain.n_edges


@pytest.mark.parametrize("make", [CASES[0], CASES[3]])
def test_futures_shrink_the_residuals(make: functools.partial[object]) -> None:
    # random graphs and chains: open clusters often have a best edge inside
    # their task (in a region of equal affinities, ties block them instead)
    case = make()
    with_futures, _ = run_case(case, (2, 2, 2), use_futures=True)
    plain, _ = run_case(case, (2, 2, 2), use_futures=False)
    handed_up = sum(task.n_residual_edges for task in with_futures.tasks)
    handed_up_plain = sum(task.n_residual_edges for task in plain.tasks)
    assert handed_up < 0.8 * handed_up_plain, (handed_up, handed_up_plain)


def shifted_futures_kernel(
    ids: np.ndarray,
    levels: np.ndarray,
    level: int,
    edges: list[ClusterEdges],
    bound: Fraction,
    futures: np.ndarray | None,
) -> TaskOutput:
    """Broken: a task ignores the edges whose LCA is its parent (bounds one level off)."""
    assert futures is not None
    shifted = futures.copy()
    if level + 1 < futures.shape[1]:
        shifted[:, level] = futures[:, level + 1]
    return merge_task(ids, levels, level, edges, bound, np.ascontiguousarray(shifted))


def ignored_futures_kernel(
    ids: np.ndarray,
    levels: np.ndarray,
    level: int,
    edges: list[ClusterEdges],
    bound: Fraction,
    futures: np.ndarray | None,
) -> TaskOutput:
    """Broken: a task assumes open clusters receive nothing below the bound."""
    assert futures is not None
    return merge_task(ids, levels, level, edges, bound, np.zeros_like(futures))


@pytest.mark.parametrize("kernel", [shifted_futures_kernel, ignored_futures_kernel])
def test_negative_control_wrong_future_bounds_are_caught(kernel: object) -> None:
    # the rule applied where it is not valid merges open clusters too early
    caught = 0
    for make in CASES:
        case = make()
        result, ids = run_case(case, (2, 2, 2), task_kernel=kernel)
        try:
            assert_same_result(
                ids, records_of(result.records), reference_records(case, result.bound)
            )
        except AssertionError:
            caught += 1
    assert caught == len(CASES), caught


def test_futures_and_aliases_through_files(tmp_path: Path) -> None:
    # as a scheduler would run the tasks, with future bounds: open clusters
    # merged below are named by seam edges further up through aliases
    case = random_case(2, long_range=8)
    octree, home = blocks_of(case, (2, 3, 2))
    graph = build_fragment_graph(case.fragment_ids, home, case.u, case.v, case.s, case.n, octree)
    plan = plan_hierarchy(graph, octree)
    bound = merge_bound(max(THRESHOLDS))
    futures = fragment_futures(plan, bound)
    records = []
    n_aliases = 0
    for node in range(octree.num_nodes):
        level = int(octree.node_level([node])[0])
        if level == 0:
            children: list[Residual] = [
                leaf_residual(*plan.leaf_fragments(node), futures[plan.leaf_index(node)])
            ]
        else:
            children = [
                load_task_result(tmp_path / f"{int(c)}.npz").residual for c in octree.children(node)
            ]
        result = run_task(level, children, plan.seam_edges(node), bound, node=node)
        save_task_result(tmp_path / f"{node}.npz", result)
        loaded = load_task_result(tmp_path / f"{node}.npz")
        assert loaded.residual.futures is not None
        assert loaded.residual.futures.tolist() == result.residual.futures.tolist()  # type: ignore[union-attr]
        n_aliases += loaded.residual.alias_from.size
        records += records_of(loaded.records)
    expected = greedy_merge(graph.fragment_ids, case.u, case.v, case.s, case.n, bound)
    assert_same_result(graph.fragment_ids, records, expected)
    assert n_aliases > 0  # open clusters did merge and were named by aliases


def test_children_need_futures_all_or_none() -> None:
    ids = np.array([1, 2], dtype=np.uint64)
    levels = np.array([1, 1], dtype=np.uint8)
    with_futures = leaf_residual(ids, levels, np.zeros((2, 3), np.uint32))
    without = leaf_residual(ids + 10, levels)
    with pytest.raises(HierarchyInputError, match="every child residual"):
        run_task(1, [with_futures, without], ClusterEdges.empty(), merge_bound(0.5))
