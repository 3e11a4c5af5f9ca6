"""nodes_of(number_block(...)): sizes and centres against a per-fragment reference."""

from __future__ import annotations

import numpy as np
import pytest
from funlib.geometry import Roi

from blockwise.kernels.block_numbering import number_block
from blockwise.kernels.relabel import consecutive
from blockwise.stages.extract_fragments import nodes_of


def reference(labels: np.ndarray, roi: Roi, voxel_size: tuple[int, int, int]):
    """Size and mean voxel position (nm) of each label 1..n, one label at a time."""
    sizes, centres = [], []
    for label in range(1, int(labels.max()) + 1):
        where = np.argwhere(labels == label)
        sizes.append(len(where))
        centres.append(where.mean(axis=0) * np.asarray(voxel_size) + np.asarray(roi.begin))
    return np.asarray(sizes), np.asarray(centres).reshape(-1, 3)


@pytest.mark.parametrize(
    ("shape", "n_labels"),
    [
        ((7, 9, 11), 5),  # one voxel slab per plane
        ((12, 4, 5), 200),  # more labels than a plane holds: thicker slabs
        ((5, 6, 7), 1000),  # one slab covering everything
        ((1, 1, 1), 1),
    ],
)
def test_sizes_and_centres_match_a_per_fragment_reference(
    shape: tuple[int, int, int], n_labels: int
) -> None:
    rng = np.random.default_rng(n_labels)
    labels, count = consecutive(rng.integers(0, n_labels + 1, size=shape).astype(np.uint64))
    roi = Roi((40, -80, 120), tuple(s * v for s, v in zip(shape, (4, 8, 8), strict=True)))
    nodes = nodes_of(number_block(labels, count, first_id=101), roi=roi, voxel_size=(4, 8, 8))
    sizes, centres = reference(labels, roi, (4, 8, 8))
    np.testing.assert_array_equal(nodes.id, np.arange(101, 101 + count, dtype=np.uint64))
    np.testing.assert_array_equal(nodes.size_vx, sizes)
    np.testing.assert_allclose(nodes.center_nm, centres, rtol=0, atol=1e-9)
    # and the bytes of one bincount over the whole array (the earlier implementation)
    np.testing.assert_array_equal(nodes.center_nm, one_pass_centres(labels, count, roi, (4, 8, 8)))


def one_pass_centres(
    labels: np.ndarray, count: int, roi: Roi, voxel_size: tuple[int, int, int]
) -> np.ndarray:
    """Centres from one weighted bincount per axis over the whole array."""
    flat = labels.ravel().astype(np.intp)
    sizes = np.bincount(flat, minlength=count + 1)
    centers = np.empty((count + 1, 3), dtype=np.float64)
    for axis, extent in enumerate(labels.shape):
        shape = [1] * labels.ndim
        shape[axis] = extent
        coordinate = np.broadcast_to(
            np.arange(extent, dtype=np.float64).reshape(shape), labels.shape
        ).ravel()
        centers[:, axis] = np.bincount(flat, weights=coordinate, minlength=count + 1)
    centers = centers[1:] / sizes[1:, None]
    return centers * np.asarray(voxel_size, dtype=np.float64) + np.asarray(
        roi.begin, dtype=np.float64
    )


def test_no_voxels_no_nodes() -> None:
    labels = np.zeros((0, 4, 4), dtype=np.uint64)
    nodes = nodes_of(
        number_block(labels, 0, first_id=1), roi=Roi((0, 0, 0), (0, 4, 4)), voxel_size=(1, 1, 1)
    )
    assert len(nodes.id) == 0
