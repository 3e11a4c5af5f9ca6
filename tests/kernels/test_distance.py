"""distance_transform against scipy's distance_transform_edt and a brute-force reference."""

from __future__ import annotations

import importlib.machinery
import itertools
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import ndimage

from blockwise.kernels import _distance
from blockwise.kernels.distance import distance_transform

SHAPES_2D = [(1, 1), (1, 9), (8, 1), (2, 2), (7, 9), (16, 5), (31, 40)]
SHAPES_3D = [
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
    (17, 23, 19),
]
DENSITIES = [0.02, 0.3, 0.7, 0.95]
# whole-number sampling: squared distances are whole numbers, the result is exact
EXACT_SAMPLINGS_3D = [None, (1, 1, 1), (10, 10, 10), (40, 4, 4), (4, 40, 7)]
EXACT_SAMPLINGS_2D = [None, (1, 1), (4, 4), (40, 4), (3, 11)]
FRACTIONAL_SAMPLINGS_3D = [(0.5, 1.25, 3.0), (8.3, 8.3, 33.1), (1e-3, 2e-3, 5e-4)]
FRACTIONAL_SAMPLINGS_2D = [(0.5, 1.25), (8.3, 33.1), (1e-3, 7e-3)]


def scipy_float32(mask: NDArray[np.bool_], sampling: tuple[float, ...] | None) -> NDArray:
    return ndimage.distance_transform_edt(mask, sampling=sampling).astype(np.float32)


def brute_force(mask: NDArray[np.bool_], sampling: tuple[float, ...] | None) -> NDArray:
    """Minimum over all False voxels of the Euclidean distance, in float64."""
    spacing = np.ones(mask.ndim) if sampling is None else np.asarray(sampling, dtype=float)
    voxels = np.indices(mask.shape).reshape(mask.ndim, -1).T * spacing
    background = voxels[~mask.reshape(-1)]
    squared = ((voxels[:, None, :] - background[None, :, :]) ** 2).sum(axis=2)
    return np.sqrt(squared.min(axis=1)).reshape(mask.shape)


def random_masks(shape: tuple[int, ...], density: float, n: int = 5) -> list[NDArray[np.bool_]]:
    rng = np.random.default_rng([*shape, int(density * 100)])
    return [rng.random(shape) < density for _ in range(n)]


def test_compiled_kernel_is_loaded() -> None:
    assert _distance.__file__ is not None
    assert _distance.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


@pytest.mark.parametrize("shape", SHAPES_3D)
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("sampling", EXACT_SAMPLINGS_3D)
def test_3d_equals_scipy_cast_to_float32(
    shape: tuple[int, int, int], density: float, sampling: tuple[int, ...] | None
) -> None:
    for mask in random_masks(shape, density):
        result = distance_transform(mask, sampling)
        assert result.dtype == np.float32
        assert result.shape == shape
        np.testing.assert_array_equal(result, scipy_float32(mask, sampling))


@pytest.mark.parametrize("shape", SHAPES_2D)
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("sampling", EXACT_SAMPLINGS_2D)
def test_2d_equals_scipy_cast_to_float32(
    shape: tuple[int, int], density: float, sampling: tuple[int, ...] | None
) -> None:
    for mask in random_masks(shape, density):
        result = distance_transform(mask, sampling)
        assert result.dtype == np.float32
        np.testing.assert_array_equal(result, scipy_float32(mask, sampling))


@pytest.mark.parametrize(
    ("shape", "sampling"),
    [
        *itertools.product(SHAPES_3D, FRACTIONAL_SAMPLINGS_3D),
        *itertools.product(SHAPES_2D, FRACTIONAL_SAMPLINGS_2D),
    ],
)
@pytest.mark.parametrize("density", DENSITIES)
def test_fractional_sampling_within_1e6_of_scipy(
    shape: tuple[int, ...], sampling: tuple[float, ...], density: float
) -> None:
    for mask in random_masks(shape, density):
        np.testing.assert_allclose(
            distance_transform(mask, sampling), scipy_float32(mask, sampling), rtol=1e-6, atol=0
        )


@pytest.mark.parametrize(
    ("shape", "sampling"),
    [((2, 3, 4), None), ((6, 7, 8), (40, 4, 4)), ((5, 1, 7), (0.5, 1.25, 3.0)), ((9, 8), (3, 11))],
)
@pytest.mark.parametrize("density", DENSITIES)
def test_matches_brute_force(
    shape: tuple[int, ...], sampling: tuple[float, ...] | None, density: float
) -> None:
    for mask in random_masks(shape, density):
        if mask.all():
            continue  # no background: scipy's convention, tested below
        np.testing.assert_allclose(
            distance_transform(mask, sampling), brute_force(mask, sampling), rtol=1e-6, atol=0
        )


