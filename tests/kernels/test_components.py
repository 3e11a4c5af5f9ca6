"""label_components and component_boxes against scipy.ndimage.label and find_objects."""

from __future__ import annotations

import importlib.machinery

import numpy as np
import pytest
from scipy import ndimage

from blockwise.kernels import _components
from blockwise.kernels.components import component_boxes, label_components


def structure(planar: bool) -> np.ndarray:
    """6-connected, or 4-connected within z-sections (as fragments' per-section seeds)."""
    result = ndimage.generate_binary_structure(3, 1)
    if planar:
        result[0] = result[2] = False
    return result


def test_compiled_kernel_is_loaded() -> None:
    assert _components.__file__ is not None
    assert _components.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


@pytest.mark.parametrize("planar", [False, True], ids=["6-connected", "per-section"])
@pytest.mark.parametrize("seed", range(6))
def test_matches_scipy_labels_and_boxes_on_random_masks(seed: int, planar: bool) -> None:
    # densities from sparse dots to one percolating mass (long chains of unions
    # whose roots meet late), shapes with extents of one voxel
    rng = np.random.default_rng(seed)
    for _ in range(50):
        shape = tuple(int(s) for s in rng.integers(1, 16, 3))
        mask = rng.random(shape) < rng.uniform(0.02, 0.98)
        expected, expected_count = ndimage.label(mask, structure=structure(planar))
        labels, count = label_components(mask, planar=planar)
        assert count == expected_count
        np.testing.assert_array_equal(labels, expected)
        assert component_boxes(labels, count) == ndimage.find_objects(expected)


def test_spirals_and_combs_whose_components_join_late() -> None:
    # a comb: teeth along y that a spine at the far end of x joins (every tooth is a
    # provisional label until the spine's row); numbered by first voxel
    mask = np.zeros((3, 20, 21), dtype=bool)
    mask[1, :, ::2] = True
    mask[1, -1, :] = True
    mask[0, 0, 1::4] = True  # single voxels, before the comb in C order
    expected, n = ndimage.label(mask, structure=structure(False))
    labels, count = label_components(mask)
    assert count == n
    np.testing.assert_array_equal(labels, expected)


def test_strided_views_empty_and_full_masks() -> None:
    rng = np.random.default_rng(3)
    base = rng.random((20, 22, 24)) < 0.5
    view = base[::2, 1::3, ::-1]
    expected, n = ndimage.label(view, structure=structure(False))
    labels, count = label_components(view)
    assert count == n
    np.testing.assert_array_equal(labels, expected)
    for mask in (np.zeros((4, 5, 6), bool), np.ones((4, 5, 6), bool), np.zeros((0, 3, 3), bool)):
        expected, n = ndimage.label(mask, structure=structure(False))
        labels, count = label_components(mask)
        assert count == n and labels.shape == mask.shape
        np.testing.assert_array_equal(labels, expected)


def test_a_label_without_voxels_has_no_box() -> None:
    labels = np.zeros((2, 3, 4), dtype=np.int32)
    labels[1, 2, 3] = 2
    assert component_boxes(labels, 3) == [None, (slice(1, 2), slice(2, 3), slice(3, 4)), None]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: label_components(np.zeros((3, 3), bool)), "3D bool numpy array, received 2D bool"),
        (lambda: label_components(np.zeros((3, 3, 3), np.uint8)), "received 3D uint8"),
        (lambda: label_components([[[True]]]), "received list"),  # type: ignore[arg-type]
        (lambda: component_boxes(np.zeros((2, 2, 2), np.int64), 1), "3D int32 numpy array"),
        (lambda: component_boxes(np.zeros((2, 2, 2), np.int32), -1), "at least 0, received -1"),
    ],
)
def test_bad_input_is_refused_with_what_was_expected(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]
