"""Seeded region graphs laid out in a volume, and the comparison the hierarchy tests share.

A :class:`Case` places every fragment at a voxel position of a volume, so the
same fragments and edges can be cut into blocks of any shape
(:func:`blocks_of`), which is how block-size invariance is tested.
Statistics are quantised (``S = m N`` with few affinity levels ``m``) so that
equal means are common and the tie key decides many merges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from hierarchy.reference import Record, greedy_merge, partition_labels, records_of

from blockwise.hierarchical import (
    HierarchyResult,
    TaskKernel,
    build_fragment_graph,
    run_hierarchy,
    segment_tables,
)
from blockwise.kernels.mean_merge import ClusterEdges, merge_bound, merge_task
from blockwise.octree import Octree

#: Thresholds used throughout: plain floats and exact fractions that equal
#: quantised scores (1 - 153/255 = 2/5), so "below" is tested at equality.
THRESHOLDS: list[float | Fraction] = [0.1, 0.25, Fraction(2, 5), 0.5, 0.6, 0.75, 0.9]

#: Affinity levels (uint8) of the quantised statistics: few, so means tie often.
LEVELS = np.array([0, 25, 51, 102, 153, 204, 230, 255], dtype=np.uint64)


@dataclass(frozen=True)
class Case:
    """Fragments at voxel positions and their edges (partial statistics allowed)."""

    fragment_ids: np.ndarray
    positions: np.ndarray
    volume: tuple[int, int, int]
    u: np.ndarray
    v: np.ndarray
    s: np.ndarray
    n: np.ndarray


def blocks_of(
    case: Case, block_shape: tuple[int, int, int], n_levels: int | None = None
) -> tuple[Octree, np.ndarray]:
    """The octree of ``block_shape`` blocks over the case's volume and each fragment's block."""
    grid = tuple(math.ceil(d / b) for d, b in zip(case.volume, block_shape, strict=True))
    octree = Octree(grid, n_levels)
    coords = case.positions // np.asarray(block_shape)
    return octree, octree.block_index(coords)


def unique_ids(rng: np.random.Generator, count: int) -> np.ndarray:
    """Distinct uint64 ids, about half above 2**63 (unsigned handling matters)."""
    ids: set[int] = set()
    while len(ids) < count:
        high = bool(rng.integers(2))
        value = int(rng.integers(1, 2**62)) + (2**63 if high else 0)
        ids.add(value)
    out = np.array(sorted(ids), dtype=np.uint64)
    return out[rng.permutation(count)]


def quantised_statistics(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``(S, N)`` with ``S = m N`` for an affinity level m of :data:`LEVELS`, N in 1..4."""
    n = rng.integers(1, 5, count).astype(np.uint64)
    m = LEVELS[rng.integers(0, LEVELS.size, count)]
    return m * n, n


