"""fragments_from_affinities: validity, exact splits of synthetic cells, real FIB-25 data."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import ndimage

from blockwise.fragments import fragments_from_affinities

REPO = Path(__file__).resolve().parents[1]


def data_file(name: str) -> Path:
    """A file of the shared real-data folder; skipped if missing, failed if CI=true."""
    folder = Path(os.environ.get("BLOCKWISE_DATA", REPO.parent / "shared" / "data"))
    path = folder / name
    if not path.exists():
        message = f"{path} is missing (set BLOCKWISE_DATA to the shared data folder)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def affinities_from_labels(labels: NDArray[np.integer]) -> NDArray[np.float32]:
    """Nearest-neighbour affinities: 1 between equal non-zero labels, else 0.

    Channel c at voxel v links v and v - e_c; the first slice of every channel
    links to the outside of the volume, which counts as boundary.
    """
    affs = np.zeros((3, *labels.shape), dtype=np.float32)
    for axis in range(3):
        here: list[slice] = [slice(None)] * 3
        before: list[slice] = [slice(None)] * 3
        here[axis] = slice(1, None)
        before[axis] = slice(None, -1)
        a, b = labels[tuple(here)], labels[tuple(before)]
        affs[axis][tuple(here)] = (a == b) & (a != 0)
    return affs


def boxes(shape: tuple[int, int, int], cuts: list[tuple[int, int]]) -> NDArray[np.int64]:
    """Labels of boxes separated by one-voxel membranes (label 0).

    Each cut (axis, position) draws a membrane plane across the whole volume; the
    volume's outer shell is membrane as well. Pieces get ids 1..k.
    """
    membrane = np.zeros(shape, dtype=bool)
    planes = [(axis, position) for axis in range(3) for position in (0, shape[axis] - 1)]
    for axis, position in planes + cuts:
        index: list[slice | int] = [slice(None)] * 3
        index[axis] = position
        membrane[tuple(index)] = True
    labels, _ = ndimage.label(~membrane)
    return labels


def assert_same_partition(
    fragments: NDArray[np.uint64], truth: NDArray[np.integer], where: NDArray[np.bool_]
) -> None:
    """Fragments and truth split the voxels of ``where`` into the same pieces."""
    pairs = np.unique(np.stack([fragments[where], truth[where].astype(np.uint64)]), axis=1)
    assert np.unique(pairs[0]).size == pairs.shape[1], "a fragment spans several pieces"
    assert np.unique(pairs[1]).size == pairs.shape[1], "a piece is split into fragments"


def assert_valid(
    fragments: NDArray[np.uint64], n: int, mask: NDArray[np.bool_] | None = None
) -> None:
    """Every masked-in voxel labelled, masked-out voxels 0, ids 1..n by first voxel."""
    assert fragments.dtype == np.uint64
    inside = np.ones(fragments.shape, dtype=bool) if mask is None else mask
    assert (fragments[inside] != 0).all()
    assert (fragments[~inside] == 0).all()
    ids, first = np.unique(fragments.reshape(-1), return_index=True)
    first = first[ids != 0]
    ids = ids[ids != 0]
    np.testing.assert_array_equal(ids, np.arange(1, n + 1))
    assert (np.diff(first) > 0).all(), "ids are not numbered in order of their first voxel"


def noisy_affinities(shape: tuple[int, int, int], seed: int) -> NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.random((3, *shape)), (0, 1.5, 1.5, 1.5))
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return smooth.astype(np.float32)


SPLIT_SHAPE = (40, 48, 48)
SPLIT_CUTS = [(0, 20), (1, 24), (2, 16), (2, 32)]


@pytest.mark.parametrize("voxel_size", [(10, 10, 10), (10, 8, 8)])
@pytest.mark.parametrize("boundary_threshold", [0.3, 0.5, 0.7])
def test_boxes_are_split_exactly(
    voxel_size: tuple[int, int, int], boundary_threshold: float
) -> None:
    truth = boxes(SPLIT_SHAPE, SPLIT_CUTS)
    fragments, n = fragments_from_affinities(
        affinities_from_labels(truth), voxel_size, boundary_threshold=boundary_threshold
    )
    assert_valid(fragments, n)
    assert n == truth.max()
    assert_same_partition(fragments, truth, truth != 0)


def test_boxes_are_split_exactly_inside_a_mask() -> None:
    truth = boxes(SPLIT_SHAPE, SPLIT_CUTS)
    mask = truth != truth[30, 40, 40]  # one box is excluded
    fragments, n = fragments_from_affinities(affinities_from_labels(truth), (10, 10, 10), mask=mask)
    assert_valid(fragments, n, mask)
    assert n == truth.max() - 1
    assert_same_partition(fragments, truth, mask & (truth != 0))


def test_touching_half_balls_are_split_exactly() -> None:
    """Two overlapping balls cut by a membrane plane; the mask is their union."""
    z, y, x = np.indices((30, 30, 44))
    ball_a = (z - 15) ** 2 + (y - 15) ** 2 + (x - 14) ** 2 <= 12**2
    ball_b = (z - 15) ** 2 + (y - 15) ** 2 + (x - 30) ** 2 <= 12**2
    mask = ball_a | ball_b
    truth = np.where(x < 22, 1, 2) * mask
    truth[:, :, 22] = 0  # the membrane
    fragments, n = fragments_from_affinities(affinities_from_labels(truth), (10, 10, 10), mask=mask)
    assert_valid(fragments, n, mask)
    assert n == 2
    assert_same_partition(fragments, truth, truth != 0)


def test_min_fragment_size_merges_small_fragments() -> None:
    # four boxes and, along x = 1..3, four thin slabs of under 1000 voxels each;
    # fragments take membrane voxels too: a slab's fragment stays under 2000
    truth = boxes((30, 40, 40), [(0, 15), (1, 20), (2, 4)])
    sizes = np.bincount(truth.reshape(-1))
    is_big = sizes >= 1000
    is_big[0] = False
    assert is_big.sum() == 4
    affs = affinities_from_labels(truth)

    fragments, n = fragments_from_affinities(affs, (10, 10, 10))
    assert_valid(fragments, n)
    assert n == 8
    assert_same_partition(fragments, truth, truth != 0)

    merged, n_merged = fragments_from_affinities(affs, (10, 10, 10), min_fragment_size_vx=2000)
    assert_valid(merged, n_merged)
    assert n_merged == 4
    assert np.bincount(merged.reshape(-1).astype(np.int64))[1:].min() >= 2000
    assert_same_partition(merged, truth, is_big[truth])


@pytest.mark.parametrize("min_size", [10, 100, 1000])
def test_min_fragment_size_on_noise(min_size: int) -> None:
    affs = noisy_affinities((24, 40, 40), seed=1)
    fragments, n = fragments_from_affinities(affs, (10, 10, 10), min_fragment_size_vx=min_size)
    assert_valid(fragments, n)
    _, n_unlimited = fragments_from_affinities(affs, (10, 10, 10))
    assert n <= n_unlimited
    # small fragments join their neighbours: none is left
    sizes = np.bincount(fragments.reshape(-1).astype(np.int64))[1:]
    assert sizes.min() >= min_size


def test_small_fragment_alone_in_its_mask_component_keeps_its_voxels() -> None:
    truth = boxes((20, 30, 30), [(2, 15)])
    mask = np.ones(truth.shape, dtype=bool)
    mask[:, :, 15] = False  # the two boxes are separate mask components ...
    mask[:, 18:, :] = False
    mask[:, :, 18:] = False  # ... and the second one is small
    affs = affinities_from_labels(truth)
    fragments, n = fragments_from_affinities(
        affs, (10, 10, 10), min_fragment_size_vx=int(mask.sum()) // 2 + 1, mask=mask
    )
    assert_valid(fragments, n, mask)
    assert n == 2
    components, _ = ndimage.label(mask)
    assert_same_partition(fragments, components, mask)


def test_mask_component_without_interior_becomes_one_fragment() -> None:
    affs = noisy_affinities((16, 24, 24), seed=2)
    affs[:, :, :, 12:] = 0.1  # no interior on the right ...
    mask = np.ones(affs.shape[1:], dtype=bool)
    mask[:, :, 11] = False  # ... which is its own mask component
    fragments, n = fragments_from_affinities(affs, (10, 10, 10), mask=mask)
    assert_valid(fragments, n, mask)
    right = fragments[:, :, 12:]
    assert np.unique(right).size == 1
    assert right[0, 0, 0] not in fragments[:, :, :11]


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_uniform_volume_is_one_fragment(value: float) -> None:
    affs = np.full((3, 6, 7, 8), value, dtype=np.float32)
    fragments, n = fragments_from_affinities(affs, (10, 10, 10))
    assert n == 1
    assert (fragments == 1).all()


def test_seeds_per_section_on_anisotropic_data() -> None:
    affs = noisy_affinities((12, 48, 48), seed=3)
    mask = np.ones(affs.shape[1:], dtype=bool)
    mask[:, :4] = False
    fragments, n = fragments_from_affinities(
        affs, (40, 4, 4), seeds_per_section=True, min_seed_distance_nm=40, mask=mask
    )
    assert_valid(fragments, n, mask)
    assert n > 1
    in_3d, n_3d = fragments_from_affinities(affs, (40, 4, 4), min_seed_distance_nm=40, mask=mask)
    assert_valid(in_3d, n_3d, mask)


def test_empty_volume() -> None:
    fragments, n = fragments_from_affinities(np.zeros((3, 0, 4, 5), np.float32), (1, 1, 1))
    assert fragments.shape == (0, 4, 5)
    assert n == 0


def test_same_input_gives_same_bytes() -> None:
    affs = noisy_affinities((16, 32, 32), seed=4)
    mask = np.random.default_rng(4).random(affs.shape[1:]) > 0.05
    first, n_first = fragments_from_affinities(
        affs, (10, 10, 10), min_fragment_size_vx=20, mask=mask
    )
    second, n_second = fragments_from_affinities(
        affs.copy(), (10, 10, 10), min_fragment_size_vx=20, mask=mask.copy()
    )
    assert n_first == n_second
    assert first.tobytes() == second.tobytes()


def test_inputs_are_not_modified() -> None:
    affs = noisy_affinities((8, 16, 16), seed=5)
    mask = np.ones(affs.shape[1:], dtype=bool)
    mask[0] = False
    copies = affs.copy(), mask.copy()
    fragments_from_affinities(affs, (10, 10, 10), mask=mask, min_fragment_size_vx=5)
    np.testing.assert_array_equal(affs, copies[0])
    np.testing.assert_array_equal(mask, copies[1])


GOOD_AFFS = np.full((3, 4, 5, 6), 0.5, dtype=np.float32)


@pytest.mark.parametrize(
    ("affs", "kwargs", "message"),
    [
        (GOOD_AFFS[0], {}, r"\(channels, z, y, x\).*received shape \(4, 5, 6\)"),
        (GOOD_AFFS[:2], {}, r"at least 3 channels, received shape \(2, 4, 5, 6\)"),
        (GOOD_AFFS.astype(np.float64), {}, "dtype float32 or uint8, received float64"),
        (GOOD_AFFS.astype(np.uint16), {}, "dtype float32 or uint8, received uint16"),
        (GOOD_AFFS + 1, {}, r"\[0, 1\], received values from 1.5 to 1.5"),
        (np.full_like(GOOD_AFFS, np.nan), {}, r"\[0, 1\]"),
        ([0.5], {}, "numpy array"),
        (GOOD_AFFS, {"voxel_size": (10, 10)}, "voxel_size must be 3 positive numbers"),
        (GOOD_AFFS, {"voxel_size": (10, 0, 10)}, "voxel_size must be 3 positive numbers"),
        (GOOD_AFFS, {"voxel_size": (10, -4, 10)}, "voxel_size must be 3 positive numbers"),
        (GOOD_AFFS, {"boundary_threshold": 1.5}, r"boundary_threshold must lie in \[0, 1\]"),
        (GOOD_AFFS, {"min_seed_distance_nm": -1.0}, "min_seed_distance_nm must be"),
        (GOOD_AFFS, {"min_fragment_size_vx": -1}, "min_fragment_size_vx must be"),
        (GOOD_AFFS, {"min_fragment_size_vx": 2.5}, "min_fragment_size_vx must be"),
        (GOOD_AFFS, {"mask": np.ones((4, 5, 6), np.uint8)}, "mask must be a bool"),
        (
            GOOD_AFFS,
            {"mask": np.ones((4, 5, 7), bool)},
            r"spatial shape of affs \(4, 5, 6\), received \(4, 5, 7\)",
        ),
    ],
)
def test_rejects_bad_inputs(affs: object, kwargs: dict[str, object], message: str) -> None:
    voxel_size = kwargs.pop("voxel_size", (10, 10, 10))
    with pytest.raises(ValueError, match=message):
        fragments_from_affinities(affs, voxel_size, **kwargs)  # type: ignore[arg-type]


def test_real_fib25_crop() -> None:
    """Predicted affinities of a FIB-25 crop: valid, and a plausible fragment count."""
    crop = (slice(125, 189), slice(60, 156), slice(80, 176))
    with h5py.File(data_file("fib25_baseline_affs.h5"), "r") as f:
        affs = f["affs"][(slice(None), *crop)].astype(np.float32) / np.float32(255)
    with h5py.File(data_file("fib25_training_sample2.h5"), "r") as f:
        truth = f["labels"][crop]
    n_bodies = np.unique(truth[truth != 0]).size

    fragments, n = fragments_from_affinities(affs, (10, 10, 10))
    assert_valid(fragments, n)
    assert n_bodies <= n <= 50 * n_bodies

    merged, n_merged = fragments_from_affinities(affs, (10, 10, 10), min_fragment_size_vx=50)
    assert_valid(merged, n_merged)
    assert n_bodies <= n_merged < n


@pytest.mark.parametrize(
    ("kwargs", "min_size", "expected_sha256", "expected_n"),
    [
        ({}, 0, "21bcccdd614821b2ae7f53f7151ae9cd4246c01d5a59ccc329f09028082f81ab", 158),
        ({}, 50, "1da97e8d9945e51114f0b89f177b817c84694bb74c28c0bcbe007f3f0838218d", 157),
        (
            {"seeds_per_section": True, "min_seed_distance_nm": 50, "masked": True},
            0,
            "24aa84ff260259bc11e706c3c2b1e300ffb690ec492ef696766b1966451130f9",
            3055,
        ),
        (
            {"seeds_per_section": True, "min_seed_distance_nm": 50, "masked": True},
            50,
            "eed9cec603b473ec0154661282ebd63941e3109b0cad6a56dab5e4b57d87e89b",
            1782,
        ),
    ],
)
@pytest.mark.parametrize("as_stored", [False, True], ids=["float32", "uint8"])
def test_real_fib25_crop_bytes_are_unchanged(
    kwargs: dict[str, object],
    min_size: int,
    expected_sha256: str,
    expected_n: int,
    as_stored: bool,
) -> None:
    """A FIB-25 crop gives the bytes it gave when the hashes were taken.

    Without ``min_fragment_size_vx`` (one flood) the hashes were taken on
    2026-11-30 from the code of that morning, whose one-flood path the
    small-fragment change did not touch (the same bytes before and after
    it). With it, they were taken when small fragments became merged group
    by group
    (:func:`test_small_fragments_merge_exactly_as_a_per_group_watershed` checks
    that step against scikit-image); before, a second flood of the whole volume
    gave 85f047d8... and 38fcc23b... .

    The uint8 affinities as stored (``as_stored``, what extract_fragments hands
    over) give the same bytes as their float32 values.
    """
    import hashlib

    with h5py.File(data_file("fib25_baseline_affs.h5"), "r") as f:
        stored = f["affs"][:, 100:160, 50:130, 60:150]
    affs = (stored / 255).astype(np.float32)
    options = dict(kwargs)
    mask = affs.mean(axis=0) > 0.05 if options.pop("masked", False) else None
    fragments, n = fragments_from_affinities(
        stored if as_stored else affs,
        (10, 10, 10),
        boundary_threshold=0.5,
        min_seed_distance_nm=float(options.pop("min_seed_distance_nm", 100)),  # type: ignore[arg-type]
        seeds_per_section=bool(options.pop("seeds_per_section", False)),
        min_fragment_size_vx=min_size,
        mask=mask,
    )
    assert n == expected_n
    assert hashlib.sha256(fragments.tobytes()).hexdigest() == expected_sha256


@pytest.mark.parametrize("seed", range(4))
def test_uint8_affinities_flood_as_their_float32_values(seed: int) -> None:
    """uint8 affinities (value / 255) give the fragments of ``affs / 255`` in float32,
    with and without a mask, small-fragment merging and seeds per section."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(1, 6, size=(18, 20, 22))
    smooth = ndimage.uniform_filter(
        affinities_from_labels(truth) * 200 + rng.integers(0, 56, (3, *truth.shape)),
        size=(1, 3, 3, 3),
    )
    stored = np.clip(smooth, 0, 255).astype(np.uint8)
    as_float = stored.astype(np.float32) / np.float32(255)
    mask = rng.random(truth.shape) > 0.05
    for kwargs in (
        {},
        {"min_fragment_size_vx": 20, "mask": mask},
        {"seeds_per_section": True, "min_seed_distance_nm": 30.0},
    ):
        expected = fragments_from_affinities(as_float, (10, 10, 10), **kwargs)  # type: ignore[arg-type]
        got = fragments_from_affinities(stored, (10, 10, 10), **kwargs)  # type: ignore[arg-type]
        assert got[1] == expected[1]
        np.testing.assert_array_equal(got[0], expected[0])


