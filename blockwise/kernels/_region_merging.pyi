import numpy as np
from numpy.typing import NDArray

MAX_K: int

def merge_regions(
    affs: NDArray[np.float32],
    fragments: NDArray[np.uint64],
    threshold: float,
    kind: str,
    quantile: int,
    k: int,
    init_with_max: bool,
) -> tuple[
    NDArray[np.uint64], NDArray[np.uint64], NDArray[np.float32], NDArray[np.float32], int
]: ...
def segment(
    fragments: NDArray[np.uint64],
    u: NDArray[np.uint64],
    v: NDArray[np.uint64],
    merge_score: NDArray[np.float32],
    threshold: float,
) -> NDArray[np.uint64]: ...
