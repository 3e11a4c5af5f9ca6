"""Evaluation of several thresholds: the ground truth numbered once per block, or per threshold.

``evaluate_many`` (what the evaluate stage and ``blockwise evaluate`` run)
numbers a block's ground truth once (:func:`blockwise.evaluation.dense_ids`)
and hands it to every segmentation's :class:`~blockwise.evaluation.OverlapTable`;
before 2026-12-01 07:35 UTC each threshold numbered it again. This counts the
overlap tables of every segmentation of a run, over the whole region in one
block, both ways, alternating, in one process, checks that the tables are
identical, and prints the seconds of each repeat.

Not collected by pytest; run after a run that wrote segmentations, e.g.

    BLOCKWISE_DATA=../shared/data blockwise run configs/fib25_demo.yaml
    python tests/benchmarks/bench_evaluate_thresholds.py runs/fib25_demo/output.zarr \\
        ../shared/data/fib25_training_sample2.h5:labels [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from blockwise.evaluation import OverlapTable, dense_ids, parse_dataset_arg
from blockwise.volume import open_volume


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_zarr", type=Path, help="a run's output.zarr")
    parser.add_argument("ground_truth", help="FILE:DATASET of the ground truth")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    root = args.output_zarr / "segmentation"
    names = sorted(n for n in os.listdir(root) if not n.startswith("."))
    segs = {
        n: open_volume(parse_dataset_arg(f"{args.output_zarr}:segmentation/{n}"), None)
        for n in names
    }
    roi = segs[names[0]].roi
    gt = open_volume(parse_dataset_arg(args.ground_truth), None).read(roi)
    arrays = {n: s.read(roi) for n, s in segs.items()}
    print(f"{len(names)} segmentations of {gt.shape} voxels ({gt.size / 1e6:.1f} MVox)")
    for repeat in range(args.repeats):
        started = time.perf_counter()
        separate = {n: OverlapTable() for n in names}
        for n in names:
            separate[n].add(gt, arrays[n])
        middle = time.perf_counter()
        shared = {n: OverlapTable() for n in names}
        ids = dense_ids(gt.ravel())
        for n in names:
            shared[n].add(gt, arrays[n], ground_truth_ids=ids)
        ended = time.perf_counter()
        for n in names:
            for a, b in zip(separate[n].table(), shared[n].table(), strict=True):
                np.testing.assert_array_equal(a, b)
        print(
            f"repeat {repeat + 1}: numbered per threshold {middle - started:.2f} s, "
            f"once {ended - middle:.2f} s (ratio {(middle - started) / (ended - middle):.2f}x), "
            "tables identical"
        )


if __name__ == "__main__":
    main()