def reference_small_fragment_merge(
    affs: NDArray[np.float32],
    voxel_size: tuple[int, int, int],
    min_size: int,
    mask: NDArray[np.bool_] | None,
    min_seed_distance_nm: float,
) -> NDArray[np.uint64]:
    """Step 6 of ``fragments_from_affinities`` written out, with scikit-image.

    Takes the one-flood fragments, rebuilds the documented flood surface, and
    floods every 6-connected group of small-fragment voxels over the **whole**
    volume (no box) from the voxels of other fragments that touch it; a group
    that touches none becomes one fragment. Ids are renumbered by first voxel.
    """
    from skimage.segmentation import watershed

    from blockwise.kernels.distance import distance_transform

    fragments, _ = fragments_from_affinities(
        affs, voxel_size, min_seed_distance_nm=min_seed_distance_nm, mask=mask
    )
    inside = np.ones(fragments.shape, bool) if mask is None else mask
    mean = affs.mean(axis=0, dtype=np.float32)
    interior = (mean > np.float32(0.5)) & inside
    depth = distance_transform(interior, sampling=tuple(float(s) for s in voxel_size))
    surface = np.float32(1) - mean
    surface[interior] = depth[interior] / np.float32(-depth.max())
    sizes = np.bincount(fragments.reshape(-1).astype(np.int64))
    is_small = sizes < min_size
    is_small[0] = False
    groups, n_groups = ndimage.label(is_small[fragments.astype(np.int64)])
    merged = fragments.copy()
    next_id = int(fragments.max())
    for label in range(1, n_groups + 1):
        group = groups == label
        touching = ndimage.binary_dilation(group) & ~group & inside
        if not touching.any():
            next_id += 1
            merged[group] = next_id
            continue
        markers = np.where(touching, fragments, 0).astype(np.int64)
        flooded = watershed(surface, markers=markers, mask=group | touching, connectivity=1)
        merged[group] = flooded[group].astype(np.uint64)
    ids, first = np.unique(merged.reshape(-1), return_index=True)
    order = np.argsort(first[ids != 0])
    lut = np.zeros(int(ids.max()) + 1, dtype=np.uint64)
    lut[ids[ids != 0][order]] = np.arange(1, order.size + 1, dtype=np.uint64)
    return lut[merged.astype(np.int64)]


