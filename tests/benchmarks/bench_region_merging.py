"""Benchmark: blockwise region merging vs waterz 0.10.1, side by side.

On the evaluation half (z >= 125) of the FIB-25 predicted affinities, with
fixed fragments (components of mean affinity > 0.9, cut by an 8-voxel grid,
grown into the boundary), times

* ours: ``merge_regions`` to the threshold, then ``segment`` at it, and
* waterz: ``waterz.agglomerate(affs, [threshold], fragments=...)`` (one
  segmentation), with the same scoring function and ``discretize_queue=0``,

for mean affinity and the 50% histogram quantile. Every run is a fresh
subprocess that loads the prepared inputs from .npy files, so its peak RSS
(``ru_maxrss``) is that of one method alone; the inputs' own share is printed
as the baseline. Not collected by pytest; run as

    python tests/benchmarks/bench_region_merging.py [--data DIR] [--repeat N]

with the data folder from ``--data`` or ``$BLOCKWISE_DATA`` (default
``/work/shared/data``).
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

SCORINGS = {
    "mean": {
        "ours": {"kind": "mean"},
        "waterz": "OneMinus<MeanAffinity<RegionGraphType, ScoreValue>>",
    },
    "histogram_quantile_50": {
        "ours": {"kind": "histogram_quantile", "quantile": 50, "init_with_max": False},
        "waterz": (
            "OneMinus<HistogramQuantileAffinity<RegionGraphType, 50, ScoreValue, 256, false>>"
        ),
    },
}


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _fib25_fragments(affs: np.ndarray, cell: int = 8) -> np.ndarray:
    """The fixed fragments of tests/kernels/test_region_merging.py."""
    import scipy.ndimage as ndi

    labels, _ = ndi.label(affs.mean(axis=0) > 0.9)
    cells = [np.arange(s) // cell for s in labels.shape]
    cell_id = (cells[0][:, None, None] * 1000 + cells[1][None, :, None]) * 1000 + cells[2]
    key = np.where(labels > 0, labels.astype(np.int64) * 10**9 + cell_id, 0)
    _, inverse = np.unique(key, return_inverse=True)
    fragments = inverse.reshape(labels.shape).astype(np.uint64)
    nearest = ndi.distance_transform_edt(
        fragments == 0, return_distances=False, return_indices=True
    )
    return fragments[tuple(nearest)]


def _prepare(data: Path, folder: Path) -> dict:
    import h5py

    with h5py.File(data / "fib25_baseline_affs.h5", "r") as f:
        affs = f["affs"][:, 125:].astype(np.float32) / 255
    fragments = _fib25_fragments(affs)
    np.save(folder / "affs.npy", affs)
    np.save(folder / "fragments.npy", fragments)
    return {
        "shape": list(fragments.shape),
        "voxels": int(fragments.size),
        "fragments": int(np.unique(fragments[fragments > 0]).size),
    }


def _worker(method: str, scoring: str, folder: Path, threshold: float, repeat: int) -> dict:
    affs = np.load(folder / "affs.npy")
    fragments = np.load(folder / "fragments.npy")
    baseline = _peak_rss_mib()
    seconds = []
    if method == "ours":
        from blockwise.kernels.region_merging import Scoring, merge_regions, segment

        scoring_ours = Scoring(**SCORINGS[scoring]["ours"])
        merge_seconds = []
        graph = segmentation = None
        for _ in range(repeat):
            # drop the last run's results first, so that they do not count twice in the peak
            graph = segmentation = None
            start = time.perf_counter()
            graph = merge_regions(affs, fragments, threshold, scoring_ours)
            merged = time.perf_counter()
            segmentation = segment(fragments, graph, threshold)
            seconds.append(time.perf_counter() - start)
            merge_seconds.append(merged - start)
        extra = {"edges": int(graph.u.size), "merges": graph.n_merges}
        extra["merge_regions_s"] = min(merge_seconds)
    else:
        import waterz

        for _ in range(repeat):
            segmentation = None
            start = time.perf_counter()
            (segmentation,) = waterz.agglomerate(
                affs,
                [threshold],
                fragments=fragments.copy(),
                scoring_function=SCORINGS[scoring]["waterz"],
                discretize_queue=0,
            )
            seconds.append(time.perf_counter() - start)
        extra = {}
    peak = _peak_rss_mib()  # before counting the segments, which takes memory of its own
    return {
        "seconds": min(seconds),
        "segments": int(np.unique(segmentation[segmentation > 0]).size),
        "baseline_rss_mib": baseline,
        "peak_rss_mib": peak,
        **extra,
    }


def _run(*args: str) -> dict:
    """Run this script in a fresh process (a child starts with the peak RSS of
    its parent, so the parent never loads the volume) and return its result."""
    result = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=True
    )
    # waterz writes its progress to stdout; the result is the last line
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("BLOCKWISE_DATA", "/work/shared/data"))
    )
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "SCORING", "FOLDER"))
    parser.add_argument("--prepare", metavar="FOLDER")
    args = parser.parse_args()

    if args.worker:
        method, scoring, folder = args.worker
        print(json.dumps(_worker(method, scoring, Path(folder), args.threshold, args.repeat)))
        return
    if args.prepare:
        print(json.dumps(_prepare(args.data, Path(args.prepare))))
        return

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        info = _run("--prepare", str(folder), "--data", str(args.data))
        print(
            f"FIB-25 eval half, z >= 125: shape {tuple(info['shape'])}, "
            f"{info['voxels'] / 1e6:.2f} MVox, {info['fragments']} fragments, "
            f"threshold {args.threshold}, best of {args.repeat}, one thread each"
        )
        header = (
            f"{'scoring':<22} {'method':<7} {'seconds':>8} {'MVox/s':>8} {'peak RSS MiB':>13} "
            f"{'inputs MiB':>11} {'segments':>9}"
        )
        print(header)
        print("-" * len(header))
        for scoring in SCORINGS:
            results = {
                method: _run(
                    "--worker",
                    method,
                    scoring,
                    str(folder),
                    "--threshold",
                    str(args.threshold),
                    "--repeat",
                    str(args.repeat),
                )
                for method in ("ours", "waterz")
            }
            for method, r in results.items():
                print(
                    f"{scoring:<22} {method:<7} {r['seconds']:8.3f} "
                    f"{info['voxels'] / 1e6 / r['seconds']:8.1f} {r['peak_rss_mib']:13.0f} "
                    f"{r['baseline_rss_mib']:11.0f} {r['segments']:9d}"
                )
            ours, theirs = results["ours"], results["waterz"]
            print(
                f"{'':<22} ours: {ours['edges']} edges, {ours['merges']} merges, "
                f"merge_regions alone {ours['merge_regions_s']:.3f} s; "
                f"speed-up {theirs['seconds'] / ours['seconds']:.1f}x, "
                f"peak RSS {ours['peak_rss_mib'] / theirs['peak_rss_mib']:.2f}x of waterz's, "
                f"above the inputs "
                f"{(ours['peak_rss_mib'] - ours['baseline_rss_mib']):.0f} vs "
                f"{(theirs['peak_rss_mib'] - theirs['baseline_rss_mib']):.0f} MiB"
            )


if __name__ == "__main__":
    main()
