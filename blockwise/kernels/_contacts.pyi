import numpy as np
from numpy.typing import NDArray

def contact_sums(
    fragments: NDArray[np.uint64],
    affs: NDArray[np.uint8],
    offsets: NDArray[np.int64],
) -> tuple[NDArray[np.uint64], NDArray[np.uint64], NDArray[np.uint64], NDArray[np.uint64]]: ...
