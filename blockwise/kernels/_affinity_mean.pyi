import numpy as np
from numpy.typing import NDArray

def mean_uint8(
    affs: NDArray[np.uint8], table: NDArray[np.float32], out: NDArray[np.float32]
) -> None: ...