def split_partials(
    rng: np.random.Generator, u: np.ndarray, v: np.ndarray, s: np.ndarray, n: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Split some edges' statistics into two partial rows (one reversed), shuffled."""
    split = (n >= 2) & (rng.random(n.size) < 0.3)
    n_first = np.where(split, n // 2, n)
    s_first = np.where(split, np.minimum(s, n_first * np.uint64(255)), s)
    rows_u = np.concatenate([u, v[split]])
    rows_v = np.concatenate([v, u[split]])
    rows_s = np.concatenate([s_first, (s - s_first)[split]])
    rows_n = np.concatenate([n_first, (n - n_first)[split]])
    order = rng.permutation(rows_u.size)
    return rows_u[order], rows_v[order], rows_s[order], rows_n[order]


def random_case(
    seed: int,
    *,
    n_fragments: int = 80,
    volume: tuple[int, int, int] = (8, 8, 8),
    neighbours: int = 3,
    long_range: int = 0,
    occupied: tuple[int, int, int] | None = None,
) -> Case:
    """Fragments at random distinct voxels, each joined to its nearest few (a RAG-like graph).

    Args:
        seed: the random seed.
        n_fragments: number of fragments.
        volume: the volume's shape in voxels.
        neighbours: edges from each fragment to this many nearest others.
        long_range: extra edges between random fragment pairs, any distance.
        occupied: if given, fragments lie only in the corner box of this
            shape, leaving the rest of the volume (and its blocks) empty.
    """
    rng = np.random.default_rng(seed)
    box = occupied if occupied is not None else volume
    cells = rng.choice(int(np.prod(box)), size=n_fragments, replace=False)
    positions = np.stack(np.unravel_index(cells, box), axis=1).astype(np.int64)
    distance = np.abs(positions[:, None, :] - positions[None, :, :]).sum(axis=2)
    distance = distance + rng.random(distance.shape) * 0.5
    np.fill_diagonal(distance, np.inf)
    nearest = np.argsort(distance, axis=1)[:, :neighbours]
    pairs = {(min(i, int(j)), max(i, int(j))) for i in range(n_fragments) for j in nearest[i]}
    while long_range > 0:
        i, j = (int(x) for x in rng.choice(n_fragments, size=2, replace=False))
        if (min(i, j), max(i, j)) not in pairs:
            pairs.add((min(i, j), max(i, j)))
            long_range -= 1
    pair_array = np.array(sorted(pairs), dtype=np.int64)
    ids = unique_ids(rng, n_fragments)
    s, n = quantised_statistics(rng, len(pair_array))
    u, v, s, n = split_partials(rng, ids[pair_array[:, 0]], ids[pair_array[:, 1]], s, n)
    return Case(ids, positions, volume, u, v, s, n)


def chain_case(seed: int, length: int = 60) -> Case:
    """A chain of fragments along x through many blocks; regions of a few links each."""
    rng = np.random.default_rng(seed)
    positions = np.stack(
        [np.full(length, 1), np.full(length, 2), np.arange(length)], axis=1
    ).astype(np.int64)
    ids = unique_ids(rng, length)
    index = np.arange(length - 1)
    inside = rng.random(length - 1) < 0.75
    n = rng.integers(1, 4, length - 1).astype(np.uint64)
    m = np.where(
        inside, LEVELS[rng.integers(4, 8, length - 1)], LEVELS[rng.integers(0, 4, length - 1)]
    )
    u, v, s, n = split_partials(rng, ids[index], ids[index + 1], m * n, n)
    return Case(ids, positions, (4, 4, length), u, v, s, n)


def spanning_case(seed: int, shape: tuple[int, int, int] = (6, 6, 6)) -> Case:
    """One fragment per voxel of a lattice, all lattice links of one high affinity: one region."""
    rng = np.random.default_rng(seed)
    count = int(np.prod(shape))
    positions = np.stack(np.unravel_index(np.arange(count), shape), axis=1).astype(np.int64)
    grid = np.arange(count).reshape(shape)
    pairs = np.concatenate(
        [
            np.stack([grid[:-1].ravel(), grid[1:].ravel()], axis=1),
            np.stack([grid[:, :-1].ravel(), grid[:, 1:].ravel()], axis=1),
            np.stack([grid[:, :, :-1].ravel(), grid[:, :, 1:].ravel()], axis=1),
        ]
    )
    ids = unique_ids(rng, count)
    n = np.full(len(pairs), 2, dtype=np.uint64)
    s = n * np.uint64(230)
    u, v, s, n = split_partials(rng, ids[pairs[:, 0]], ids[pairs[:, 1]], s, n)
    return Case(ids, positions, shape, u, v, s, n)


def corner_case(seed: int) -> Case:
    """Fragments on the 2x2x2 voxels around the point where 8 blocks of 2**3 meet, plus a ring."""
    rng = np.random.default_rng(seed)
    core = np.stack(np.unravel_index(np.arange(8), (2, 2, 2)), axis=1) + 1
    ring = np.array([[0, 1, 1], [3, 2, 2], [1, 0, 2], [2, 3, 1], [1, 2, 0], [2, 1, 3]])
    positions = np.concatenate([core, ring]).astype(np.int64)
    count = len(positions)
    pairs = [(i, j) for i in range(8) for j in range(i + 1, 8)]
    pairs += [(8 + k, int(rng.integers(8))) for k in range(len(ring))]
    pair_array = np.array(pairs, dtype=np.int64)
    ids = unique_ids(rng, count)
    s, n = quantised_statistics(rng, len(pair_array))
    u, v, s, n = split_partials(rng, ids[pair_array[:, 0]], ids[pair_array[:, 1]], s, n)
    return Case(ids, positions, (4, 4, 4), u, v, s, n)


def reference_records(case: Case, bound: Fraction, **variant: str) -> list[Record]:
    """The single-process greedy records of a case (optionally a broken variant)."""
    return greedy_merge(case.fragment_ids, case.u, case.v, case.s, case.n, bound, **variant)  # type: ignore[arg-type]


def run_case(
    case: Case,
    block_shape: tuple[int, int, int],
    *,
    thresholds: list[float | Fraction] = THRESHOLDS,
    n_levels: int | None = None,
    order_seed: int | None = None,
    task_kernel: TaskKernel = merge_task,
    use_futures: bool = True,
) -> tuple[HierarchyResult, np.ndarray]:
    """Run the hierarchy on a case cut into ``block_shape`` blocks; also return the sorted ids."""
    octree, home = blocks_of(case, block_shape, n_levels)
    graph = build_fragment_graph(case.fragment_ids, home, case.u, case.v, case.s, case.n, octree)
    result = run_hierarchy(
        graph,
        octree,
        thresholds,
        order_seed=order_seed,
        task_kernel=task_kernel,
        use_futures=use_futures,
    )
    return result, graph.fragment_ids


def voi(a: np.ndarray, b: np.ndarray) -> float:
    """Variation of information (split + merge, bits) between two labellings of the same items."""
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    joint = np.zeros((ia.max() + 1, ib.max() + 1))
    np.add.at(joint, (ia, ib), 1.0)
    p = joint / joint.sum()
    pa, pb = p.sum(axis=1), p.sum(axis=0)
    rows, cols = np.nonzero(p)
    # conditional entropies H(a|b) + H(b|a); exactly 0 for identical partitions
    split = -float((p[rows, cols] * np.log2(p[rows, cols] / pb[cols])).sum())
    merge = -float((p[rows, cols] * np.log2(p[rows, cols] / pa[rows])).sum())
    return split + merge


def assert_same_result(
    fragment_ids: np.ndarray,
    records: list[Record],
    expected: list[Record],
    thresholds: list[float | Fraction] = THRESHOLDS,
) -> None:
    """Assert identical merge records (as sets) and identical partitions at every threshold.

    Partitions come from the library's one-pass :func:`segment_tables` on
    ``records`` and from the reference's own union-find on ``expected``;
    identical canonical labels mean a VOI of exactly 0, also checked.
    """
    assert sorted(records) == sorted(expected), _record_difference(records, expected)
    ids = np.sort(np.asarray(fragment_ids, dtype=np.uint64))
    columns = list(zip(*records, strict=True)) if records else [()] * 6
    edges = ClusterEdges(*(np.array(c, dtype=np.uint64) for c in columns))
    tables = segment_tables(ids, edges, thresholds)
    for threshold, table in zip(thresholds, tables, strict=True):
        labels = partition_labels(ids, expected, merge_bound(threshold))
        assert np.array_equal(table, labels), f"partitions differ at threshold {threshold}"
        assert voi(table, labels) == 0.0


def _record_difference(records: list[Record], expected: list[Record]) -> str:
    extra = sorted(set(records) - set(expected))[:3]
    missing = sorted(set(expected) - set(records))[:3]
    return (
        f"{len(records)} records vs {len(expected)} expected; unexpected {extra}, missing {missing}"
    )


def check_case(case: Case, block_shape: tuple[int, int, int], **options: object) -> HierarchyResult:
    """Run the hierarchy and compare it with the reference: records, partitions, conservation."""
    result, ids = run_case(case, block_shape, **options)  # type: ignore[arg-type]
    expected = reference_records(case, result.bound)
    assert_same_result(ids, records_of(result.records), expected)
    assert_conservation(case, result)
    return result


def assert_conservation(case: Case, result: HierarchyResult) -> None:
    """Every contact ends in one merge or one dropped edge; every fragment in one segment."""
    total = int(case.n.sum())
    merged = result.records.total_count()
    dropped = result.dropped.total_count()
    assert merged + dropped == total, (merged, dropped, total)
    # every record joins two different clusters: F fragments, R records -> F - R segments
    ids = np.sort(case.fragment_ids)
    table = segment_tables(ids, result.records, [result.bound])[0]
    assert table.shape == ids.shape
    assert np.unique(table).size == ids.size - len(result.records)
    assert np.all(np.isin(table, ids))
