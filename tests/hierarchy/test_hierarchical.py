"""Hierarchical agglomeration over an octree equals one greedy agglomeration of the whole graph.

Every check compares the merge records (as a set: clusters, S, N, tie key)
and the partitions at seven thresholds (identical labels, VOI exactly 0) with
the single-process reference of tests/hierarchy/reference.py, and checks
conservation of the contact count.
"""

from __future__ import annotations

import functools
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hierarchy.graphs import (
    THRESHOLDS,
    Case,
    assert_same_result,
    blocks_of,
    chain_case,
    check_case,
    corner_case,
    random_case,
    reference_records,
    run_case,
    spanning_case,
)
from hierarchy.reference import greedy_merge, records_of, reference_task

from blockwise.hierarchical import (
    HierarchyInputError,
    Residual,
    TaskResult,
    build_fragment_graph,
    estimate_task_memory,
    leaf_residual,
    load_task_result,
    plan_hierarchy,
    run_hierarchy,
    run_task,
    save_task_result,
    segment_tables,
)
from blockwise.kernels.mean_merge import merge_bound
from blockwise.octree import Octree

# volume 8**3 voxels: grids 4x3x4, 3x3x3, 8x4x2 and 2x2x1 blocks
BLOCK_SHAPES = [(2, 3, 2), (3, 3, 3), (1, 2, 4), (5, 4, 8)]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("block_shape", BLOCK_SHAPES)
def test_random_graphs_with_heavy_ties(seed: int, block_shape: tuple[int, int, int]) -> None:
    result = check_case(random_case(seed), block_shape)
    # the cases are not trivial: merges, dropped edges and several levels of tasks
    assert len(result.records) > 20 and len(result.dropped) > 0
    assert max(task.level for task in result.tasks) >= 1


def test_ties_decide_many_merges() -> None:
    # the quantised statistics make equal means common among the merges done
    case = random_case(0)
    result, _ = run_case(case, (2, 3, 2))
    means = {
        Fraction(int(s), int(n)) for s, n in zip(result.records.s, result.records.n, strict=True)
    }
    assert len(means) < len(result.records) / 2


@pytest.mark.parametrize("seed", range(4))
def test_long_range_edges(seed: int) -> None:
    case = random_case(seed, long_range=40)
    octree, home = blocks_of(case, (2, 2, 2))
    graph = build_fragment_graph(case.fragment_ids, home, case.u, case.v, case.s, case.n, octree)
    levels = octree.node_level(plan_hierarchy(graph, octree).edge_nodes)
    assert np.sum(levels == octree.root_level) >= 10  # edges across the whole volume
    check_case(case, (2, 2, 2))


@pytest.mark.parametrize("seed", range(4))
def test_chain_of_regions_across_many_blocks(seed: int) -> None:
    case = chain_case(seed, length=60)
    result = check_case(case, (2, 2, 3))  # 20 blocks along x, 6 levels
    assert len({int(task.node) for task in result.tasks if task.level == 0}) == 2 * 2 * 20
    # regions span several blocks: some merge records join fragments of different blocks
    _, home = blocks_of(case, (2, 2, 3))
    block_of = dict(zip(case.fragment_ids.tolist(), home.tolist(), strict=True))
    crossing = [
        block_of[a] != block_of[b] for a, b in zip(result.records.a, result.records.b, strict=True)
    ]
    assert sum(crossing) >= 5


@pytest.mark.parametrize("seed", range(3))
def test_one_region_spanning_the_volume(seed: int) -> None:
    case = spanning_case(seed, (6, 6, 6))
    result, ids = run_case(case, (2, 2, 2))
    check_case(case, (2, 2, 2))
    # every link has the same mean: the tie key orders all merges, and all
    # 216 fragments become one segment below threshold 0.2
    assert len(result.records) == ids.size - 1
    table = segment_tables(ids, result.records, [0.2])[0]
    assert np.all(table == ids.min())
    # the spanning object stays frozen up to the root
    root = result.tasks[-1]  # run last, by increasing node id
    assert root.n_clusters > 1 and root.n_records > 0


@pytest.mark.parametrize("seed", range(6))
def test_eight_block_corners(seed: int) -> None:
    case = corner_case(seed)
    _, home = blocks_of(case, (2, 2, 2))
    assert np.unique(home[:8]).size == 8  # the core fragments sit in 8 different blocks
    result = check_case(case, (2, 2, 2))
    assert result.tasks[-1].level == 1 and result.tasks[-1].n_edges >= 28


@pytest.mark.parametrize("seed", range(3))
def test_mostly_empty_blocks(seed: int) -> None:
    case = random_case(seed, n_fragments=50, volume=(12, 12, 12), occupied=(4, 5, 4))
    result = check_case(case, (2, 2, 2))
    empty = [task for task in result.tasks if task.level == 0 and task.n_clusters == 0]
    assert len(empty) > 150


