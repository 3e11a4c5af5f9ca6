"""Edge statistics between fragments against a voxel-by-voxel loop."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from blockwise.contacts import contact_statistics, quantise_affinities

OFFSETS = [(-1, 0, 0), (0, -1, 0), (0, 0, -1), (-2, 0, 0), (0, 3, 0), (1, -1, 2)]


def slow_statistics(fragments: np.ndarray, affs: np.ndarray, offsets: list) -> dict:
    found: dict[tuple[int, int], list[int]] = {}
    shape = fragments.shape
    for c, offset in enumerate(offsets):
        for p in itertools.product(*(range(s) for s in shape)):
            q = tuple(pi + oi for pi, oi in zip(p, offset, strict=True))
            if not all(0 <= qi < s for qi, s in zip(q, shape, strict=True)):
                continue
            a, b = int(fragments[p]), int(fragments[q])
            if a == b or a == 0 or b == 0:
                continue
            key = (min(a, b), max(a, b))
            entry = found.setdefault(key, [0, 0])
            entry[0] += int(affs[(c, *p)])
            entry[1] += 1
    return found


@pytest.mark.parametrize("seed", range(4))
def test_contact_statistics_equal_a_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (5, 6, 7)
    fragments = rng.integers(0, 5, shape).astype(np.uint64) * np.uint64(2**40)
    affs = rng.integers(0, 256, (len(OFFSETS), *shape), dtype=np.uint8)
    got = contact_statistics(fragments, affs, OFFSETS)
    expected = slow_statistics(fragments, affs, OFFSETS)
    assert list(zip(got.u.tolist(), got.v.tolist(), strict=True)) == sorted(expected)
    assert [[s, n] for s, n in zip(got.s.tolist(), got.n.tolist(), strict=True)] == [
        expected[k] for k in sorted(expected)
    ]


def test_views_and_many_pairs_equal_a_loop() -> None:
    # strided views of both arrays (the kernel takes C-contiguous copies), and more
    # distinct pairs than the kernel's first hash table holds, so that it grows
    rng = np.random.default_rng(11)
    fragments = rng.integers(1, 400, (9, 20, 16)).astype(np.uint64)[:, ::2, 1:]
    affs = rng.integers(0, 256, (len(OFFSETS), 9, 10, 30), dtype=np.uint8)[..., ::2]
    assert not fragments.flags.c_contiguous and not affs.flags.c_contiguous
    got = contact_statistics(fragments, affs, OFFSETS)
    expected = slow_statistics(fragments, affs, OFFSETS)
    assert len(expected) > 1024
    assert list(zip(got.u.tolist(), got.v.tolist(), strict=True)) == sorted(expected)
    assert [[s, n] for s, n in zip(got.s.tolist(), got.n.tolist(), strict=True)] == [
        expected[k] for k in sorted(expected)
    ]


def test_quantisation_is_the_nearest_uint8() -> None:
    affs = np.array([0.0, 0.5, 1.0, 0.9981, 0.0019], dtype=np.float32)
    assert quantise_affinities(affs).tolist() == [0, 128, 255, 255, 0]
    raw = np.array([3, 250], dtype=np.uint8)
    assert quantise_affinities(raw) is raw or quantise_affinities(raw).tolist() == [3, 250]


def test_shapes_must_agree() -> None:
    with pytest.raises(ValueError, match="same voxels"):
        contact_statistics(
            np.zeros((2, 2, 2), np.uint64), np.zeros((3, 2, 2, 3), np.uint8), OFFSETS[:3]
        )
    with pytest.raises(ValueError, match="uint8"):
        contact_statistics(
            np.zeros((2, 2, 2), np.uint64), np.zeros((3, 2, 2, 2), np.float32), OFFSETS[:3]
        )


def numpy_statistics(
    fragments: np.ndarray, affs: np.ndarray, offsets: list
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The statistics with whole-array numpy operations (the implementation before the kernel)."""
    lows, highs, values = [], [], []
    for channel, offset in enumerate(offsets):
        here, there = [], []
        for size, o in zip(fragments.shape, offset, strict=True):
            here.append(slice(0, max(size - o, 0)) if o >= 0 else slice(-o, size))
            there.append(slice(o, size) if o >= 0 else slice(0, max(size + o, 0)))
        a, b = fragments[tuple(here)].ravel(), fragments[tuple(there)].ravel()
        keep = (a != b) & (a != 0) & (b != 0)
        lows.append(np.minimum(a[keep], b[keep]))
        highs.append(np.maximum(a[keep], b[keep]))
        values.append(affs[channel][tuple(here)].ravel()[keep].astype(np.uint64))
    low, high, value = np.concatenate(lows), np.concatenate(highs), np.concatenate(values)
    order = np.lexsort((high, low))
    low, high, value = low[order], high[order], value[order]
    if low.size == 0:
        return low, high, value, value.copy()
    first = np.r_[True, (low[1:] != low[:-1]) | (high[1:] != high[:-1])]
    starts = np.flatnonzero(first)
    s = np.add.reduceat(value, starts).astype(np.uint64)
    n = np.diff(np.r_[starts, low.size]).astype(np.uint64)
    return low[starts], high[starts], s, n