@pytest.mark.parametrize("shape", [*SHAPES_2D, *SHAPES_3D])
def test_all_false_is_zero(shape: tuple[int, ...]) -> None:
    result = distance_transform(np.zeros(shape, dtype=bool))
    np.testing.assert_array_equal(result, np.zeros(shape, dtype=np.float32))


@pytest.mark.parametrize("shape", [*SHAPES_2D, *SHAPES_3D])
@pytest.mark.parametrize("sampling_kind", ["none", "whole", "fractional"])
def test_all_true_measures_to_scipy_virtual_voxel(
    shape: tuple[int, ...], sampling_kind: str
) -> None:
    """Without background scipy measures to index (-1, 0, ..., 0); so does the kernel."""
    sampling = {
        "none": None,
        "whole": (40, 4, 4)[-len(shape) :],
        "fractional": (0.5, 1.25, 3.0)[-len(shape) :],
    }[sampling_kind]
    mask = np.ones(shape, dtype=bool)
    result = distance_transform(mask, sampling)
    spacing = np.ones(len(shape)) if sampling is None else np.asarray(sampling, dtype=float)
    offsets = np.indices(shape).astype(float)
    offsets[0] += 1
    expected = np.sqrt(((offsets * spacing.reshape(-1, *(1,) * len(shape))) ** 2).sum(axis=0))
    np.testing.assert_array_equal(result, expected.astype(np.float32))
    np.testing.assert_array_equal(result, scipy_float32(mask, sampling))


@pytest.mark.parametrize("shape", [(1, 1), (7, 9), (31, 40), (1, 1, 1), (6, 7, 8), (17, 23, 19)])
def test_single_false_voxel(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(list(shape))
    samplings = [None, (10, 10, 10)[-len(shape) :], (40, 4, 4)[-len(shape) :]]
    positions = {tuple(0 for _ in shape), tuple(s - 1 for s in shape)}
    positions |= {tuple(int(rng.integers(0, s)) for s in shape) for _ in range(5)}
    for position, sampling in itertools.product(sorted(positions), samplings):
        mask = np.ones(shape, dtype=bool)
        mask[position] = False
        np.testing.assert_array_equal(
            distance_transform(mask, sampling), scipy_float32(mask, sampling)
        )


def test_exact_where_float32_squared_distances_would_round() -> None:
    """Squared distances above 2**24 (odd whole sampling) still come out bit-exact."""
    mask = np.ones((48, 64, 56), dtype=bool)
    mask[0, 0, 0] = mask[40, 3, 50] = False
    for sampling in [(97, 89, 101), (401, 43, 41), (1, 3, 1000)]:
        expected = ndimage.distance_transform_edt(mask, sampling=sampling)
        assert expected.max() ** 2 > 2**24
        np.testing.assert_array_equal(
            distance_transform(mask, sampling), expected.astype(np.float32)
        )


def test_large_blobs_match_scipy() -> None:
    """Smoothed noise: large interiors and long lines without background."""
    rng = np.random.default_rng(3)
    field = ndimage.gaussian_filter(rng.random((40, 90, 80)), sigma=6)
    mask = field > np.quantile(field, 0.2)
    for sampling in [(10, 10, 10), (40, 4, 4)]:
        np.testing.assert_array_equal(
            distance_transform(mask, sampling), scipy_float32(mask, sampling)
        )
    np.testing.assert_allclose(
        distance_transform(mask, (8.3, 4.1, 4.1)),
        scipy_float32(mask, (8.3, 4.1, 4.1)),
        rtol=1e-6,
        atol=0,
    )


def test_per_section_2d_matches_3d_sections() -> None:
    rng = np.random.default_rng(11)
    mask = rng.random((4, 30, 20)) < 0.9
    for z in range(mask.shape[0]):
        np.testing.assert_array_equal(
            distance_transform(mask[z], (4, 4)), scipy_float32(mask[z], (4, 4))
        )


@pytest.mark.parametrize(
    "view",
    [
        lambda m: m[::2],
        lambda m: m[:, ::-1, 1:],
        lambda m: m.transpose(2, 0, 1),
        lambda m: np.asfortranarray(m),
        lambda m: m[3],
        lambda m: m[:, 4, ::3],
    ],
)
def test_non_contiguous_views(view: object) -> None:
    rng = np.random.default_rng(5)
    mask = view(rng.random((12, 14, 16)) < 0.8)  # type: ignore[operator]
    assert isinstance(mask, np.ndarray)
    sampling = (40, 4, 4)[-mask.ndim :]
    np.testing.assert_array_equal(distance_transform(mask, sampling), scipy_float32(mask, sampling))


@pytest.mark.parametrize("shape", [(0, 4), (3, 0), (0, 2, 3), (2, 0, 3), (2, 3, 0)])
def test_empty_mask(shape: tuple[int, ...]) -> None:
    result = distance_transform(np.ones(shape, dtype=bool))
    assert result.shape == shape
    assert result.dtype == np.float32


def test_inputs_are_not_modified() -> None:
    mask = np.random.default_rng(2).random((5, 6, 7)) < 0.6
    copy = mask.copy()
    sampling = [40.0, 4.0, 4.0]
    distance_transform(mask, sampling)
    np.testing.assert_array_equal(mask, copy)
    assert sampling == [40.0, 4.0, 4.0]


def test_sampling_accepts_sequences_and_numpy_numbers() -> None:
    mask = np.random.default_rng(4).random((5, 6, 7)) < 0.6
    expected = scipy_float32(mask, (40, 4, 4))
    samplings: list[Any] = [  # numpy numbers are not floats to mypy
        (40, 4, 4),
        [40.0, 4.0, 4.0],
        np.array([40, 4, 4]),
        (np.float32(40), 4, 4),
    ]
    for sampling in samplings:
        np.testing.assert_array_equal(distance_transform(mask, sampling), expected)


_MEMORY_PROBE = """
import numpy as np
from blockwise.kernels.distance import distance_transform

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

mask = np.random.default_rng(6).random((96, 256, 256)) < 0.9
distance_transform(mask[:4, :16, :16], (40, 4, 4))  # load everything first
open("/proc/self/clear_refs", "w").write("5")  # reset the peak RSS (VmHWM)
before = status("VmRSS:")
out = distance_transform(mask, (40, 4, 4))
print(before, status("VmHWM:"), out.nbytes)
"""


def test_memory_is_the_output_plus_lines() -> None:
    """Peak resident memory of the whole process, C++ allocations included: the float32
    output (4 bytes per voxel) plus a few lines, not a float64 or int copy of the volume."""
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE], capture_output=True, text=True, check=True
    )
    before, peak, output_bytes = (int(v) for v in proc.stdout.split())
    grown = peak - before
    # the probe sees real allocations: the output itself is there
    assert grown >= 0.9 * output_bytes
    # and little else: a second float32 volume (25 MiB here) would break this bound
    assert grown <= output_bytes + 8 * 2**20, (grown, output_bytes)


