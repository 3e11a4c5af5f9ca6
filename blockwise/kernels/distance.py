"""Exact Euclidean distance transform of a 2D or 3D mask, in float32."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from blockwise.kernels import _distance

__all__ = ["distance_transform"]

# the kernel packs the offsets along the first two axes of a 3D mask into 32 bits,
# with 2**32 - 1 reserved for "no background voxel yet"
_MAX_PACKED = 2**32 - 2


def distance_transform(
    mask: NDArray[np.bool_], sampling: Sequence[float] | NDArray[np.number] | None = None
) -> NDArray[np.float32]:
    """Distance from every True voxel to the nearest False voxel of the array.

    The same distances as ``scipy.ndimage.distance_transform_edt(mask,
    sampling=sampling)`` in float32: voxels outside the array do not count as
    False. Exact, not approximated: squared distances are summed in float64 from
    whole-voxel offsets, square-rooted in float64 and rounded once to float32, so
    for whole-number sampling the result is scipy's distance cast to float32, bit
    for bit (as long as ``2 * sampling**2 * length**2`` stays far below 2**52 per
    axis, e.g. 40 nm and 10**5 voxels); otherwise it is within float64 rounding of
    that (ties between equally distant voxels may be broken differently).

    A mask without any False voxel has nothing to measure to; scipy then returns
    the distance to the index (-1, 0, ..., 0), one voxel before the array's first
    voxel along axis 0 (its feature transform never leaves that initial index),
    and so does this function, so that it is a drop-in replacement.

    Args:
        mask: (z, y, x) or (y, x), True where the distance is measured.
        sampling: Voxel size per axis (for example in nm), positive and finite;
            ``None`` means 1 along every axis. The distances are in its units.

    Returns:
        Float32 distances of the shape of ``mask``; 0 at False voxels.

    Memory: the output (4 bytes per voxel), a C-contiguous copy of ``mask`` if it
    is not C-contiguous (1 byte per voxel), and a few buffers of one line.

    Raises:
        ValueError: if ``mask`` is not a 2D or 3D bool numpy array, ``sampling``
            does not hold one positive finite number per axis (or squared
            distances in its units overflow or underflow float64), or a 3D mask is
            so large along its first two axes that their offsets do not fit the
            kernel's 32 bits (see ``_MAX_PACKED``; split the volume into blocks).
    """
    if not isinstance(mask, np.ndarray):
        raise ValueError(f"mask must be a numpy array, received {type(mask).__name__}")
    if mask.ndim not in (2, 3):
        raise ValueError(
            f"mask must be 2D (y, x) or 3D (z, y, x), received {mask.ndim}D with shape {mask.shape}"
        )
    if mask.dtype != np.bool_:
        raise ValueError(
            f"mask must have dtype bool (True where the distance is measured), "
            f"received {mask.dtype}; convert it with mask != 0 or mask.astype(bool)"
        )
    spacing = _check_sampling(sampling, mask.ndim)

    if mask.size == 0:
        return np.zeros(mask.shape, dtype=np.float32)
    squared_diagonal = sum((s * n) * (s * n) for s, n in zip(spacing, mask.shape, strict=True))
    if not (math.isfinite(squared_diagonal) and all(s * s > 0 for s in spacing)):
        raise ValueError(
            f"sampling {spacing} on a mask of shape {mask.shape} gives squared distances "
            "that float64 cannot hold; expected voxel sizes whose squares, and the squared "
            "diagonal of the array, are finite and non-zero (choose another unit)"
        )
    # a 2D (y, x) mask runs as (y, 1, x): its axis 0 is the kernel's axis 0
    volume = mask if mask.ndim == 3 else mask[:, np.newaxis, :]
    spacing3 = spacing if mask.ndim == 3 else (spacing[0], 1.0, spacing[1])
    depth, height = volume.shape[0], volume.shape[1]
    bits = (height - 1).bit_length()
    if bits >= 32 or ((depth - 1) << bits) + height - 1 > _MAX_PACKED:
        raise ValueError(
            f"mask of shape {mask.shape} is too large along its first two axes: expected "
            f"((shape[0] - 1) << b) + shape[1] - 1 <= {_MAX_PACKED} with b the bit length "
            "of shape[1] - 1 (about 2**32 voxels in an axis-0/axis-1 plane); split the "
            "volume into blocks"
        )

    out = np.empty(mask.shape, dtype=np.uint32)
    _distance.euclidean_distance(
        np.ascontiguousarray(volume).view(np.uint8),
        out if mask.ndim == 3 else out[:, np.newaxis, :],
        *spacing3,
    )
    return out.view(np.float32)


def _check_sampling(sampling: object, ndim: int) -> tuple[float, ...]:
    if sampling is None:
        return (1.0,) * ndim
    if (
        not isinstance(sampling, Sequence | np.ndarray)
        or isinstance(sampling, str)
        or len(sampling) != ndim
        or not all(
            isinstance(s, int | float | np.integer | np.floating)
            and not isinstance(s, bool | np.bool_)
            and math.isfinite(s)
            and s > 0
            for s in sampling
        )
    ):
        raise ValueError(
            f"sampling must be {ndim} positive finite numbers, one per axis of the "
            f"{ndim}D mask, or None; received {sampling!r}"
        )
    return tuple(float(s) for s in sampling)