@pytest.mark.parametrize("seed", range(3))
def test_invariant_to_block_size_depth_and_task_order(seed: int) -> None:
    case = random_case(seed, n_fragments=100, long_range=10)
    first, _ = run_case(case, (2, 2, 2))
    expected = records_of(first.records)
    runs = [
        run_case(case, (8, 8, 8))[0],  # one block: a single root task
        run_case(case, (3, 5, 2))[0],  # a 3x2x4 grid
        run_case(case, (2, 2, 2), n_levels=6)[0],  # two extra levels above the root
        run_case(case, (2, 2, 2), order_seed=seed)[0],  # random topological order
        run_case(case, (1, 3, 2), order_seed=seed + 10)[0],
    ]
    for result in runs:
        assert records_of(result.records) == expected  # both sorted by (a, b)
        # dropped edges depend on when their far end was done (the layout);
        # only their contact total is invariant
        assert result.dropped.total_count() == first.dropped.total_count()
    assert runs[0].tasks[0].n_edges == len(
        build_fragment_graph(
            case.fragment_ids,
            np.zeros(len(case.fragment_ids), np.int64),
            case.u,
            case.v,
            case.s,
            case.n,
            Octree((1, 1, 1)),
        ).edges
    )


@pytest.mark.parametrize("seed", range(3))
def test_orchestration_with_the_pseudocode_task(seed: int) -> None:
    # the same orchestration on the slow reference task gives the same records
    case = random_case(seed, long_range=5)
    compiled, _ = run_case(case, (2, 3, 2))
    slow, _ = run_case(case, (2, 3, 2), task_kernel=reference_task)
    assert records_of(compiled.records) == records_of(slow.records)
    assert records_of(compiled.dropped) == records_of(slow.dropped)


def test_negative_control_smaller_id_tie_break_is_caught() -> None:
    # a kernel that broke ties by cluster ids would give other records than
    # the tau tie-break; the comparison used by every test catches it
    case = random_case(0)
    result, ids = run_case(case, (2, 3, 2))
    wrong = reference_records(case, result.bound, tie_break="smaller_id")
    assert_same_result(ids, records_of(result.records), reference_records(case, result.bound))
    with pytest.raises(AssertionError):
        assert_same_result(ids, wrong, reference_records(case, result.bound))


def test_negative_control_float32_means_are_caught() -> None:
    # waterz-style float32 running means order some equal means differently
    case = spanning_case(0, (4, 4, 4))
    result, ids = run_case(case, (2, 2, 2))
    wrong = reference_records(case, result.bound, arithmetic="float32")
    with pytest.raises(AssertionError):
        assert_same_result(ids, wrong, reference_records(case, result.bound))


@pytest.mark.parametrize(
    "maker", [functools.partial(random_case, 1), functools.partial(chain_case, 1)]
)
def test_negative_control_missing_contagion_is_caught(maker: functools.partial[Case]) -> None:
    # tasks that do not freeze the partners of frozen clusters merge too early
    case = maker()
    broken = functools.partial(reference_task, freezing="no_contagion")
    result, ids = run_case(case, (2, 2, 2), task_kernel=broken)
    with pytest.raises(AssertionError):
        assert_same_result(ids, records_of(result.records), reference_records(case, result.bound))


def test_standalone_tasks_through_files(tmp_path: Path) -> None:
    # as a scheduler would run them: each task reads its children's files
    case = random_case(2, long_range=8)
    octree, home = blocks_of(case, (2, 3, 2))
    graph = build_fragment_graph(case.fragment_ids, home, case.u, case.v, case.s, case.n, octree)
    plan = plan_hierarchy(graph, octree)
    bound = merge_bound(max(THRESHOLDS))
    records = []
    for node in range(octree.num_nodes):
        level = int(octree.node_level([node])[0])
        if level == 0:
            children: list[Residual] = [leaf_residual(*plan.leaf_fragments(node))]
        else:
            children = [
                load_task_result(tmp_path / f"{int(c)}.npz").residual for c in octree.children(node)
            ]
        result = run_task(level, children, plan.seam_edges(node), bound, node=node)
        save_task_result(tmp_path / f"{node}.npz", result)
        records += records_of(load_task_result(tmp_path / f"{node}.npz").records)
    expected = greedy_merge(graph.fragment_ids, case.u, case.v, case.s, case.n, bound)
    assert_same_result(graph.fragment_ids, records, expected)
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_task_files_are_atomic_identical_and_checked(tmp_path: Path) -> None:
    case = random_case(3)
    octree, home = blocks_of(case, (4, 4, 4))
    graph = build_fragment_graph(case.fragment_ids, home, case.u, case.v, case.s, case.n, octree)
    plan = plan_hierarchy(graph, octree)
    bound = merge_bound(0.6)
    node = int(np.argmax(np.diff(plan.edge_starts)[: octree.num_blocks]))  # most inner edges
    result = run_task(
        0, [leaf_residual(*plan.leaf_fragments(node))], plan.seam_edges(node), bound, node=node
    )
    assert len(result.records) and result.residual.ids.size
    first, second = tmp_path / "a.npz", tmp_path / "b.npz"
    save_task_result(first, result)
    again = run_task(
        0, [leaf_residual(*plan.leaf_fragments(node))], plan.seam_edges(node), bound, node=node
    )
    save_task_result(second, again)
    assert first.read_bytes() == second.read_bytes()
    save_task_result(first, again)  # overwriting in place gives the same bytes
    assert first.read_bytes() == second.read_bytes()
    loaded = load_task_result(first)
    assert isinstance(loaded, TaskResult) and (loaded.node, loaded.level) == (node, 0)
    assert records_of(loaded.records) == records_of(result.records)
    assert records_of(loaded.residual.edges) == records_of(result.residual.edges)
    assert loaded.residual.ids.tolist() == result.residual.ids.tolist()
    assert loaded.residual.levels.dtype == np.uint8
    broken = tmp_path / "broken.npz"
    broken.write_bytes(first.read_bytes()[:100])
    with pytest.raises(HierarchyInputError, match=r"broken\.npz"):
        load_task_result(broken)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(HierarchyInputError, match=r"other.npz lacks the arrays"):
        load_task_result(tmp_path / "other.npz")


