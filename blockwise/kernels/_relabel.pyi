import numpy as np
from numpy.typing import NDArray

def relabel_flat(
    ids: NDArray[np.uint64],
    keys: NDArray[np.uint64],
    values: NDArray[np.uint64],
    out: NDArray[np.uint64],
) -> int: ...
def relabel_flat_many(
    ids: NDArray[np.uint64],
    keys: NDArray[np.uint64],
    values: NDArray[np.uint64],
    out: NDArray[np.uint64],
) -> int: ...
def unique_nonzero(ids: NDArray[np.uint64]) -> NDArray[np.uint64]: ...
def first_occurrences(ids: NDArray[np.uint64]) -> NDArray[np.uint64]: ...
