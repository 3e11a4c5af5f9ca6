"""seeded_watershed against scikit-image (label-exact) and a slow heapq reference."""

from __future__ import annotations

import heapq
import importlib.machinery

import numpy as np
import pytest
from scipy import ndimage
from skimage.segmentation import watershed as skimage_watershed

from blockwise.kernels import _watershed
from blockwise.kernels.watershed import seeded_watershed

SHAPES = [
    (1, 1, 1),
    (1, 1, 9),
    (1, 7, 1),
    (6, 1, 1),
    (1, 8, 9),
    (5, 1, 7),
    (6, 7, 1),
    (2, 3, 4),
    (6, 7, 8),
    (9, 4, 11),
    (3, 15, 12),
]

# neighbour order of scikit-image's flood: -z, -y, -x, +x, +y, +z
_NEIGHBOURS = [(-1, 0, 0), (0, -1, 0), (0, 0, -1), (0, 0, 1), (0, 1, 0), (1, 0, 0)]


def reference_watershed(
    surface: np.ndarray, seeds: np.ndarray, mask: np.ndarray | None = None
) -> np.ndarray:
    """The flood written out plainly with heapq on (value, age, voxel) tuples.

    Seeds go in first, in C order, with age 0 and their own value. Tuples give a
    total order, so seeds of equal value leave in C order here; in scikit-image
    (and the kernel) they leave in the order of its binary heap instead. Callers
    give seeds distinct values so that both orders agree.
    """
    mask = np.ones(surface.shape, dtype=bool) if mask is None else mask
    labels = np.where(mask, seeds, 0).astype(np.uint64)
    queue: list[tuple[float, int, tuple[int, int, int]]] = []
    for voxel in zip(*np.nonzero(labels), strict=True):
        heapq.heappush(queue, (float(surface[voxel]), 0, voxel))
    age = 0
    while queue:
        value, _, (z, y, x) = heapq.heappop(queue)
        for dz, dy, dx in _NEIGHBOURS:
            neighbour = (z + dz, y + dy, x + dx)
            if not all(0 <= c < s for c, s in zip(neighbour, surface.shape, strict=True)):
                continue
            if not mask[neighbour] or labels[neighbour]:
                continue
            age += 1
            labels[neighbour] = labels[z, y, x]
            heapq.heappush(queue, (max(float(surface[neighbour]), value), age, neighbour))
    return labels