def test_task_stats_and_memory_estimate() -> None:
    case = random_case(4, long_range=5)
    result, _ = run_case(case, (2, 2, 2))
    assert sum(task.n_records for task in result.tasks) == len(result.records)
    assert sum(task.n_dropped for task in result.tasks) == len(result.dropped)
    root = result.tasks[-1]
    assert root.n_residual_clusters == root.n_residual_edges == 0
    # a task's input is its children's residual plus its seam edges
    by_node = {task.node: task for task in result.tasks}
    octree, _ = blocks_of(case, (2, 2, 2))
    for task in result.tasks:
        if task.level > 0:
            children = [by_node[int(c)] for c in octree.children(task.node)]
            assert task.n_clusters == sum(c.n_residual_clusters for c in children)
            assert task.n_edges >= sum(c.n_residual_edges for c in children)
    assert estimate_task_memory(10, 100) < estimate_task_memory(10, 1000)
    assert estimate_task_memory(10**6, 10**7) > 2 * 10**9


def test_segment_tables_one_pass_equals_separate_cuts() -> None:
    case = random_case(5)
    result, ids = run_case(case, (2, 2, 2))
    thresholds = [0.9, 0.1, Fraction(2, 5), 0.5]
    together = segment_tables(ids, result.records, thresholds, bound=result.bound)
    for threshold, table in zip(thresholds, together, strict=True):
        assert np.array_equal(table, segment_tables(ids, result.records, [threshold])[0])
    with pytest.raises(HierarchyInputError, match="exceed the bound"):
        segment_tables(ids, result.records, [0.95], bound=result.bound)


def test_partial_statistics_are_summed_in_either_orientation() -> None:
    octree = Octree((1, 1, 2))
    graph = build_fragment_graph(
        [7, 3, 5], [0, 1, 1], [3, 7, 5, 3], [7, 3, 7, 5], [10, 20, 5, 9], [1, 2, 1, 1], octree
    )
    assert graph.fragment_ids.tolist() == [3, 5, 7]
    assert graph.home_blocks.tolist() == [1, 1, 0]
    assert records_of(graph.edges) == [(3, 5, 9, 1, 3, 5), (3, 7, 30, 3, 3, 7), (5, 7, 5, 1, 5, 7)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([1, 1], [0, 0], [1], [2], [1], [1]), "fragment_ids must be unique, but 1 repeats"),
        (([1, 2], [0], [1], [2], [1], [1]), "one block per fragment"),
        (([1, 2], [0, 2], [1], [2], [1], [1]), r"block indices must lie in \[0, 2\)"),
        (([1, 2], [0, 1], [1], [3], [1], [1]), "edge 0 has v = 3, which is not in fragment_ids"),
        (([1, 2], [0, 1], [2], [2], [1], [1]), "edge 0 joins fragment 2 to itself"),
        (([1, 2], [0, 1], [1], [2], [1], [0]), "has N = 0"),
        (([1, 2], [0, 1], [1], [2], [300], [1]), r"S = 300 > 255 N = 255"),
        (([1, 2], [0, 1], [1], [2], [1.5], [1]), "s must be a 1D integer array"),
        (([1, 2], [0, 1], [1], [-2], [1], [1]), "v must be non-negative"),
        (([1, 2], [0, 1], [1], [2], [1, 1], [1]), r"s must have one entry per edge \(1\)"),
    ],
)
def test_build_fragment_graph_rejects_bad_input(
    args: tuple[list[float], ...], message: str
) -> None:
    with pytest.raises((HierarchyInputError, ValueError), match=message):
        build_fragment_graph(*args, Octree((1, 1, 2)))


def test_run_hierarchy_rejects_bad_thresholds() -> None:
    case = random_case(0, n_fragments=10)
    octree, home = blocks_of(case, (4, 4, 4))
    graph = build_fragment_graph(case.fragment_ids, home, case.u, case.v, case.s, case.n, octree)
    with pytest.raises(HierarchyInputError, match="at least one threshold"):
        run_hierarchy(graph, octree, [])
    with pytest.raises(ValueError, match="finite"):
        run_hierarchy(graph, octree, [float("inf")])
