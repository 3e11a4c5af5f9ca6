"""Downsampling kernels against slow references; block-wise pyramids equal whole-volume ones."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import zarr
from funlib.geometry import Coordinate, Roi

from blockwise.downsample import (
    create_pyramid_levels,
    downsample_block,
    downsample_mean,
    downsample_mode,
    pyramid_shapes,
    volume_of_array,
    write_pyramid,
)
from blockwise.errors import InputError

FACTORS = [(2, 2, 2), (1, 2, 2), (3, 2, 1)]


def boxes(shape: tuple[int, ...], factor: tuple[int, int, int]):
    out = [s // f for s, f in zip(shape, factor, strict=True)]
    for index in itertools.product(*(range(o) for o in out)):
        yield index, tuple(slice(i * f, (i + 1) * f) for i, f in zip(index, factor, strict=True))


def mode_reference(labels: np.ndarray, factor: tuple[int, int, int]) -> np.ndarray:
    out = np.zeros([s // f for s, f in zip(labels.shape, factor, strict=True)], labels.dtype)
    for index, box in boxes(labels.shape, factor):
        counts = Counter(int(v) for v in labels[box].ravel())
        best = max(counts.values())
        out[index] = min(label for label, c in counts.items() if c == best)
    return out


def mean_reference(data: np.ndarray, factor: tuple[int, int, int]) -> np.ndarray:
    out = np.zeros([s // f for s, f in zip(data.shape, factor, strict=True)], data.dtype)
    for index, box in boxes(data.shape, factor):
        values = [int(v) for v in data[box].ravel()]
        n = len(values)
        out[index] = (sum(values) + n // 2) // n  # round half up, exactly
    return out


@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", [np.uint64, np.uint32, np.int64])
def test_mode_equals_counter_reference(factor, seed: int, dtype) -> None:
    rng = np.random.default_rng(seed)
    # few labels, so ties are frequent; shapes not divisible by the factor
    labels = rng.integers(0, 4, size=(7, 9, 10)).astype(dtype)
    if dtype == np.uint64:
        labels[labels == 3] = np.uint64(2**64 - 5)
    assert np.array_equal(downsample_mode(labels, factor), mode_reference(labels, factor))
    # spatially coherent labels: most boxes hold one label (the fast path)
    coherent = (np.indices(labels.shape).sum(axis=0) // 5).astype(dtype)
    coherent[rng.random(labels.shape) < 0.05] = 1
    assert np.array_equal(downsample_mode(coherent, factor), mode_reference(coherent, factor))


def test_mode_ties_go_to_smallest_and_zero_counts() -> None:
    box = np.array([5, 5, 3, 3, 9, 9, 0, 0], np.uint64).reshape(2, 2, 2)
    assert downsample_mode(box, 2)[0, 0, 0] == 0
    box = np.array([5, 5, 3, 3, 9, 9, 7, 1], np.uint64).reshape(2, 2, 2)
    assert downsample_mode(box, 2)[0, 0, 0] == 3
    box = np.array([0, 0, 0, 4, 4, 4, 4, 1], np.uint64).reshape(2, 2, 2)
    assert downsample_mode(box, 2)[0, 0, 0] == 4


@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("seed", range(3))
def test_mean_uint8_rounds_half_up(factor, seed: int) -> None:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(7, 9, 10), dtype=np.uint8)
    data[:2, :2, :2] = [[[0, 1], [0, 0]], [[0, 1], [0, 0]]]  # a box whose mean is exactly x.5
    assert np.array_equal(downsample_mean(data, factor), mean_reference(data, factor))
    assert downsample_mean(np.array([0, 1], np.uint8).reshape(1, 1, 2), (1, 1, 2))[0, 0, 0] == 1


def test_mean_float_and_channels() -> None:
    rng = np.random.default_rng(0)
    affs = rng.random((3, 4, 6, 8), dtype=np.float32)
    out = downsample_mean(affs, 2)
    assert out.shape == (3, 2, 3, 4) and out.dtype == np.float32
    expected = affs.reshape(3, 2, 2, 3, 2, 4, 2).mean(axis=(2, 4, 6))
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    affs8 = (affs * 255).astype(np.uint8)
    for c in range(3):
        assert np.array_equal(downsample_mean(affs8, 2)[c], mean_reference(affs8[c], (2, 2, 2)))


def test_kernel_errors() -> None:
    with pytest.raises(ValueError, match="use 'mode'"):
        downsample_mean(np.zeros((4, 4, 4), np.uint64), 2)
    with pytest.raises(ValueError, match="smaller than one downsampled voxel"):
        downsample_mode(np.zeros((1, 4, 4), np.uint64), 2)
    with pytest.raises(ValueError, match="positive integers"):
        downsample_mode(np.zeros((4, 4, 4), np.uint64), (2, 0, 2))
    with pytest.raises(ValueError, match=r"labels \(z, y, x\)"):
        downsample_mode(np.zeros((2, 4, 4, 4), np.uint64), 2)


def test_pyramid_shapes() -> None:
    assert pyramid_shapes((250, 250, 250), (32, 32, 32), 2) == [
        (250, 250, 250),
        (125, 125, 125),
        (62, 62, 62),
    ]
    # z is not downsampled, so only y and x decide
    assert pyramid_shapes((30, 512, 512), (64, 64, 64), (1, 2, 2)) == [
        (30, 512, 512),
        (30, 256, 256),
        (30, 128, 128),
        (30, 64, 64),
    ]
    assert len(pyramid_shapes((64, 64, 64), (8, 8, 8), 2, num_levels=5)) == 5
    with pytest.raises(ValueError, match="do not fit"):
        pyramid_shapes((8, 8, 8), (8, 8, 8), 2, num_levels=5)


def blockwise_pyramid(
    group: zarr.Group, name: str, level0: np.ndarray, method, factor, chunks, vs, offset
):
    s0 = group.create_dataset(
        f"{name}/s0",
        data=level0,
        chunks=(*level0.shape[:-3], *chunks),
        dimension_separator="/",
    )
    s0.attrs["offset"] = list(offset)
    s0.attrs["resolution"] = list(vs)
    levels = create_pyramid_levels(group, name, volume_of_array(s0), factor, chunks, method)
    for fine, coarse in itertools.pairwise(levels):
        step = Coordinate(chunks) * coarse.voxel_size
        for begin in itertools.product(
            *(
                range(b, e, s)
                for b, e, s in zip(coarse.roi.begin, coarse.roi.end, step, strict=True)
            )
        ):
            downsample_block(fine, coarse, Roi(begin, step).intersect(coarse.roi), factor, method)
    return levels


@pytest.mark.parametrize(
    ("kind", "factor"), [("raw", (2, 2, 2)), ("labels", (1, 2, 2)), ("affs", (2, 2, 2))]
)
def test_blockwise_pyramid_equals_whole_volume(tmp_path: Path, kind: str, factor) -> None:
    rng = np.random.default_rng(1)
    shape = (37, 45, 52)
    if kind == "raw":
        data, method = rng.integers(0, 256, size=shape, dtype=np.uint8), "mean"
    elif kind == "labels":
        data, method = rng.integers(0, 5, size=shape).astype(np.uint64), "mode"
    else:
        data, method = rng.integers(0, 256, size=(3, *shape), dtype=np.uint8), "mean"
    vs, offset, chunks = (10, 4, 4), (100, 40, 80), (4, 6, 5)
    whole_group = zarr.open_group(str(tmp_path / "whole.zarr"), mode="w")
    whole = write_pyramid(whole_group, kind, data, vs, offset, method, factor, chunks)
    parts = blockwise_pyramid(
        zarr.open_group(str(tmp_path / "parts.zarr"), mode="w"),
        kind,
        data,
        method,
        factor,
        chunks,
        vs,
        offset,
    )
    assert len(whole) == len(parts) >= 3
    expected = data
    for k, (w, p) in enumerate(zip(whole, parts, strict=True)):
        assert w.voxel_size == p.voxel_size == Coordinate(vs) * Coordinate(factor) ** k
        assert w.roi.offset == p.roi.offset == Coordinate(offset)
        assert np.array_equal(w.array[...], p.array[...])
        assert np.array_equal(w.array[...], expected)
        ref = mode_reference if method == "mode" else mean_reference
        if expected.ndim == 4:
            expected = np.stack([ref(c, factor) for c in expected])
        else:
            expected = ref(expected, factor)


def test_downsample_block_errors(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "p.zarr"), mode="w")
    levels = write_pyramid(
        group,
        "raw",
        np.zeros((16, 16, 16), np.uint8),
        (10, 10, 10),
        (0, 0, 0),
        "mean",
        2,
        (4, 4, 4),
    )
    fine, coarse = levels[0], levels[1]
    with pytest.raises(InputError, match="not aligned"):
        downsample_block(fine, coarse, Roi((10, 0, 0), (40, 40, 40)), 2, "mean")
    with pytest.raises(InputError, match="times the factor"):
        downsample_block(fine, coarse, Roi((0, 0, 0), (40, 40, 40)), 4, "mean")
    with pytest.raises(InputError, match="not inside"):
        downsample_block(fine, coarse, Roi((0, 0, 0), (400, 40, 40)), 2, "mean")
    # zarr arrays with offset/resolution attributes work as well as volumes
    downsample_block(group["raw/s0"], group["raw/s1"], Roi((0, 0, 0), (40, 40, 40)), 2, "mean")