@pytest.mark.parametrize("seed", [11, 12, 13])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("min_size", [20, 150])
def test_small_fragments_merge_exactly_as_a_per_group_watershed(
    seed: int, masked: bool, min_size: int
) -> None:
    affs = noisy_affinities((20, 36, 36), seed=seed)
    mask = None
    if masked:
        mask = np.random.default_rng(seed).random(affs.shape[1:]) > 0.03
        mask[:, :, 17] = False  # two mask components, one wall of excluded voxels
    fragments, n = fragments_from_affinities(
        affs, (10, 10, 10), min_seed_distance_nm=30, min_fragment_size_vx=min_size, mask=mask
    )
    assert_valid(fragments, n, mask)
    expected = reference_small_fragment_merge(affs, (10, 10, 10), min_size, mask, 30)
    np.testing.assert_array_equal(fragments, expected)
    # every fragment now has min_size voxels, unless it is a whole mask component
    sizes = np.bincount(fragments.reshape(-1).astype(np.int64))[1:]
    components, _ = ndimage.label(np.ones(fragments.shape, bool) if mask is None else mask)
    for fragment in np.flatnonzero(sizes < min_size) + 1:
        piece = components[fragments == fragment]
        assert (components == piece[0]).sum() == piece.size, "a small fragment was left"
