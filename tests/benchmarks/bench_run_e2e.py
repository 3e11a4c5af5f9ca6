"""Benchmark: ``blockwise run`` end to end on the full FIB-25 cube against what a user runs instead.

Side by side in one invocation, each in its own subprocess, on the same
affinities (``fib25_baseline_affs.h5``, 250^3 = 15.6 MVox) and thresholds
0.3 / 0.5 / 0.6 / 0.7, evaluation switched off (the numbers below are scored
afterwards, outside the timings):

* ``hierarchical``: ``blockwise run`` of configs/fib25_demo.yaml (64 blocks of
  64^3, 2 worker processes, ``segments.method: hierarchical``), reading the HDF5
  input and writing fragments, graph, task files and segmentations;
* ``global``: the same with ``segments.method: global``;
* ``whole``: the same config with one block covering the volume, in-process
  (the whole-volume pipeline, the exact reference);
* ``waterz``: ``waterz.agglomerate`` (0.10.1, mean affinity) on the whole
  array, reading the same HDF5 file, no writing.

Printed per run of ``blockwise run``: where its time went, per stage (from
its ``summary.json``: the stage's wall time, its blocks' summed time, and
the wait before its first block, which is worker start-up where it could not
overlap the stage before).

Printed per method: wall seconds (the subprocess's, reading and writing
included), MVox/s, peak RSS (``ru_maxrss`` of the process tree's largest
process), and VOI split / merge and adapted Rand on z >= 125 at each
threshold; plus the VOI between the hierarchical and the whole-volume
segmentation at each threshold (0 would mean the block-wise run reproduces
the whole-volume one exactly; fragments differ where blocks cut basins, see
the README), and the ratios hierarchical / whole and waterz / hierarchical.

Not collected by pytest; run as

    BLOCKWISE_DATA=../shared/data python tests/benchmarks/bench_run_e2e.py [--json PATH]
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
import yaml

ROOT = Path(__file__).resolve().parents[2]
THRESHOLDS = [0.3, 0.5, 0.6, 0.7]
EVAL_Z = 125


def data_dir() -> Path:
    return Path(os.environ.get("BLOCKWISE_DATA", "/work/shared/data")).resolve()


def write_config(work: Path, name: str, **changes: Any) -> Path:
    config = yaml.safe_load((ROOT / "configs" / "fib25_demo.yaml").read_text())
    config["name"] = name
    config["run_dir"] = str(work / name)
    config["evaluate"] = {"enabled": False}
    config.setdefault("downsample", {})["enabled"] = False
    for section, values in changes.items():
        config[section] = {**config.get(section, {}), **values}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and the largest child's peak RSS (MiB) of one command."""
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return wall, peak


WATERZ = """
import sys, h5py, numpy as np, waterz, zarr
with h5py.File(sys.argv[1], "r") as f:
    affs = f["affs"][:].astype(np.float32) / 255.0
segs = waterz.agglomerate(affs, [0.3, 0.5, 0.6, 0.7],
    scoring_function="OneMinus<MeanAffinity<RegionGraphType, ScoreValue>>")
root = zarr.open_group(sys.argv[2], mode="w")
for t, seg in zip([0.3, 0.5, 0.6, 0.7], segs):
    root.create_dataset(f"t{t}", data=seg.copy(), chunks=(64, 64, 64))
"""


