import numpy as np
from numpy.typing import NDArray

MAX_LEVELS: int

def flood(
    surface: NDArray[np.float32],
    labels: NDArray[np.uint64],
    mask: NDArray[np.uint8] | None = None,
    *,
    max_levels: int = ...,
) -> None: ...
