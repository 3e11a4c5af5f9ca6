"""The input check the kernels' wrappers share, before anything reaches compiled code."""

from __future__ import annotations

import numpy as np
from numpy.typing import DTypeLike


def require_volume(name: str, value: object, dtype: DTypeLike) -> None:
    """Refuse anything but a 3D numpy array of ``dtype``.

    Raises:
        ValueError: ``NAME must be a 3D DTYPE numpy array, received ...`` (the
            array's dimensions and dtype, or the type of what came instead).
    """
    expected = np.dtype(dtype)
    if isinstance(value, np.ndarray) and value.ndim == 3 and value.dtype == expected:
        return
    received = (
        f"{value.ndim}D {value.dtype}" if isinstance(value, np.ndarray) else type(value).__name__
    )
    raise ValueError(f"{name} must be a 3D {expected} numpy array, received {received}")
