import numpy as np
from numpy.typing import NDArray

def dominant_labels(
    fragments: NDArray[np.uint64],
    basins: NDArray[np.uint64],
    wanted: NDArray[np.uint64],
    z0: int,
    z1: int,
    y0: int,
    y1: int,
    x0: int,
    x1: int,
    min_coverage: float,
) -> NDArray[np.uint64]: ...
