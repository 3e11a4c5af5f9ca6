"""Time to first image of `blockwise view` on FIB-25-sized data in headless Chromium.

A run directory is laid out by hand from FIB-25 (250^3: raw uint8 in zarr,
ground truth uint64 from the HDF5 file, fragments and one segmentation uint64
in zarr, 64^3 chunks). The viewer starts in this process; the clock starts
when Chromium is launched on the viewer URL and stops when neuroglancer's own
screenshot (taken by the page once every visible chunk has arrived) comes
back and is not blank. Printed for the image layer alone (1 panel), then with
a segmentation (4 panels).

    python tests/benchmarks/bench_viewer.py [--data DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import yaml
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blockwise.viewer import open_viewer, run_layers, screenshot, stop_viewer

from headless_chromium import Browser, png_pixels


def make_run(data: Path, run_dir: Path) -> None:
    with h5py.File(data / "fib25_training_sample2.h5", "r") as f:
        raw = f["raw"][...]
        labels = f["labels"][...]
    inputs = zarr.open_group(str(run_dir.parent / "inputs.zarr"), mode="w")
    a = inputs.create_dataset("raw", data=raw, chunks=(64, 64, 64))
    a.attrs["resolution"] = [10, 10, 10]
    out = zarr.open_group(str(run_dir / "output.zarr"), mode="w")
    for name, array in (("fragments", labels * 2 + 1), ("segmentation/threshold_0.5000", labels)):
        d = out.create_dataset(name, data=array.astype(np.uint64), chunks=(64, 64, 64))
        d.attrs["resolution"] = [10, 10, 10]
        d.attrs["offset"] = [0, 0, 0]
    config = {
        "name": "bench_viewer",
        "run_dir": str(run_dir),
        "inputs": {
            "raw": {"file": str(run_dir.parent / "inputs.zarr"), "dataset": "raw"},
            "ground_truth": {"file": str(data / "fib25_training_sample2.h5"), "dataset": "labels"},
        },
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))


def first_image(run_dir: Path, profile: Path, with_segmentation: bool) -> tuple[float, float]:
    viewer = open_viewer(run_layers(run_dir))
    with viewer.txn() as s:
        if not with_segmentation:
            s.layout = "xy"
            for layer in s.layers:
                layer.visible = layer.name == "raw"
    try:
        start = time.perf_counter()
        with Browser(viewer.get_viewer_url(), profile):
            png = screenshot(viewer, (800, 600), timeout_s=300)
            seconds = time.perf_counter() - start
        pixels = png_pixels(png)
        data = np.any(pixels != pixels[0, 0], axis=2)
        assert data.mean() > 0.1 and pixels[data].std() > 10, "blank screenshot"
        return seconds, float(data.mean())
    finally:
        stop_viewer()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=os.environ.get("BLOCKWISE_DATA", "../shared/data"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        make_run(Path(args.data), run_dir)
        for segmentation in (False, True):
            seconds, covered = first_image(
                run_dir, Path(tmp) / f"profile{segmentation}", segmentation
            )
            what = "raw + segmentation, 4 panels" if segmentation else "raw only, xy panel"
            print(f"time to first image ({what}): {seconds:.2f} s ({covered:.0%} of pixels data)")


if __name__ == "__main__":
    main()
