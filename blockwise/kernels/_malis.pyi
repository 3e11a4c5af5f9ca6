import numpy as np
from numpy.typing import NDArray

def malis_weights_kernel(
    affs: NDArray[np.float32],
    labels: NDArray[np.uint64],
    offsets: NDArray[np.int64],
    weights_positive: NDArray[np.float32],
    weights_negative: NDArray[np.float32],
) -> tuple[int, int]: ...
