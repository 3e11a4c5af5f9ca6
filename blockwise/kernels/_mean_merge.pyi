import numpy as np
from numpy.typing import NDArray

MAX_TOTAL_COUNT: int
UNKNOWN_FUTURE: int

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
    futures: NDArray[np.uint32],
    level: int,
    parts: list[_Edges],
    p: int,
    q: int,
) -> tuple[
    _Edges, NDArray[np.uint64], NDArray[np.uint8], NDArray[np.uint32], _Edges, _Edges, int
]: ...
def scores_below(
    s: NDArray[np.uint64], n: NDArray[np.uint64], p: int, q: int
) -> NDArray[np.bool_]: ...
