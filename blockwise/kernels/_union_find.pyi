import numpy as np
from numpy.typing import NDArray

def union_pairs(
    parent: NDArray[np.int64],
    size: NDArray[np.int64],
    a: NDArray[np.int64],
    b: NDArray[np.int64],
) -> None: ...
def find_roots(parent: NDArray[np.int64], out: NDArray[np.int64]) -> None: ...
def smallest_members(parent: NDArray[np.int64], out: NDArray[np.int64]) -> None: ...
