"""Window maxima: the voxels of a volume that equal the maximum of the box around them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from blockwise.kernels import _peaks
from blockwise.kernels.checks import require_volume

__all__ = ["window_peaks"]


def window_peaks(values: NDArray[np.float32], window: Sequence[int]) -> NDArray[np.bool_]:
    """Where ``values`` is positive and equals the maximum of the box centred on it.

    The same as ``(values == scipy.ndimage.maximum_filter(values, size=window)) &
    (values > 0)``, bit for bit: the box is clipped at the volume's faces (which is
    what scipy's default ``reflect`` mode gives for a maximum), and the kernel
    only compares values. It costs three comparisons per voxel and axis whatever
    the window, and compares whole rows at a time along the first two axes.

    Args:
        values: (z, y, x) float32, no NaN.
        window: (z, y, x) box size in voxels, odd numbers >= 1.

    Returns:
        (z, y, x) bool.

    Memory: 4 bytes per voxel (the running maxima) and two buffers of one
    (window-padded) line of planes' rows.

    Raises:
        ValueError: if ``values`` is not a 3D float32 array, holds NaN, or
            ``window`` is not three odd whole numbers >= 1.
    """
    require_volume("values", values, np.float32)
    if (
        len(window) != 3
        or not all(isinstance(w, int | np.integer) and not isinstance(w, bool) for w in window)
        or not all(w >= 1 and w % 2 == 1 for w in window)
    ):
        raise ValueError(f"window must be three odd whole numbers >= 1, received {window!r}")
    if np.isnan(values).any():
        raise ValueError("values hold NaN; expected numbers only")
    peaks = np.zeros(values.shape, dtype=np.uint8)
    _peaks.window_peaks(
        np.ascontiguousarray(values), int(window[0]), int(window[1]), int(window[2]), peaks
    )
    return peaks.view(np.bool_)
