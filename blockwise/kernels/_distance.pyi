import numpy as np
from numpy.typing import NDArray

def euclidean_distance(
    mask: NDArray[np.uint8],
    out: NDArray[np.uint32],
    sampling0: float,
    sampling1: float,
    sampling2: float,
) -> None: ...