@pytest.mark.parametrize(
    ("mask", "sampling", "message"),
    [
        ([[True, False]], None, "numpy array"),
        (np.ones(5, bool), None, r"2D \(y, x\) or 3D \(z, y, x\), received 1D"),
        (np.ones((2, 2, 2, 2), bool), None, "received 4D"),
        (np.ones((3, 4), np.uint8), None, "dtype bool.*received uint8"),
        (np.ones((3, 4), np.float32), None, "dtype bool.*received float32"),
        (np.ones((3, 4), bool), (1.0, 1.0, 1.0), "2 positive finite numbers"),
        (np.ones((2, 3, 4), bool), (1.0, 1.0), "3 positive finite numbers"),
        (np.ones((2, 3, 4), bool), (1.0, 0.0, 1.0), "positive finite"),
        (np.ones((2, 3, 4), bool), (1.0, -4.0, 1.0), "positive finite"),
        (np.ones((2, 3, 4), bool), (1.0, np.nan, 1.0), "positive finite"),
        (np.ones((2, 3, 4), bool), (1.0, np.inf, 1.0), "positive finite"),
        (np.ones((2, 3, 4), bool), (True, 1.0, 1.0), "positive finite"),
        (np.ones((2, 3, 4), bool), "abc", "positive finite"),
        (np.ones((2, 3, 4), bool), 4.0, "positive finite"),
        (np.broadcast_to(np.bool_(True), (2**17, 2**16, 1)), None, "too large"),
        (np.ones((2, 3, 4), bool), (1e200, 1.0, 1.0), "float64 cannot hold"),
        (np.ones((2, 3, 4), bool), (1e-200, 1.0, 1.0), "float64 cannot hold"),
    ],
)
def test_rejects_bad_inputs(mask: object, sampling: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        distance_transform(mask, sampling)  # type: ignore[arg-type]