def random_case(
    rng: np.random.Generator, shape: tuple[int, ...], n_levels: int, with_mask: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A quantized surface (many ties), sparse seeds with repeated labels, a mask."""
    surface = (rng.integers(0, n_levels, shape) / n_levels - 0.5).astype(np.float32)
    n_voxels = int(np.prod(shape))
    n_seeds = max(1, n_voxels // int(rng.integers(3, 20)))
    seeds = np.zeros(shape, dtype=np.uint64)
    where = rng.choice(n_voxels, n_seeds, replace=False)
    seeds.flat[where] = rng.integers(1, max(2, n_seeds // 2) + 1, n_seeds)
    mask = rng.random(shape) > 0.25 if with_mask else None
    return surface, seeds, mask


def expected(surface: np.ndarray, seeds: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    return skimage_watershed(surface, markers=seeds, mask=mask, connectivity=1)


def radix_watershed(
    surface: np.ndarray, seeds: np.ndarray, mask: np.ndarray | None = None
) -> np.ndarray:
    """The kernel forced onto its radix queue (``seeded_watershed`` ranks the values
    and queues one FIFO per rank when there are at most MAX_LEVELS of them)."""
    labels = np.where(mask, seeds, 0) if mask is not None else seeds.copy()
    labels = np.ascontiguousarray(labels, dtype=np.uint64)
    mask_u8 = None if mask is None else np.ascontiguousarray(mask).view(np.uint8)
    _watershed.flood(np.ascontiguousarray(surface), labels, mask_u8, max_levels=0)
    return labels


def assert_both_queues_give(
    surface: np.ndarray, seeds: np.ndarray, mask: np.ndarray | None, want: np.ndarray
) -> None:
    np.testing.assert_array_equal(seeded_watershed(surface, seeds, mask), want)
    np.testing.assert_array_equal(radix_watershed(surface, seeds, mask), want)


def test_compiled_kernel_is_loaded() -> None:
    assert _watershed.__file__ is not None
    assert _watershed.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n_levels", [1, 2, 5, 1000])
@pytest.mark.parametrize("with_mask", [False, True])
def test_matches_skimage_on_random_surfaces(
    shape: tuple[int, int, int], n_levels: int, with_mask: bool
) -> None:
    rng = np.random.default_rng([*shape, n_levels, with_mask])
    for _ in range(10):
        surface, seeds, mask = random_case(rng, shape, n_levels, with_mask)
        assert_both_queues_give(surface, seeds, mask, expected(surface, seeds, mask))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_mask", [False, True])
def test_matches_heapq_reference(shape: tuple[int, int, int], with_mask: bool) -> None:
    rng = np.random.default_rng([*shape, with_mask, 7])
    for _ in range(6):
        surface, seeds, mask = random_case(rng, shape, 3, with_mask)
        # distinct seed values (see reference_watershed); the rest keeps its ties
        is_seed = seeds != 0
        surface[is_seed] = rng.permutation(int(is_seed.sum())).astype(np.float32) / 4 - 1
        assert_both_queues_give(surface, seeds, mask, reference_watershed(surface, seeds, mask))


@pytest.mark.parametrize("seed_value", ["own", "-inf", "high"])
def test_matches_skimage_on_distance_transform_plateaus(seed_value: str) -> None:
    """Seeds as fragment extraction makes them: plateaus of equal value, one label each."""
    rng = np.random.default_rng(3)
    interior = ndimage.binary_opening(rng.random((20, 30, 25)) > 0.35)
    depth = ndimage.distance_transform_edt(interior)
    is_peak = (depth == ndimage.maximum_filter(depth, size=3)) & (depth > 0)
    seeds = ndimage.label(is_peak)[0].astype(np.uint64)
    surface = np.where(interior, -depth / depth.max(), rng.integers(0, 8, depth.shape) / 8)
    surface = surface.astype(np.float32)
    if seed_value == "-inf":
        surface[seeds != 0] = -np.inf
    elif seed_value == "high":
        surface[seeds != 0] = 2.0  # every seed leaves the queue last
    mask = rng.random(surface.shape) > 0.1
    for m in (None, mask):
        assert_both_queues_give(surface, seeds, m, expected(surface, seeds, m))


def test_matches_skimage_with_infinities_and_signed_zeros() -> None:
    rng = np.random.default_rng(11)
    shape = (7, 9, 8)
    values = np.array([-np.inf, -1.0, -0.0, 0.0, 1.0, np.inf], dtype=np.float32)
    surface = values[rng.integers(0, values.size, shape)]
    seeds = np.zeros(shape, dtype=np.uint64)
    seeds.flat[rng.choice(surface.size, 20, replace=False)] = rng.integers(1, 6, 20)
    np.testing.assert_array_equal(seeded_watershed(surface, seeds), expected(surface, seeds, None))


def test_keeps_large_labels() -> None:
    rng = np.random.default_rng(5)
    surface, seeds, mask = random_case(rng, (6, 7, 8), 4, True)
    big = np.array([2**63 - 1, 2**63, 2**64 - 1], dtype=np.uint64)
    seeds[seeds != 0] = big[rng.integers(0, 3, int((seeds != 0).sum()))]
    labels = seeded_watershed(surface, seeds, mask)
    np.testing.assert_array_equal(labels, expected(surface, seeds, mask))
    assert set(np.unique(labels)) <= {0, *big.tolist()}


def test_matches_skimage_on_non_contiguous_views() -> None:
    rng = np.random.default_rng(9)
    surface, seeds, mask = random_case(rng, (8, 10, 12), 4, True)
    assert mask is not None
    views = surface.transpose(2, 0, 1), seeds.transpose(2, 0, 1), mask.transpose(2, 0, 1)
    np.testing.assert_array_equal(seeded_watershed(*views), expected(*views))
    strided = surface[::2, :, ::3], seeds[::2, :, ::3], mask[::2, :, ::3]
    np.testing.assert_array_equal(seeded_watershed(*strided), expected(*strided))


def test_masked_and_unreachable_voxels_stay_zero() -> None:
    surface = np.zeros((3, 4, 9), dtype=np.float32)
    mask = np.ones(surface.shape, dtype=bool)
    mask[:, :, 4] = False  # cuts the volume in two; only the left half has a seed
    seeds = np.zeros(surface.shape, dtype=np.uint64)
    seeds[1, 1, 1] = 7
    seeds[1, 1, 4] = 8  # outside the mask: ignored
    labels = seeded_watershed(surface, seeds, mask)
    assert (labels[:, :, :4] == 7).all()
    assert (labels[:, :, 4:] == 0).all()


def test_without_seeds_everything_stays_zero() -> None:
    surface = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    labels = seeded_watershed(surface, np.zeros(surface.shape, dtype=np.uint64))
    assert labels.dtype == np.uint64
    assert not labels.any()


@pytest.mark.parametrize("shape", [(0, 3, 4), (2, 0, 4), (2, 3, 0)])
def test_empty_volume(shape: tuple[int, int, int]) -> None:
    labels = seeded_watershed(np.zeros(shape, np.float32), np.zeros(shape, np.uint64))
    assert labels.shape == shape
    assert labels.dtype == np.uint64


def test_inputs_are_not_modified() -> None:
    rng = np.random.default_rng(2)
    surface, seeds, mask = random_case(rng, (5, 6, 7), 3, True)
    assert mask is not None
    copies = surface.copy(), seeds.copy(), mask.copy()
    seeded_watershed(surface, seeds, mask)
    for array, copy in zip((surface, seeds, mask), copies, strict=True):
        np.testing.assert_array_equal(array, copy)


def test_large_volume_matches_skimage() -> None:
    """Enough voxels for the kernel's queue to grow and hand over many entries."""
    rng = np.random.default_rng(4)
    shape = (40, 50, 60)
    surface = ndimage.gaussian_filter(rng.random(shape), 2)
    surface = (np.round(surface * 200) / 200).astype(np.float32)
    seeds = np.zeros(shape, dtype=np.uint64)
    seeds.flat[rng.choice(surface.size, 300, replace=False)] = np.arange(1, 301)
    mask = rng.random(shape) > 0.05
    assert_both_queues_give(surface, seeds, mask, expected(surface, seeds, mask))


def test_more_values_than_ranks_take_the_radix_queue_and_match_skimage() -> None:
    """Over MAX_LEVELS distinct values: the kernel queues by value, exactly."""
    rng = np.random.default_rng(5)
    shape = (40, 50, 60)
    surface = ndimage.gaussian_filter(rng.random(shape), 1).astype(np.float32)
    assert np.unique(surface).size > _watershed.MAX_LEVELS
    seeds = np.zeros(shape, dtype=np.uint64)
    seeds.flat[rng.choice(surface.size, 200, replace=False)] = np.arange(1, 201)
    mask = rng.random(shape) > 0.05
    for m in (None, mask):
        np.testing.assert_array_equal(
            seeded_watershed(surface, seeds, m), expected(surface, seeds, m)
        )


@pytest.mark.parametrize("n_levels", [1, 2, 7, 300])
def test_both_queues_match_skimage_at_a_rank_limit(n_levels: int) -> None:
    """Limits just below, at and above the number of distinct values: either queue
    gives scikit-image's labels."""
    rng = np.random.default_rng(n_levels)
    shape = (12, 14, 16)
    surface, seeds, mask = random_case(rng, shape, n_levels, True)
    distinct = int(np.unique(surface[mask]).size)
    want = expected(surface, seeds, mask)
    for limit in (distinct - 1, distinct, distinct + 1):
        labels = np.ascontiguousarray(np.where(mask, seeds, 0), dtype=np.uint64)
        _watershed.flood(surface, labels, mask.view(np.uint8), max_levels=max(limit, 0))
        np.testing.assert_array_equal(labels, want)


@pytest.mark.parametrize(
    ("surface", "seeds", "mask", "message"),
    [
        (np.zeros((3, 4), np.float32), np.zeros((3, 4), np.uint64), None, "must be 3D"),
        (np.zeros((2, 3, 4)), np.zeros((2, 3, 4), np.uint64), None, "dtype float32"),
        (np.zeros((2, 3, 4), np.float32), np.zeros((2, 3, 4), np.int64), None, "dtype uint64"),
        (np.zeros((2, 3, 4), np.float32), np.zeros((2, 3, 5), np.uint64), None, "shape"),
        (
            np.zeros((2, 3, 4), np.float32),
            np.zeros((2, 3, 4), np.uint64),
            np.ones((2, 3, 4), np.uint8),
            "dtype bool",
        ),
        (
            np.zeros((2, 3, 4), np.float32),
            np.zeros((2, 3, 4), np.uint64),
            np.ones((2, 3, 3), bool),
            "shape",
        ),
        (np.full((2, 3, 4), np.nan, np.float32), np.zeros((2, 3, 4), np.uint64), None, "NaN"),
        ([[[0.0]]], np.zeros((1, 1, 1), np.uint64), None, "numpy array"),
    ],
)
def test_rejects_bad_inputs(surface: object, seeds: object, mask: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        seeded_watershed(surface, seeds, mask)  # type: ignore[arg-type]
