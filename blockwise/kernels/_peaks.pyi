import numpy as np
from numpy.typing import NDArray

def window_peaks(
    values: NDArray[np.float32],
    window_z: int,
    window_y: int,
    window_x: int,
    peaks: NDArray[np.uint8],
) -> None: ...
