import numpy as np
from numpy.typing import NDArray

MAX_TOTAL_COUNT: int

_Edges = tuple[
    NDArray[np.uint64],
    NDArray[np.uint64],
    NDArray[np.uint64],
    NDArray[np.uint64],
    NDArray[np.uint64],
    NDArray[np.uint64],
]

def merge_task(
    ids: NDArray[np.uint64],
    levels: NDArray[np.uint8],
    level: int,
    a: NDArray[np.uint64],
    b: NDArray[np.uint64],
    s: NDArray[np.uint64],
    n: NDArray[np.uint64],
    tau_hi: NDArray[np.uint64],
    tau_lo: NDArray[np.uint64],
    p: int,
    q: int,
) -> tuple[_Edges, NDArray[np.uint64], NDArray[np.uint8], _Edges, _Edges, int]: ...
def scores_below(
    s: NDArray[np.uint64], n: NDArray[np.uint64], p: int, q: int
) -> NDArray[np.bool_]: ...
