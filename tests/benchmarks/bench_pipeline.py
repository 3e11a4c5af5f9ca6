"""Benchmark: affinities -> fragments -> agglomeration -> segmentation, blockwise vs waterz 0.10.1.

Both pipelines start from the same float32 affinities (value / 255) and end with
one segmentation per threshold (0.3, 0.5, 0.6, 0.7):

* ours: ``blockwise.fragments.fragments_from_affinities`` (voxel size 10 nm,
  ``boundary_threshold=0.5``, ``min_seed_distance_nm=100``,
  ``min_fragment_size_vx=50``), then ``merge_regions`` once to the largest
  threshold, then ``segment`` at every threshold;
* waterz: ``waterz.agglomerate(affs, thresholds, scoring_function=...,
  discretize_queue=0)`` with its own watershed (default ``aff_threshold_low``
  and ``aff_threshold_high``), one segmentation per threshold from its generator;

with mean-affinity scoring and the 50% histogram quantile (256 bins, no
``InitWithMax``), on

1. the evaluation half (z >= 125, 7.8 MVox) of the FIB-25 predicted affinities
   (``fib25_baseline_affs.h5``) against ``fib25_training_sample2.h5`` labels;
2. a synthetic volume of 31 MVox: the FIB-25 labels followed along z by their
   mirror image (continuous at the seam; bodies cut by the seam keep their id,
   all others get new ids in the copy), with affinities from
   ``blockwise.synthetic.synthesize_affinities(labels, seed=0)``.

Every method runs in a fresh subprocess that first loads its inputs (affinities
and ground truth, from .npy files prepared by another subprocess), so its peak
RSS (``ru_maxrss``) is its own; the RSS after loading is printed too, and the
difference is what the method itself added. The seconds cover fragments,
agglomeration and segmentation at all thresholds, not reading files and not
the scoring: VOI split / merge (bits) and adapted Rand error against the ground
truth, ignoring ground-truth label 0 (``blockwise.metrics``, which matches
scikit-image), are counted between the timed steps in slabs of about 0.25 MVox, so
that they add little to the peak. waterz's counts of fragments and edges are
those of its initial watershed and region graph (the segmentation and
``return_region_graph`` at threshold 0, where nothing has merged yet), taken in
an extra untimed call after the measured one.

The machine is shared: compare the two methods of one run (the ratio lines),
never absolute seconds across runs. Not collected by pytest; run as

    python tests/benchmarks/bench_pipeline.py [--data DIR] [--quick] [--json PATH]

with the data folder from ``--data`` or ``$BLOCKWISE_DATA`` (default
``/work/shared/data``). ``--quick`` runs only FIB-25 with mean scoring.
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
from typing import Any

import numpy as np

THRESHOLDS = (0.3, 0.5, 0.6, 0.7)
VOXEL_SIZE_NM = (10, 10, 10)
FRAGMENT_ARGS: dict[str, Any] = {
    "boundary_threshold": 0.5,
    "min_seed_distance_nm": 100,
    "min_fragment_size_vx": 50,
}
METHODS = ("ours", "waterz")
SCORINGS: dict[str, dict[str, Any]] = {
    "mean": {
        "ours": {"kind": "mean"},
        "waterz": "OneMinus<MeanAffinity<RegionGraphType, ScoreValue>>",
    },
    "hist_quantile_50": {
        "ours": {"kind": "histogram_quantile", "quantile": 50, "init_with_max": False},
        "waterz": (
            "OneMinus<HistogramQuantileAffinity<RegionGraphType, 50, ScoreValue, 256, false>>"
        ),
    },
}
DATASETS = {
    "fib25": "FIB-25 eval half (z >= 125), predicted affinities",
    "synthetic": "FIB-25 labels + mirror along z, synthetic affinities (seed 0)",
}
# waterz 0.10.1 on the FIB-25 eval half, from the data folder's README:
# (scoring, threshold) -> (VOI split, VOI merge, ARAND)
README_WATERZ_FIB25 = {
    ("mean", 0.3): (3.175, 0.648, 0.301),
    ("mean", 0.5): (1.924, 0.875, 0.289),
    ("mean", 0.6): (1.494, 1.043, 0.295),
    ("mean", 0.7): (1.094, 1.428, 0.314),
    ("hist_quantile_50", 0.3): (2.721, 0.684, 0.289),
    ("hist_quantile_50", 0.5): (2.025, 0.840, 0.282),
    ("hist_quantile_50", 0.6): (1.614, 1.001, 0.290),
    ("hist_quantile_50", 0.7): (1.256, 1.322, 0.314),
}
# the README's figures have 3 decimals
README_TOLERANCE = 0.002
METRICS_SLAB_VOXELS = 1 << 18


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --- inputs (run in a subprocess of their own) -----------------------------------------------


def _mirrored_labels(labels: np.ndarray) -> np.ndarray:
    """``labels`` followed along z by its mirror image, continuous at the seam.

    A body that touches the seam (the last z-section) is one body across it;
    every other body of the copy gets a new id, so that no id names two
    separate objects.
    """
    mirror = labels[::-1]
    offset = int(labels.max()) + 1
    copy = np.where(mirror != 0, mirror + offset, 0).astype(labels.dtype)
    at_seam = np.isin(mirror, np.unique(labels[-1]))
    copy[at_seam] = mirror[at_seam]
    return np.concatenate([labels, copy], axis=0)


def _prepare(dataset: str, data: Path, folder: Path) -> dict[str, Any]:
    """Write ``affs.npy`` (float32) and ``gt.npy`` (uint32) for ``dataset`` into ``folder``."""
    import h5py

    with h5py.File(data / "fib25_training_sample2.h5", "r") as f:
        labels = f["labels"][:]
    if dataset == "fib25":
        with h5py.File(data / "fib25_baseline_affs.h5", "r") as f:
            affs_u8 = f["affs"][:, 125:]
        labels = labels[125:]
    else:
        from blockwise.synthetic import synthesize_affinities

        labels = _mirrored_labels(labels)
        affs_u8 = synthesize_affinities(labels, seed=0)
    if labels.max() >= 2**32:
        raise ValueError("ground-truth ids do not fit uint32")
    affs = affs_u8.astype(np.float32)
    affs /= 255
    np.save(folder / "affs.npy", np.ascontiguousarray(affs))
    np.save(folder / "gt.npy", labels.astype(np.uint32))
    return {
        "shape": list(labels.shape),
        "voxels": int(labels.size),
        "gt_bodies": int(np.unique(labels[labels != 0]).size),
    }


# --- one method (run in a fresh subprocess) --------------------------------------------------


def _evaluate(gt: np.ndarray, segmentation: np.ndarray) -> dict[str, float]:
    """VOI split / merge and adapted Rand error, counted slab by slab (label 0 ignored)."""
    from blockwise.metrics import Contingency, scores

    contingency = Contingency()
    step = max(1, METRICS_SLAB_VOXELS // (gt.shape[1] * gt.shape[2]))
    for z in range(0, gt.shape[0], step):
        contingency.add(gt[z : z + step], segmentation[z : z + step])
    result = scores(contingency)
    _, seg, _ = contingency.table()
    return {
        "voi_split": result.voi_split,
        "voi_merge": result.voi_merge,
        "arand": result.arand,
        # distinct segment ids on voxels with a ground-truth label (nearly all)
        "segments": int(np.unique(seg).size),
    }


def _run_ours(
    affs: np.ndarray, gt: np.ndarray, scoring: str, thresholds: list[float]
) -> dict[str, Any]:
    from blockwise.fragments import fragments_from_affinities
    from blockwise.kernels.region_merging import Scoring, merge_regions, segment

    start = time.perf_counter()
    fragments, n_fragments = fragments_from_affinities(affs, VOXEL_SIZE_NM, **FRAGMENT_ARGS)
    fragmented = time.perf_counter()
    peak_after_fragments = _peak_rss_mib()
    graph = merge_regions(
        affs[:3],
        fragments,
        threshold=max(thresholds),
        scoring=Scoring(**SCORINGS[scoring]["ours"]),
    )
    merged = time.perf_counter()
    stages = {
        "fragments_s": fragmented - start,
        "merge_regions_s": merged - fragmented,
        "peak_rss_after_fragments_mib": peak_after_fragments,
    }
    seconds = merged - start
    segment_seconds = 0.0
    peak_before_metrics = None
    per_threshold = {}
    for threshold in thresholds:
        begin = time.perf_counter()
        segmentation = segment(fragments, graph, threshold)
        segment_seconds += time.perf_counter() - begin
        if peak_before_metrics is None:
            peak_before_metrics = _peak_rss_mib()
        per_threshold[str(threshold)] = _evaluate(gt, segmentation)
        del segmentation
    stages["segment_s"] = segment_seconds
    return {
        "seconds": seconds + segment_seconds,
        "stages": stages,
        "peak_rss_mib": _peak_rss_mib(),
        "peak_rss_before_metrics_mib": peak_before_metrics,
        "fragments": n_fragments,
        "edges": int(graph.u.size),
        "merges": graph.n_merges,
        "thresholds": per_threshold,
    }


def _run_waterz(
    affs: np.ndarray, gt: np.ndarray, scoring: str, thresholds: list[float]
) -> dict[str, Any]:
    import waterz

    function = SCORINGS[scoring]["waterz"]
    seconds = 0.0
    peak_before_metrics = None
    per_threshold = {}
    begin = time.perf_counter()
    # the watershed, region graph and first merges run in the first next()
    steps = waterz.agglomerate(
        affs, list(thresholds), scoring_function=function, discretize_queue=0
    )
    seconds += time.perf_counter() - begin
    for threshold in sorted(thresholds):
        begin = time.perf_counter()
        segmentation = next(steps)  # the same array every time, merged further in place
        seconds += time.perf_counter() - begin
        if peak_before_metrics is None:
            peak_before_metrics = _peak_rss_mib()
        per_threshold[str(threshold)] = _evaluate(gt, segmentation)
    begin = time.perf_counter()
    for _ in steps:  # let the generator free waterz's state
        pass
    seconds += time.perf_counter() - begin
    del segmentation, steps
    peak = _peak_rss_mib()

    # untimed: the initial watershed and region graph (threshold 0 merges nothing)
    initial, region_graph = next(
        waterz.agglomerate(
            affs, [0.0], scoring_function=function, discretize_queue=0, return_region_graph=True
        )
    )
    return {
        "seconds": seconds,
        "stages": {},
        "peak_rss_mib": peak,
        "peak_rss_before_metrics_mib": peak_before_metrics,
        "fragments": int(np.unique(initial[initial != 0]).size),
        "edges": len(region_graph),
        "thresholds": per_threshold,
    }


def _worker(method: str, scoring: str, folder: Path, out: Path) -> None:
    import blockwise.metrics  # noqa: F401  (before the baseline: both methods score with it)

    affs = np.load(folder / "affs.npy")
    gt = np.load(folder / "gt.npy")
    inputs_rss = _peak_rss_mib()
    run = _run_ours if method == "ours" else _run_waterz
    result = run(affs, gt, scoring, list(THRESHOLDS))
    result["inputs_rss_mib"] = inputs_rss
    out.write_text(json.dumps(result))


# --- driver ----------------------------------------------------------------------------------


def _subprocess(args: list[str], out: Path) -> dict[str, Any]:
    """Run this script with ``args`` in a fresh process; it writes its result to ``out``.

    The driver never loads a volume, so a child's peak RSS is its own. stdout is
    discarded (waterz prints its progress there from C++).
    """
    completed = subprocess.run(
        [sys.executable, __file__, *args, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        sys.stderr.write(completed.stderr)
        raise SystemExit(f"{' '.join(args)} failed with exit status {completed.returncode}")
    return json.loads(out.read_text())


def _voi_sum(scores: dict[str, float]) -> float:
    return scores["voi_split"] + scores["voi_merge"]


def _print_dataset(name: str, info: dict[str, Any], results: dict[str, dict[str, Any]]) -> None:
    mvox = info["voxels"] / 1e6
    print()
    print(
        f"== {name}: {DATASETS[name]}; shape (z, y, x) {tuple(info['shape'])}, {mvox:.2f} MVox, "
        f"{info['gt_bodies']} ground-truth bodies"
    )
    header = (
        f"{'method':<7} {'scoring':<17} {'seconds':>8} {'MVox/s':>7} {'peak RSS MiB':>13} "
        f"{'inputs MiB':>11} {'added MiB':>10} {'fragments':>10} {'edges':>9}"
    )
    print(header)
    print("-" * len(header))
    for scoring, by_method in results.items():
        for method, r in by_method.items():
            print(
                f"{method:<7} {scoring:<17} {r['seconds']:8.2f} {mvox / r['seconds']:7.2f} "
                f"{r['peak_rss_mib']:13.0f} {r['inputs_rss_mib']:11.0f} "
                f"{r['peak_rss_mib'] - r['inputs_rss_mib']:10.0f} {r['fragments']:10d} "
                f"{r['edges']:9d}"
            )
    for scoring, by_method in results.items():
        stages = by_method["ours"]["stages"]
        print(
            f"ours    {scoring:<17} stages: fragments {stages['fragments_s']:.2f} s, "
            f"merge_regions {stages['merge_regions_s']:.2f} s "
            f"({by_method['ours']['merges']} merges), segment x{len(THRESHOLDS)} "
            f"{stages['segment_s']:.2f} s; peak RSS after fragments "
            f"{stages['peak_rss_after_fragments_mib']:.0f} MiB"
        )

    print()
    header = (
        f"{'method':<7} {'scoring':<17} {'threshold':>9} {'VOI split':>10} {'VOI merge':>10} "
        f"{'VOI sum':>8} {'ARAND':>7} {'segments':>9}"
    )
    print(header)
    print("-" * len(header))
    for scoring, by_method in results.items():
        for method, r in by_method.items():
            for threshold, s in r["thresholds"].items():
                print(
                    f"{method:<7} {scoring:<17} {threshold:>9} {s['voi_split']:10.3f} "
                    f"{s['voi_merge']:10.3f} {_voi_sum(s):8.3f} {s['arand']:7.3f} "
                    f"{s['segments']:9d}"
                )

    print()
    for scoring, by_method in results.items():
        ours, theirs = by_method["ours"], by_method["waterz"]
        added_ours = ours["peak_rss_mib"] - ours["inputs_rss_mib"]
        added_theirs = theirs["peak_rss_mib"] - theirs["inputs_rss_mib"]
        print(
            f"{scoring}: ours/waterz: speed {theirs['seconds'] / ours['seconds']:.2f}x "
            f"(>1: ours faster), peak RSS {ours['peak_rss_mib'] / theirs['peak_rss_mib']:.2f}x "
            f"(above the inputs {added_ours / added_theirs:.2f}x)"
        )
        for threshold, s in ours["thresholds"].items():
            mine, other = _voi_sum(s), _voi_sum(theirs["thresholds"][threshold])
            verdict = "lower" if mine < other else "NOT lower"
            print(
                f"  t={threshold}: our VOI sum {mine:.3f} vs waterz {other:.3f}: {verdict} "
                f"(ARAND {s['arand']:.3f} vs {theirs['thresholds'][threshold]['arand']:.3f})"
            )
        for method, r in by_method.items():
            if r["peak_rss_mib"] > 1.01 * r["peak_rss_before_metrics_mib"]:
                print(
                    f"  note: {method}'s peak RSS rose after its first segmentation, from "
                    f"{r['peak_rss_before_metrics_mib']:.0f} MiB; later steps or the "
                    f"metrics between them may be in it"
                )


def _check_readme(results: dict[str, dict[str, Any]]) -> bool:
    """Compare waterz on FIB-25 with the figures of the data README; print the outcome."""
    print()
    print("sanity: waterz on FIB-25 vs the data README (VOI split / merge / ARAND)")
    all_match = True
    for scoring, by_method in results.items():
        for threshold, s in by_method["waterz"]["thresholds"].items():
            expected = README_WATERZ_FIB25[(scoring, float(threshold))]
            measured = (s["voi_split"], s["voi_merge"], s["arand"])
            match = all(
                abs(a - b) <= README_TOLERANCE for a, b in zip(measured, expected, strict=True)
            )
            all_match &= match
            print(
                f"  {scoring:<17} t={threshold}: measured "
                f"{' / '.join(f'{v:.3f}' for v in measured)}, README "
                f"{' / '.join(f'{v:.3f}' for v in expected)}: "
                f"{'reproduced' if match else 'DIFFERENT'}"
            )
    return all_match


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("BLOCKWISE_DATA", "/work/shared/data"))
    )
    parser.add_argument("--quick", action="store_true", help="only FIB-25 with mean scoring")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    # internal: the subprocesses
    parser.add_argument("--prepare", nargs=2, metavar=("DATASET", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--worker", nargs=3, metavar=("METHOD", "SCORING", "FOLDER"), help=argparse.SUPPRESS
    )
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.prepare:
        dataset, folder = args.prepare
        args.out.write_text(json.dumps(_prepare(dataset, args.data, Path(folder))))
        return
    if args.worker:
        method, scoring, folder = args.worker
        _worker(method, scoring, Path(folder), args.out)
        return

    datasets = ["fib25"] if args.quick else list(DATASETS)
    scorings = ["mean"] if args.quick else list(SCORINGS)
    print(
        f"thresholds {', '.join(map(str, THRESHOLDS))}; one fresh process per method; "
        f"ours: fragments {FRAGMENT_ARGS}, voxel size {VOXEL_SIZE_NM} nm; "
        "waterz: built-in watershed, discretize_queue=0"
    )
    report: dict[str, Any] = {"thresholds": list(THRESHOLDS), "datasets": {}}
    readme_ok = None
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        for dataset in datasets:
            folder = Path(tmp) / dataset
            folder.mkdir()
            out = Path(tmp) / "out.json"
            info = _subprocess(["--prepare", dataset, str(folder), "--data", str(args.data)], out)
            results: dict[str, dict[str, Any]] = {}
            for scoring in scorings:
                results[scoring] = {
                    method: _subprocess(["--worker", method, scoring, str(folder)], out)
                    for method in METHODS
                }
            _print_dataset(dataset, info, results)
            if dataset == "fib25":
                readme_ok = _check_readme(results)
            report["datasets"][dataset] = {"info": info, "results": results}
            for path in folder.iterdir():
                path.unlink()  # the synthetic inputs take 0.5 GB
    report["waterz_reproduces_readme"] = readme_ok
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"\nresults written to {args.json}")


if __name__ == "__main__":
    main()
