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
    forced_u: NDArray[np.uint64],
    forced_v: NDArray[np.uint64],
    with_statistics: bool,
) -> tuple[
    NDArray[np.uint64],
    NDArray[np.uint64],
    NDArray[np.float32],
    NDArray[np.float32],
    int,
    tuple[bytes, ...] | None,
]: ...
def merge_graph(
    u: NDArray[np.uint64],
    v: NDArray[np.uint64],
    data: NDArray[np.uint8],
    begin: NDArray[np.uint64],
    order: NDArray[np.uint64],
    forced: NDArray[np.uint8] | None,
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
