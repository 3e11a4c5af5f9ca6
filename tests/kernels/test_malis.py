"""Constrained MALIS weights against slow, obviously-correct references.

Two independent references:

* :func:`reference_weights`: Kruskal in plain Python with explicit member sets;
  every merge counts its pairs by looking at every (u, v) of the two sets, so
  every pair of voxels is attributed to the edge at which they are joined, with
  the same documented tie order (affinity descending, then edge id ascending).
* :func:`maximin_values`: for every voxel, a widest-path search gives the
  maximin affinity to every other voxel. It does not see ties at all, so it
  checks the weights summed over all edges of at least a given affinity.
"""

from __future__ import annotations

import heapq
import importlib.machinery
import itertools
from collections.abc import Sequence

import numpy as np
import pytest
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components

from blockwise.errors import InputError
from blockwise.kernels import _malis
from blockwise.kernels.malis import compute_malis_weights, malis_weights, same_object_edges

NEAREST = [(-1, 0, 0), (0, -1, 0), (0, 0, -1)]
LONG_RANGE = [*NEAREST, (-2, 0, 0), (0, -3, 0), (0, 0, -3), (1, 2, -1)]
ONLY_LONG = [(0, 0, 2), (0, -2, 1)]  # leaves the grid graph disconnected


def edge_list(
    shape: tuple[int, ...], offsets: Sequence[tuple[int, int, int]]
) -> list[tuple[int, int, int]]:
    """(edge id, p, q) of every edge inside the volume, edge id = c * n + p."""
    n = int(np.prod(shape))
    edges = []
    for c, offset in enumerate(offsets):
        for voxel in itertools.product(*(range(s) for s in shape)):
            other = tuple(v + o for v, o in zip(voxel, offset, strict=True))
            if all(0 <= v < s for v, s in zip(other, shape, strict=True)):
                p = int(np.ravel_multi_index(voxel, shape))
                q = int(np.ravel_multi_index(other, shape))
                edges.append((c * n + p, p, q))
    return edges


def constrained(
    affs: np.ndarray, labels: np.ndarray, offsets: Sequence[tuple[int, int, int]], positive: bool
) -> np.ndarray:
    """min(pred, gt) for the positive pass, max(pred, gt) for the negative one."""
    flat_labels = labels.reshape(-1)
    gt = np.zeros(affs.size)
    for edge, p, q in edge_list(labels.shape, offsets):
        gt[edge] = flat_labels[p] != 0 and flat_labels[p] == flat_labels[q]
    values = affs.reshape(-1).astype(np.float64)
    return (np.minimum(values, gt) if positive else np.maximum(values, gt)).reshape(affs.shape)


