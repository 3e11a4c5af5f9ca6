"""Downsampling: the kernels and the block-wise pyramid vs whole-array numpy references.

On FIB-25 (raw uint8 and labels uint64, 250^3 = 15.6 MVox, factor 2):

- kernels in memory: ``downsample_mean`` vs the obvious numpy reshape-mean
  (float64 mean, rounded half up) and ``downsample_mode`` vs
  ``scipy.stats.mode`` over the reshaped 2x2x2 boxes (smallest label on ties,
  as ours);
- the pyramid from zarr: ``downsample_block`` over 64^3 blocks of every level
  (read, downsample, write; what a worker does) vs the in-memory kernels on
  the whole array, level by level.

MVox/s counts the voxels of the finer level read. Results are checked equal.

    python tests/benchmarks/bench_downsample.py [--data DIR]
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import zarr
from funlib.geometry import Coordinate, Roi

from blockwise.downsample import (
    create_pyramid_levels,
    downsample,
    downsample_block,
    volume_of_array,
)


def numpy_mean(data: np.ndarray) -> np.ndarray:
    z, y, x = (s // 2 for s in data.shape)
    boxes = data[: 2 * z, : 2 * y, : 2 * x].reshape(z, 2, y, 2, x, 2)
    return np.floor(boxes.mean(axis=(1, 3, 5)) + 0.5).astype(data.dtype)


def scipy_mode(data: np.ndarray) -> np.ndarray:
    from scipy.stats import mode

    z, y, x = (s // 2 for s in data.shape)
    boxes = data[: 2 * z, : 2 * y, : 2 * x].reshape(z, 2, y, 2, x, 2)
    flat = boxes.transpose(0, 2, 4, 1, 3, 5).reshape(-1, 8)
    return mode(flat, axis=1, keepdims=False).mode.reshape(z, y, x).astype(data.dtype)


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def blockwise_pyramid(
    work: Path, name: str, data: np.ndarray, method: str
) -> tuple[float, float, list]:
    root = zarr.open_group(str(work / "p.zarr"), mode="a")
    s0 = root.create_dataset(
        f"{name}/s0", data=data, chunks=(64, 64, 64), dimension_separator="/", overwrite=True
    )
    s0.attrs["offset"] = [0, 0, 0]
    s0.attrs["resolution"] = [10, 10, 10]
    levels = create_pyramid_levels(root, name, volume_of_array(s0), 2, (32, 32, 32), method)
    start = time.perf_counter()
    voxels = 0
    for fine, coarse in itertools.pairwise(levels):
        step = Coordinate(64, 64, 64) * coarse.voxel_size
        for begin in itertools.product(
            *(
                range(b, e, s)
                for b, e, s in zip(coarse.roi.begin, coarse.roi.end, step, strict=True)
            )
        ):
            downsample_block(fine, coarse, Roi(begin, step).intersect(coarse.roi), 2, method)
        voxels += int(np.prod(list(fine.roi.shape / fine.voxel_size)))
    seconds = time.perf_counter() - start
    return seconds, voxels / 1e6, [level.array[...] for level in levels]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=os.environ.get("BLOCKWISE_DATA", "../shared/data"))
    args = parser.parse_args()
    with h5py.File(Path(args.data) / "fib25_training_sample2.h5", "r") as f:
        raw = f["raw"][...]
        labels = f["labels"][...]
    mvox = raw.size / 1e6
    print(f"FIB-25 {raw.shape}: {mvox:.1f} MVox, factor 2")
    print(f"{'kernel':<34}{'s':>8}{'MVox/s':>9}")
    ours, t_ours = timed(downsample, raw, 2, "mean")
    ref, t_ref = timed(numpy_mean, raw)
    assert np.array_equal(ours, ref)
    print(f"{'mean uint8: blockwise':<34}{t_ours:>8.3f}{mvox / t_ours:>9.1f}")
    print(f"{'mean uint8: numpy reshape-mean':<34}{t_ref:>8.3f}{mvox / t_ref:>9.1f}")
    ours, t_ours = timed(downsample, labels, 2, "mode")
    ref, t_ref = timed(scipy_mode, labels)
    assert np.array_equal(ours, ref)
    print(f"{'mode uint64: blockwise':<34}{t_ours:>8.3f}{mvox / t_ours:>9.1f}")
    print(f"{'mode uint64: scipy.stats.mode':<34}{t_ref:>8.3f}{mvox / t_ref:>9.1f}")
    print(f"{'pyramid (zarr, 64^3 blocks)':<34}{'s':>8}{'MVox/s':>9}{'levels':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, data, method in (("raw", raw, "mean"), ("labels", labels, "mode")):
            seconds, read_mvox, levels = blockwise_pyramid(Path(tmp), name, data, method)
            start = time.perf_counter()
            current = data
            for level in levels[1:]:
                current = downsample(current, 2, method)
                assert np.array_equal(current, level)
            whole = time.perf_counter() - start
            print(
                f"{name + ': block-wise':<34}{seconds:>8.3f}{read_mvox / seconds:>9.1f}"
                f"{len(levels):>8}"
            )
            print(
                f"{name + ': whole array in memory':<34}{whole:>8.3f}{read_mvox / whole:>9.1f}"
                f"{len(levels):>8}"
            )


if __name__ == "__main__":
    main()
