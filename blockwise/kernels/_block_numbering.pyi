import numpy as np
from numpy.typing import NDArray

def number_block(
    local: NDArray[np.uint64],
    top: int,
    first_id: int,
    out: NDArray[np.uint64],
    sizes: NDArray[np.int64],
    sums: NDArray[np.int64],
) -> int: ...