def assert_statistics_equal(got, expected) -> None:  # type: ignore[no-untyped-def]
    for name, a, b in zip("uvsn", (got.u, got.v, got.s, got.n), expected, strict=True):
        assert a.dtype == np.uint64, name
        np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("offsets", [OFFSETS[:3], OFFSETS, [(0, 0, 9), (-9, 0, 0)]])
def test_kernel_equals_whole_array_numpy_on_blobs(seed: int, offsets: list) -> None:
    # blobs (long runs of one pair along x, as on real contact surfaces), zeros
    # and ids above 2**32; views that are not contiguous
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.random((14, 18, 40)), 2.0)
    fragments = (np.digitize(noise, np.quantile(noise, [0.1, 0.3, 0.5, 0.7, 0.9]))).astype(
        np.uint64
    ) * np.uint64(2**33 + 7)
    affs = rng.integers(0, 256, (len(offsets), 14, 18, 40), dtype=np.uint8)
    got = contact_statistics(fragments[:, ::-1], affs[:, :, ::-1], offsets)
    assert len(got) > 0
    assert_statistics_equal(got, numpy_statistics(fragments[:, ::-1], affs[:, :, ::-1], offsets))


def test_kernel_equals_whole_array_numpy_on_fib25() -> None:
    import h5py

    from blockwise.fragments import fragments_from_affinities

    from datafiles import require_data

    crop = (slice(100, 160), slice(50, 130), slice(60, 150))
    with h5py.File(require_data("fib25_baseline_affs.h5"), "r") as f:
        affs = f["affs"][(slice(None), *crop)]
    fragments, _ = fragments_from_affinities(
        (affs / np.float32(255)).astype(np.float32), (10, 10, 10), min_seed_distance_nm=60
    )
    offsets = [(-1, 0, 0), (0, -1, 0), (0, 0, -1)]
    got = contact_statistics(fragments, affs, offsets)
    assert len(got) > 500
    assert_statistics_equal(got, numpy_statistics(fragments, affs, offsets))


def test_no_contacts() -> None:
    fragments = np.ones((3, 4, 5), np.uint64)
    fragments[0] = 0
    got = contact_statistics(fragments, np.zeros((3, 3, 4, 5), np.uint8), OFFSETS[:3])
    assert len(got) == 0 and got.u.dtype == np.uint64
    # an offset longer than the volume links nothing
    got = contact_statistics(
        np.arange(60, dtype=np.uint64).reshape(3, 4, 5),
        np.zeros((1, 3, 4, 5), np.uint8),
        [(5, 0, 0)],
    )
    assert len(got) == 0
