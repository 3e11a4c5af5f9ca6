"""Benchmark: seeded_watershed against scikit-image's, and fragment extraction.

Runs on the evaluation half (z >= 125) of the FIB-25 predicted affinities, with
the surface and seeds that :func:`blockwise.fragments.fragments_from_affinities`
floods, side by side in one process (best of ``--repeats`` runs each):

    python tests/benchmarks/bench_watershed.py [--data DIR] [--repeats N]

DIR defaults to $BLOCKWISE_DATA, else ../shared/data from the repository root.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import h5py
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from skimage.segmentation import watershed as skimage_watershed

from blockwise.fragments import fragments_from_affinities
from blockwise.kernels.watershed import seeded_watershed

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
VOXEL_SIZE = (10, 10, 10)


def best_time(function: Callable[[], T], repeats: int) -> tuple[float, T]:
    """Shortest wall-clock time (s) of ``repeats`` calls, and the last result."""
    best = float("inf")
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def flood_inputs(
    affs: NDArray[np.float32],
) -> tuple[NDArray[np.float32], NDArray[np.uint64], NDArray[np.float32]]:
    """The fragment extraction's surface and seeds at its defaults (threshold 0.5, 50 nm).

    Returns the surface with seeds at their own depth, the seeds, and the surface
    with seeds at -inf (what fragments_from_affinities floods).
    """
    mean_affinity = affs.mean(axis=0, dtype=np.float32)
    interior = mean_affinity > 0.5
    depth = ndimage.distance_transform_edt(interior, sampling=VOXEL_SIZE)
    is_peak = (depth == ndimage.maximum_filter(depth, size=5)) & (depth > 0)
    seeds = ndimage.label(is_peak)[0].astype(np.uint64)
    surface = 1 - mean_affinity
    surface[interior] = -depth[interior] / depth.max()
    seeds_first = surface.copy()
    seeds_first[seeds != 0] = -np.inf
    return surface, seeds, seeds_first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = os.environ.get("BLOCKWISE_DATA", str(REPO.parent / "shared" / "data"))
    parser.add_argument("--data", type=Path, default=Path(default_data))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with h5py.File(args.data / "fib25_baseline_affs.h5", "r") as f:
        affs = f["affs"][:, 125:].astype(np.float32) / np.float32(255)
    mvox = affs[0].size / 1e6
    print(f"FIB-25 eval half: affinities {affs.shape}, {mvox:.2f} MVox, best of {args.repeats}")

    surface, seeds, seeds_first = flood_inputs(affs)
    print(f"{int(seeds.max())} seeds")
    print(f"{'watershed':<36}{'blockwise':>16}{'skimage':>16}{'speed-up':>10}  labels")
    cases = (("seeds at -inf (as fragments)", seeds_first), ("seeds at own depth", surface))
    for name, flooded in cases:

        def ours(flooded: NDArray[np.float32] = flooded) -> NDArray[np.uint64]:
            return seeded_watershed(flooded, seeds)

        def theirs(flooded: NDArray[np.float32] = flooded) -> NDArray[np.uint64]:
            return skimage_watershed(flooded, markers=seeds, connectivity=1)

        ours_s, ours_labels = best_time(ours, args.repeats)
        theirs_s, theirs_labels = best_time(theirs, args.repeats)
        same = "identical" if np.array_equal(ours_labels, theirs_labels) else "DIFFERENT"
        print(
            f"{name:<36}{mvox / ours_s:>10.2f} MVox/s{mvox / theirs_s:>10.2f} MVox/s"
            f"{theirs_s / ours_s:>9.2f}x  {same}"
        )

    print(f"{'fragments_from_affinities':<36}{'seconds':>16}{'MVox/s':>16}{'fragments':>10}")
    for min_size in (0, 100):

        def extract(min_size: int = min_size) -> tuple[NDArray[np.uint64], int]:
            return fragments_from_affinities(affs, VOXEL_SIZE, min_fragment_size_vx=min_size)

        seconds, (_, n) = best_time(extract, args.repeats)
        name = f"min_fragment_size_vx={min_size}"
        print(f"{name:<36}{seconds:>16.2f}{mvox / seconds:>16.2f}{n:>10}")


if __name__ == "__main__":
    main()
