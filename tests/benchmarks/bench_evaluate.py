"""Block-wise evaluation vs scikit-image on the whole array: MVox/s and peak RSS.

The volume is FIB-25's ground truth mirrored ``--tiles`` times along each axis
(2 -> 500^3 = 125 MVox). The segmentation is a damaged copy: pairs of bodies
merged (ids // 2) and every body cut at x = 60, 180, ... nm-planes, so both
error kinds are large. Both are written to zarr (compressed, 64^3 chunks)
first (in a subprocess); the block-wise method reads them block by block, skimage gets the
whole arrays in memory (``variation_of_information`` + ``adapted_rand_error``,
ignoring label 0). Each method runs in its own subprocess so that its peak
RSS is its own; times include reading the data.

    python tests/benchmarks/bench_evaluate.py [--data DIR] [--tiles 2] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

KEYS = ("voi_split", "voi_merge", "arand")


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def mirrored(volume: np.ndarray, tiles: int) -> np.ndarray:
    """``volume`` tiled ``tiles`` times per axis, every other copy mirrored (no seams)."""
    out = volume
    for axis in range(3):
        parts = [out if i % 2 == 0 else np.flip(out, axis) for i in range(tiles)]
        out = np.concatenate(parts, axis=axis)
    return out


def prepare(data: Path, tiles: int, work: Path) -> None:
    import h5py
    import zarr

    with h5py.File(data / "fib25_training_sample2.h5", "r") as f:
        labels = f["labels"][...]
    gt = mirrored(labels, tiles)
    seg = gt // 2
    # skimage sizes its tables by the largest id: keep the cut-off halves' ids small
    half = np.uint64(int(seg.max()) + 1)
    seg += (np.arange(gt.shape[2]) // 12 % 2).astype(np.uint64)[None, None, :] * half
    root = zarr.open_group(str(work / "eval.zarr"), mode="w")
    for name, array in (("gt", gt), ("seg", seg)):
        d = root.create_dataset(name, data=array, chunks=(64, 64, 64))
        d.attrs["resolution"] = [10, 10, 10]
    print(f"prepared {gt.size / 1e6:.1f} MVox ({gt.shape})", flush=True)


def run_blockwise(work: Path, block: int) -> dict[str, float]:
    from blockwise.config import DatasetConfig
    from blockwise.evaluation import evaluate_volumes
    from blockwise.volume import open_volume

    store = work / "eval.zarr"
    seg = open_volume(DatasetConfig(file=store, dataset="seg"))
    gt = open_volume(DatasetConfig(file=store, dataset="gt"))
    start = time.perf_counter()
    result = evaluate_volumes(seg, gt, block_shape_vx=(block, block, block))
    seconds = time.perf_counter() - start
    s = result.scores
    return {
        "seconds": seconds,
        "voxels": float(seg.array.size),
        "voi_split": s.voi_split,
        "voi_merge": s.voi_merge,
        "arand": s.arand,
        "peak_rss_gb": peak_rss_gb(),
    }


def run_skimage(work: Path) -> dict[str, float]:
    import zarr
    from skimage.metrics import adapted_rand_error, variation_of_information

    root = zarr.open_group(str(work / "eval.zarr"), mode="r")
    start = time.perf_counter()
    gt = root["gt"][...].astype(np.int64)
    seg = root["seg"][...].astype(np.int64)
    split, merge = variation_of_information(gt, seg, ignore_labels=[0])
    are, _, _ = adapted_rand_error(gt, seg, ignore_labels=[0])
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "voxels": float(gt.size),
        "voi_split": float(split),
        "voi_merge": float(merge),
        "arand": float(are),
        "peak_rss_gb": peak_rss_gb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=os.environ.get("BLOCKWISE_DATA", "../shared/data"))
    parser.add_argument("--tiles", type=int, default=2)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--work", help="folder for the zarr volumes (default: a temp dir)")
    parser.add_argument(
        "--method", choices=["prepare", "blockwise", "skimage"], help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.method == "prepare":
        prepare(Path(args.data), args.tiles, Path(args.work))
        return
    if args.method:
        work = Path(args.work)
        result = (
            run_blockwise(work, args.block) if args.method == "blockwise" else run_skimage(work)
        )
        print(json.dumps(result))
        return
    # every step in its own subprocess: Linux carries a parent's peak RSS into
    # the ru_maxrss of the children it starts, so the parent must stay small
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        common = ["--work", str(work), "--block", str(args.block)]
        tiles = ["--tiles", str(args.tiles)]
        prepared = subprocess.run(
            [sys.executable, __file__, "--method", "prepare", "--data", args.data, *tiles, *common],
            capture_output=True,
            text=True,
            check=True,
        )
        print(prepared.stdout.strip())
        rows = {}
        for method in ("blockwise", "skimage"):
            out = subprocess.run(
                [sys.executable, __file__, "--method", method, *common],
                capture_output=True,
                text=True,
                check=True,
            )
            rows[method] = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"{'method':<12}{'MVox':>8}{'s':>8}{'MVox/s':>8}{'peak GB':>9}"
        f"{'VOI split':>11}{'VOI merge':>11}{'ARAND':>8}"
    )
    for method, r in rows.items():
        mvox = r["voxels"] / 1e6
        print(
            f"{method:<12}{mvox:>8.1f}{r['seconds']:>8.1f}{mvox / r['seconds']:>8.2f}"
            f"{r['peak_rss_gb']:>9.2f}{r['voi_split']:>11.4f}{r['voi_merge']:>11.4f}"
            f"{r['arand']:>8.4f}"
        )
    b, s = rows["blockwise"], rows["skimage"]
    print(
        f"speed ratio blockwise/skimage: {s['seconds'] / b['seconds']:.2f}x; "
        f"memory ratio: {b['peak_rss_gb'] / s['peak_rss_gb']:.3f}; "
        f"max score difference: {max(abs(b[k] - s[k]) for k in KEYS):.2e}"
    )


if __name__ == "__main__":
    main()
