"""Seeded watershed: flood labels from seed voxels over a 3D priority surface."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from blockwise.kernels import _watershed

__all__ = ["seeded_watershed"]

# the kernel indexes voxels of the volume padded by one voxel per side with 32 bits
_MAX_PADDED_VOXELS = 2**32 - 1


def seeded_watershed(
    surface: NDArray[np.float32],
    seeds: NDArray[np.uint64],
    mask: NDArray[np.bool_] | None = None,
    *,
    overwrite_seeds: bool = False,
) -> NDArray[np.uint64]:
    """Flood seed labels over ``surface``, lowest values first, 6-connected.

    Gives exactly the labels of ``skimage.segmentation.watershed(surface,
    markers=seeds, mask=mask, connectivity=1)``: voxels leave a priority queue
    ordered by (value, age of insertion); a voxel's value is raised to that of
    the voxel that reached it; a neighbour takes the label of the voxel being
    popped when it is pushed; seeds keep their labels.

    Args:
        surface: (z, y, x) flood priority, lower floods first; no NaN (±inf is fine).
        seeds: (z, y, x) seed labels; 0 is not a seed. Seeds outside ``mask``
            are ignored.
        mask: (z, y, x), True where voxels may be labelled; ``None`` means
            everywhere.
        overwrite_seeds: Flood ``seeds`` itself (it must be C-contiguous) and
            return it, instead of a new array.

    Returns:
        (z, y, x) labels: every voxel of ``mask`` connected (6-neighbourhood,
        inside ``mask``) to a seed holds a seed label; all other voxels hold 0.

    Memory: the output (8 bytes per voxel; none with ``overwrite_seeds``), 8 bytes
    per voxel of the volume padded by one voxel per side, 8 bytes per seed voxel,
    and 16 bytes per voxel in the queue at once (once the last seed has left, 8
    with at most ``MAX_LEVELS`` = 65536 distinct values, which are then ranked,
    and 12 with more).

    Raises:
        ValueError: if an array is not 3D, has another dtype than documented,
            shapes differ, ``surface`` holds NaN, the volume padded by one
            voxel per side has 2**32 voxels or more, or ``overwrite_seeds`` is
            set and ``seeds`` is not C-contiguous and writeable.
    """
    _check_array("surface", surface, np.dtype(np.float32))
    _check_array("seeds", seeds, np.dtype(np.uint64), shape=surface.shape)
    if mask is not None:
        _check_array("mask", mask, np.dtype(np.bool_), shape=surface.shape)
    padded_voxels = math.prod(s + 2 for s in surface.shape)
    if padded_voxels > _MAX_PADDED_VOXELS:
        raise ValueError(
            f"seeded_watershed takes volumes of at most {_MAX_PADDED_VOXELS} voxels "
            f"including a one-voxel border, received shape {surface.shape} "
            f"({padded_voxels} voxels with the border); split the volume into blocks"
        )
    if np.isnan(surface).any():
        raise ValueError("surface holds NaN; expected finite or infinite values only")

    if overwrite_seeds:
        if not (seeds.flags.c_contiguous and seeds.flags.writeable):
            raise ValueError("with overwrite_seeds, seeds must be C-contiguous and writeable")
        labels = seeds
    else:
        labels = np.array(seeds, dtype=np.uint64, order="C", copy=True)
    mask_u8 = None
    if mask is not None:
        np.copyto(labels, 0, where=~mask)
        mask_u8 = np.ascontiguousarray(mask).view(np.uint8)
    _watershed.flood(np.ascontiguousarray(surface), labels, mask_u8)
    return labels


def _check_array(
    name: str, array: object, dtype: np.dtype, shape: tuple[int, ...] | None = None
) -> None:
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, received {type(array).__name__}")
    if array.ndim != 3:
        raise ValueError(
            f"{name} must be 3D (z, y, x), received {array.ndim}D with shape {array.shape}"
        )
    if array.dtype != dtype:
        raise ValueError(f"{name} must have dtype {dtype}, received {array.dtype}")
    if shape is not None and array.shape != shape:
        raise ValueError(f"{name} must have the shape of surface {shape}, received {array.shape}")
