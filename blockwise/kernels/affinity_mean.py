"""The mean affinity over channels of uint8 affinities, without a float32 copy of them."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from blockwise.kernels import _affinity_mean

__all__ = ["mean_affinity"]

# value / 255 for every uint8 value, computed by numpy exactly as the float path
# (affs.astype(np.float32) / np.float32(255)) computes it
_TABLE = np.arange(256, dtype=np.float32) / np.float32(255.0)


def mean_affinity(affs: NDArray[np.uint8]) -> NDArray[np.float32]:
    """The mean over channels of ``affs / 255``, float32, (z, y, x).

    The bytes of ``(affs.astype(np.float32) / 255).mean(axis=0, dtype=np.float32)``
    (channels added in order in float32, then divided by their count) in one
    pass over the uint8 values: no float32 copy of the channels is made.

    Args:
        affs: (channels, z, y, x) uint8 affinities (value / 255), at least one
            channel; any strides (a non-contiguous view is copied first).

    Raises:
        ValueError: on another dtype or shape; the message says what came.
    """
    if not isinstance(affs, np.ndarray) or affs.dtype != np.uint8 or affs.ndim != 4:
        received = (
            f"{affs.ndim}D {affs.dtype}" if isinstance(affs, np.ndarray) else type(affs).__name__
        )
        raise ValueError(f"affs must be a 4D uint8 numpy array, received {received}")
    if affs.shape[0] < 1:
        raise ValueError(f"affs must have at least one channel, received shape {affs.shape}")
    out = np.empty(affs.shape[1:], dtype=np.float32)
    if out.size:
        flat = np.ascontiguousarray(affs).reshape(affs.shape[0], -1)
        _affinity_mean.mean_uint8(flat, _TABLE, out.reshape(-1))
    return out