def reference_weights(
    affs: np.ndarray, labels: np.ndarray, offsets: Sequence[tuple[int, int, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """Both passes by plain Kruskal with explicit sets and an O(n^2) pair count."""
    flat_labels = labels.reshape(-1).tolist()
    edges = edge_list(labels.shape, offsets)
    weights = []
    for positive in (True, False):
        values = constrained(affs, labels, offsets, positive).reshape(-1)
        out = np.zeros(affs.size)
        set_of = list(range(labels.size))
        members = {v: {v} for v in range(labels.size)}
        for edge, p, q in sorted(edges, key=lambda e: (-values[e[0]], e[0])):
            a, b = set_of[p], set_of[q]
            if a == b:
                continue
            count = 0
            for u in members[a]:
                for v in members[b]:
                    lu, lv = flat_labels[u], flat_labels[v]
                    if lu != 0 and lv != 0 and (lu == lv) == positive:
                        count += 1
            out[edge] = count
            for v in members[b]:
                set_of[v] = a
            members[a] |= members.pop(b)
        weights.append(out.reshape(affs.shape))
    return weights[0], weights[1]


def maximin_values(
    values: np.ndarray, shape: tuple[int, ...], offsets: Sequence[tuple[int, int, int]]
) -> np.ndarray:
    """(n, n) maximin affinity of every pair of voxels (-inf: not connected)."""
    n = int(np.prod(shape))
    neighbours: list[list[tuple[float, int]]] = [[] for _ in range(n)]
    flat_values = values.reshape(-1)
    for edge, p, q in edge_list(shape, offsets):
        neighbours[p].append((flat_values[edge], q))
        neighbours[q].append((flat_values[edge], p))
    best = np.full((n, n), -np.inf)
    for source in range(n):
        width = best[source]
        width[source] = np.inf
        heap = [(-np.inf, source)]
        while heap:
            negative_width, u = heapq.heappop(heap)
            if -negative_width < width[u]:
                continue
            for value, v in neighbours[u]:
                through = min(width[u], value)
                if through > width[v]:
                    width[v] = through
                    heapq.heappush(heap, (-through, v))
    return best


def random_case(
    seed: int, shape: tuple[int, int, int], n_labels: int, levels: int, n_channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Affinities quantised to ``levels`` values (many ties) and labels with background."""
    rng = np.random.default_rng(seed)
    affs = (rng.integers(0, levels, (n_channels, *shape)) / (levels - 1)).astype(np.float32)
    # blocky labels (objects spanning several voxels) with background and speckle
    labels = rng.integers(0, n_labels + 1, (2, 2, 3))
    labels = labels.repeat(-(-shape[0] // 2), 0).repeat(-(-shape[1] // 2), 1)
    labels = labels.repeat(-(-shape[2] // 3), 2)[: shape[0], : shape[1], : shape[2]].copy()
    speckle = rng.random(shape) < 0.15
    labels[speckle] = rng.integers(0, n_labels + 1, int(speckle.sum()))
    return affs, labels.astype(np.uint64)


CASES = [
    # seed, shape, labels, affinity levels, offsets
    (0, (3, 4, 5), 3, 5, NEAREST),
    (1, (3, 4, 5), 4, 3, NEAREST),
    (2, (3, 4, 5), 2, 2, NEAREST),
    (3, (3, 4, 5), 5, 4, LONG_RANGE),
    (4, (4, 3, 6), 3, 9, LONG_RANGE),
    (5, (3, 4, 5), 3, 3, ONLY_LONG),
    (6, (1, 5, 7), 3, 4, NEAREST),
    (7, (4, 6, 7), 6, 6, LONG_RANGE),
]


def test_compiled_kernel_is_loaded() -> None:
    assert _malis.__file__ is not None
    assert _malis.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def test_hand_worked_line() -> None:
    # x: 0 -1- 1 -2- 2 -3- 3 -4- 4, labels 1 1 2 2 0; channel at x links x and x - 1
    affs = np.array([[[[0.0, 0.9, 0.2, 0.8, 0.6]]]], dtype=np.float32)
    labels = np.array([[[1, 1, 2, 2, 0]]], dtype=np.uint64)
    positive, negative = malis_weights(affs, labels, [(0, 0, -1)])
    # positive pass: edge 2 (between objects) becomes 0, edge 4 (to background) too;
    # edge 1 joins the pair {0,1}, edge 3 the pair {2,3}
    np.testing.assert_array_equal(positive[0, 0, 0], [0, 1, 0, 1, 0])
    # negative pass: edges 1 and 3 become 1; edge 2 (0.2) joins {0,1} with {2,3}:
    # 4 pairs of different objects; the background voxel 4 adds none
    np.testing.assert_array_equal(negative[0, 0, 0], [0, 0, 4, 0, 0])


@pytest.mark.parametrize(("seed", "shape", "n_labels", "levels", "offsets"), CASES)
def test_weights_equal_plain_kruskal(
    seed: int,
    shape: tuple[int, int, int],
    n_labels: int,
    levels: int,
    offsets: list[tuple[int, int, int]],
) -> None:
    affs, labels = random_case(seed, shape, n_labels, levels, len(offsets))
    result = compute_malis_weights(affs, labels, offsets)
    expected_positive, expected_negative = reference_weights(affs, labels, offsets)
    assert result.positive.dtype == result.negative.dtype == np.float32
    np.testing.assert_array_equal(result.positive, expected_positive)
    np.testing.assert_array_equal(result.negative, expected_negative)
    assert result.n_same_pairs == expected_positive.sum() > 0
    assert result.n_different_pairs == expected_negative.sum() > 0


@pytest.mark.parametrize(("seed", "shape", "n_labels", "levels", "offsets"), CASES[:6])
def test_weights_per_level_equal_maximin_pair_counts(
    seed: int,
    shape: tuple[int, int, int],
    n_labels: int,
    levels: int,
    offsets: list[tuple[int, int, int]],
) -> None:
    """Edges of affinity >= t carry exactly the pairs whose maximin affinity is >= t."""
    affs, labels = random_case(seed, shape, n_labels, levels, len(offsets))
    positive, negative = malis_weights(affs, labels, offsets)
    flat_labels = labels.reshape(-1)
    labelled = flat_labels != 0
    upper = np.triu(np.ones((labels.size, labels.size), dtype=bool), k=1)
    same = upper & labelled[:, None] & labelled[None, :] & (flat_labels[:, None] == flat_labels)
    different = upper & labelled[:, None] & labelled[None, :] & ~same
    for weights, pairs, is_positive in ((positive, same, True), (negative, different, False)):
        values = constrained(affs, labels, offsets, is_positive)
        maximin = maximin_values(values, labels.shape, offsets)
        for level in np.unique(values):
            assert weights[values >= level].sum() == (pairs & (maximin >= level)).sum()
        # pairs never joined (different components of the grid graph) carry no weight
        assert weights.sum() == (pairs & (maximin > -np.inf)).sum()


def test_totals_are_all_labelled_pairs_on_a_connected_grid() -> None:
    affs, labels = random_case(11, (5, 6, 7), 5, 7, len(LONG_RANGE))
    result = compute_malis_weights(affs, labels, LONG_RANGE)
    _, counts = np.unique(labels[labels != 0], return_counts=True)
    counts = counts.astype(np.int64)
    n_same = int((counts * (counts - 1) // 2).sum())
    n_different = int((counts.sum() ** 2 - (counts**2).sum()) // 2)
    assert (result.n_same_pairs, result.n_different_pairs) == (n_same, n_different)
    assert result.positive.sum(dtype=np.float64) == n_same
    assert result.negative.sum(dtype=np.float64) == n_different
    # a Kruskal run merges at most n - 1 times; every weighted edge is one merge
    assert np.count_nonzero(result.positive) <= labels.size - 1
    assert np.count_nonzero(result.negative) <= labels.size - 1


def test_totals_on_a_disconnected_grid_count_pairs_per_component() -> None:
    shape = (3, 6, 7)
    affs, labels = random_case(12, shape, 3, 4, len(ONLY_LONG))
    result = compute_malis_weights(affs, labels, ONLY_LONG)
    edges = np.array([(p, q) for _, p, q in edge_list(shape, ONLY_LONG)])
    n = labels.size
    _, component = connected_components(
        coo_array((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n)),
        directed=False,
    )
    flat = labels.reshape(-1)
    n_same = n_different = 0
    for u, v in itertools.combinations(range(n), 2):
        if component[u] == component[v] and flat[u] != 0 and flat[v] != 0:
            n_same += flat[u] == flat[v]
            n_different += flat[u] != flat[v]
    assert 0 < result.n_same_pairs == n_same
    assert 0 < result.n_different_pairs == n_different


def test_edges_leaving_the_volume_get_no_weight() -> None:
    affs, labels = random_case(13, (4, 5, 6), 3, 5, len(LONG_RANGE))
    positive, negative = malis_weights(affs, labels, LONG_RANGE)
    exists = np.zeros(affs.size, dtype=bool)
    exists[[edge for edge, _, _ in edge_list(labels.shape, LONG_RANGE)]] = True
    exists = exists.reshape(affs.shape)
    assert not positive[~exists].any() and not negative[~exists].any()
    assert positive[exists].any() and negative[exists].any()


@pytest.mark.parametrize(
    "offsets", [NEAREST, LONG_RANGE, [(0, 0, 7), (0, 4, 0), (0, -4, 0), (-5, 0, 0), (1, -1, 2)]]
)
def test_same_object_edges_equal_a_loop(offsets: list[tuple[int, int, int]]) -> None:
    # (0, 4, 0) on 3 rows: longer than the volume but shorter than twice it
    _, labels = random_case(18, (3, 3, 5), 3, 2, 1)
    expected = np.zeros((len(offsets), *labels.shape), dtype=bool)
    flat = labels.reshape(-1)
    for edge, p, q in edge_list(labels.shape, offsets):
        expected.reshape(-1)[edge] = flat[p] != 0 and flat[p] == flat[q]
    np.testing.assert_array_equal(same_object_edges(labels, offsets), expected)


def test_background_only_and_single_object_volumes() -> None:
    affs = np.random.default_rng(14).random((3, 3, 4, 5), dtype=np.float32)
    background = compute_malis_weights(affs, np.zeros((3, 4, 5), np.uint64), NEAREST)
    assert not background.positive.any() and not background.negative.any()
    one = compute_malis_weights(affs, np.full((3, 4, 5), 7, np.uint64), NEAREST)
    assert one.n_same_pairs == 60 * 59 // 2 and one.n_different_pairs == 0
    assert not one.negative.any()
    # all affinities distinct: the positive pass is the plain maximum spanning tree
    assert np.count_nonzero(one.positive) == 59


def test_label_dtype_and_label_values_do_not_matter() -> None:
    affs, labels = random_case(15, (3, 4, 5), 4, 4, 3)
    expected = malis_weights(affs, labels, NEAREST)
    renamed = np.array([0, 1000, 3, 2**40, 9])[labels.astype(np.int64)]
    for other in (labels.astype(np.uint8), labels.astype(np.int32), renamed):
        for ours, theirs in zip(malis_weights(affs, other, NEAREST), expected, strict=True):
            np.testing.assert_array_equal(ours, theirs)


def test_non_contiguous_inputs_give_the_contiguous_result() -> None:
    affs, labels = random_case(16, (3, 4, 5), 3, 5, 3)
    wide = np.zeros((3, 3, 4, 10), np.float32)
    wide[..., ::2] = affs
    wide_labels = np.zeros((3, 4, 10), np.int64)
    wide_labels[..., ::2] = labels
    for ours, theirs in zip(
        malis_weights(wide[..., ::2], wide_labels[..., ::2], NEAREST),
        malis_weights(affs, labels, NEAREST),
        strict=True,
    ):
        np.testing.assert_array_equal(ours, theirs)


def test_empty_volume() -> None:
    result = compute_malis_weights(
        np.zeros((3, 0, 4, 5), np.float32), np.zeros((0, 4, 5), np.uint64), NEAREST
    )
    assert result.positive.shape == result.negative.shape == (3, 0, 4, 5)
    assert result.n_same_pairs == result.n_different_pairs == 0


GOOD_AFFS = np.full((3, 2, 3, 4), 0.5, np.float32)
GOOD_LABELS = np.ones((2, 3, 4), np.uint64)


@pytest.mark.parametrize(
    ("affs", "labels", "offsets", "message"),
    [
        ([[0.5]], GOOD_LABELS, NEAREST, "affinities must be a numpy array"),
        (GOOD_AFFS[0], GOOD_LABELS, NEAREST, r"shape \(channels >= 1, z, y, x\)"),
        (GOOD_AFFS[:0], GOOD_LABELS, [], r"shape \(channels >= 1"),
        (GOOD_AFFS.astype(np.float64), GOOD_LABELS, NEAREST, "float32, received float64"),
        (GOOD_AFFS, GOOD_LABELS[:1], NEAREST, r"spatial shape .* \(2, 3, 4\)"),
        (GOOD_AFFS, GOOD_LABELS.astype(np.float32), NEAREST, "integer array"),
        (GOOD_AFFS, GOOD_LABELS.tolist(), NEAREST, "labels must be a numpy array"),
        (GOOD_AFFS, -GOOD_LABELS.astype(np.int8), NEAREST, r"labels must be >= 0"),
        (GOOD_AFFS, GOOD_LABELS, NEAREST[:2], "3 channels but 2 offsets"),
        (GOOD_AFFS, GOOD_LABELS, "abc", "sequence of"),
        (GOOD_AFFS, GOOD_LABELS, [(0, 0, -1), (0, -1), (-1, 0, 0)], "offset 1 must be three"),
        (GOOD_AFFS, GOOD_LABELS, [(0, 0, -1), (0, 0.5, 1), (-1, 0, 0)], "offset 1 must be"),
        (GOOD_AFFS, GOOD_LABELS, [(0, 0, -1), (True, 0, 0), (-1, 0, 0)], "offset 1 must be"),
        (GOOD_AFFS, GOOD_LABELS, [(0, 0, -1), (2**40, 0, 0), (-1, 0, 0)], "magnitude|2\\*\\*31"),
        (GOOD_AFFS, GOOD_LABELS, [(0, 0, -1), (0, 0, 0), (-1, 0, 0)], r"\(0, 0, 0\)"),
    ],
)
def test_bad_input_raises_clear_errors(
    affs: object, labels: object, offsets: object, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        malis_weights(affs, labels, offsets)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -0.25, 1.5])
def test_affinities_outside_unit_interval_are_rejected(bad: float) -> None:
    affs = GOOD_AFFS.copy()
    affs[1, 1, 2, 3] = bad
    with pytest.raises(InputError, match=r"finite and in \[0, 1\]"):
        malis_weights(affs, GOOD_LABELS, NEAREST)


def test_negative_zero_affinity_counts_as_zero() -> None:
    affs, labels = random_case(17, (3, 4, 5), 3, 3, 3)
    negative_zero = affs.copy()
    negative_zero[affs == 0] = -0.0
    assert np.signbit(negative_zero).any()
    for ours, theirs in zip(
        malis_weights(negative_zero, labels, NEAREST),
        malis_weights(affs, labels, NEAREST),
        strict=True,
    ):
        np.testing.assert_array_equal(ours, theirs)
