"""window_peaks against scipy.ndimage.maximum_filter, bit for bit."""

from __future__ import annotations

import importlib.machinery

import numpy as np
import pytest
from scipy import ndimage

from blockwise.kernels import _peaks
from blockwise.kernels.peaks import window_peaks


def expected(values: np.ndarray, window: tuple[int, int, int]) -> np.ndarray:
    result: np.ndarray = (values == ndimage.maximum_filter(values, size=window)) & (values > 0)
    return result


def test_compiled_kernel_is_loaded() -> None:
    assert _peaks.__file__ is not None
    assert _peaks.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


@pytest.mark.parametrize("seed", range(8))
def test_matches_scipy_on_random_shapes_windows_and_ties(seed: int) -> None:
    # windows larger than the volume, of one voxel, and everything between; few
    # distinct values, so maxima tie across whole plateaus; negative and zero values
    rng = np.random.default_rng(seed)
    for _ in range(40):
        shape = tuple(int(s) for s in rng.integers(1, 15, 3))
        window = tuple(int(w) for w in rng.choice([1, 3, 5, 7, 11, 21, 33], 3))
        values = (rng.integers(-3, 6, shape) / 2).astype(np.float32)
        np.testing.assert_array_equal(window_peaks(values, window), expected(values, window))


def test_matches_scipy_on_a_distance_transform_with_infinities_and_signed_zeros() -> None:
    rng = np.random.default_rng(9)
    depth = ndimage.distance_transform_edt(rng.random((40, 50, 60)) > 0.3).astype(np.float32)
    depth[0, 0, :5] = [np.inf, -np.inf, -0.0, 0.0, np.inf]
    for window in [(11, 11, 11), (1, 7, 7), (5, 1, 3), (3, 3, 1)]:
        np.testing.assert_array_equal(window_peaks(depth, window), expected(depth, window))


def test_a_non_contiguous_view_gives_the_same_peaks() -> None:
    rng = np.random.default_rng(10)
    values = (rng.integers(0, 5, (12, 30, 14)) / 4).astype(np.float32)[:, ::2, 1:]
    assert not values.flags.c_contiguous
    np.testing.assert_array_equal(window_peaks(values, (3, 5, 3)), expected(values, (3, 5, 3)))


@pytest.mark.parametrize("shape", [(0, 3, 4), (2, 0, 4), (2, 3, 0)])
def test_empty_volume(shape: tuple[int, int, int]) -> None:
    peaks = window_peaks(np.zeros(shape, np.float32), (3, 3, 3))
    assert peaks.shape == shape and peaks.dtype == np.bool_


@pytest.mark.parametrize(
    ("values", "window", "message"),
    [
        (np.zeros((3, 3), np.float32), (3, 3, 3), "3D float32 numpy array, received 2D"),
        (np.zeros((3, 3, 3), np.float64), (3, 3, 3), "received 3D float64"),
        ([[[1.0]]], (3, 3, 3), "received list"),
        (np.zeros((3, 3, 3), np.float32), (3, 3), "three odd whole numbers"),
        (np.zeros((3, 3, 3), np.float32), (3, 2, 3), "three odd whole numbers"),
        (np.zeros((3, 3, 3), np.float32), (3, 0, 3), "three odd whole numbers"),
        (np.zeros((3, 3, 3), np.float32), (3, 3.0, 3), "three odd whole numbers"),
        (np.full((3, 3, 3), np.nan, np.float32), (3, 3, 3), "NaN"),
    ],
)
def test_rejects_bad_inputs(values: object, window: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        window_peaks(values, window)  # type: ignore[arg-type]