def scores(seg: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    from blockwise.metrics import Contingency
    from blockwise.metrics import scores as metric_scores

    table = Contingency()
    table.add(gt[EVAL_Z:], seg[EVAL_Z:])
    s = metric_scores(table)
    return {"voi_split": s.voi_split, "voi_merge": s.voi_merge, "arand": s.arand}


def voi_between(a: np.ndarray, b: np.ndarray) -> float:
    from blockwise.metrics import Contingency
    from blockwise.metrics import scores as metric_scores

    table = Contingency()
    table.add(a.astype(np.uint64) + 1, b)  # no label is ignored
    s = metric_scores(table)
    return s.voi_split + s.voi_merge


def segmentations(run_dir: Path) -> list[np.ndarray]:
    import zarr

    from blockwise.layout import RunLayout

    root = zarr.open_group(str(run_dir / "output.zarr"), mode="r")
    return [root[RunLayout.segmentation_dataset(t)][:] for t in THRESHOLDS]


def stage_breakdown(run_dir: Path) -> list[dict[str, Any]]:
    """Per stage, from the run's summary.json: where its wall time went.

    ``wall_s`` runs from the stage's first block starting to its last ending;
    ``block_s`` sums its blocks' times (compute and I/O inside blocks);
    ``wait_s`` is the time from the previous stage's end (the run's start for
    the first) to this stage's first block: worker start-up and setup where
    the stage could not overlap its upstream.
    """
    summary = json.loads((run_dir / "summary.json").read_text())
    per_stage: dict[str, float] = {}
    for block in summary["blocks"]:
        per_stage[block["stage"]] = per_stage.get(block["stage"], 0.0) + (
            block["end_s"] - block["start_s"]
        )
    rows = []
    previous_end = 0.0
    for stage in summary["stages"]:
        start, end = stage["start_s"], stage["end_s"]
        if start is None or end is None:
            continue
        rows.append(
            {
                "stage": stage["name"],
                "blocks": stage["done"],
                "workers": stage["workers"],
                "wall_s": round(end - start, 2),
                "block_s": round(per_stage.get(stage["name"], 0.0), 2),
                "wait_s": round(max(start - previous_end, 0.0), 2),
            }
        )
        previous_end = max(previous_end, end)
    return rows


def print_breakdown(name: str, rows: list[dict[str, Any]]) -> None:
    print(f"  {name} per stage: wall s / summed block s / wait before its first block s")
    for r in rows:
        print(
            f"    {r['stage']:<20}{r['blocks']:>4} blocks {r['workers']} workers "
            f"{r['wall_s']:7.2f} {r['block_s']:8.2f} {r['wait_s']:6.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--skip", nargs="*", default=[], help="methods to leave out")
    args = parser.parse_args()
    import h5py

    data = data_dir()
    env = {**os.environ, "BLOCKWISE_DATA": str(data)}
    blockwise = str(Path(sys.executable).with_name("blockwise"))
    with h5py.File(data / "fib25_training_sample2.h5", "r") as f:
        gt = f["labels"][:]
    mvox = gt.size / 1e6
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        runs = {
            "hierarchical": (write_config(work, "hierarchical"), []),
            "global": (write_config(work, "global", segments={"method": "global"}), []),
            "whole": (
                write_config(
                    work,
                    "whole",
                    extract_fragments={"block_shape_vx": [250, 250, 250]},
                    output={"chunk_shape_vx": [125, 125, 125]},
                ),
                ["--in-process"],
            ),
        }
        segs: dict[str, list[np.ndarray]] = {}
        for name, (config, extra) in runs.items():
            if name in args.skip:
                continue
            wall, peak = timed([blockwise, "run", str(config), "--no-progress", *extra], env)
            segs[name] = segmentations(work / name)
            results[name] = {"seconds": round(wall, 2), "mvox_per_s": round(mvox / wall, 3)}
            rate = mvox / wall
            print(f"{name:>12}: {wall:7.1f} s  {rate:6.2f} MVox/s  (peak RSS {peak:.0f} MiB)")
            results[name]["stages"] = stage_breakdown(work / name)
            print_breakdown(name, results[name]["stages"])
        if "waterz" not in args.skip:
            out = work / "waterz.zarr"
            script = [sys.executable, "-c", WATERZ, str(data / "fib25_baseline_affs.h5"), str(out)]
            wall, _ = timed(script, env)
            import zarr

            root = zarr.open_group(str(out), mode="r")
            segs["waterz"] = [root[f"t{t}"][:] for t in THRESHOLDS]
            results["waterz"] = {"seconds": round(wall, 2), "mvox_per_s": round(mvox / wall, 3)}
            print(f"{'waterz':>12}: {wall:7.1f} s  {mvox / wall:6.2f} MVox/s")
        for name, seg_list in segs.items():
            results[name]["scores"] = {
                str(t): scores(seg, gt) for t, seg in zip(THRESHOLDS, seg_list, strict=True)
            }
            best = min(v["voi_split"] + v["voi_merge"] for v in results[name]["scores"].values())
            results[name]["best_voi_sum"] = round(best, 3)
            print(f"{name:>12}: best VOI sum (z >= {EVAL_Z}) {best:.3f}")
        if "hierarchical" in segs and "whole" in segs:
            import zarr

            a = zarr.open_group(str(work / "hierarchical" / "output.zarr"), mode="r")["fragments"]
            b = zarr.open_group(str(work / "whole" / "output.zarr"), mode="r")["fragments"]
            fragments_voi = voi_between(a[:], b[:])
            results["voi_fragments_blockwise_vs_whole"] = round(fragments_voi, 4)
            print(f"VOI(block-wise fragments, whole-volume fragments): {fragments_voi:.4f}")
            between = [
                voi_between(a, b) for a, b in zip(segs["hierarchical"], segs["whole"], strict=True)
            ]
            results["voi_hierarchical_vs_whole"] = [round(v, 4) for v in between]
            print(f"VOI(hierarchical, whole) per threshold: {[round(v, 4) for v in between]}")
        if "hierarchical" in results and "whole" in results:
            ratio = results["hierarchical"]["seconds"] / results["whole"]["seconds"]
            print(f"ratio hierarchical / whole-volume in-process: {ratio:.2f}x")
        if "hierarchical" in results and "waterz" in results:
            ratio = results["waterz"]["seconds"] / results["hierarchical"]["seconds"]
            print(f"ratio waterz / hierarchical (>1: blockwise faster): {ratio:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
