"""Choose the main job's post-processing on the training half: a parameter sweep.

Runs ``blockwise run`` of ``configs/fib25_demo.yaml`` with the main job's
blocks and contexts (``configs/fib25_from_raw.yaml``: 64^3 blocks; 2 workers)
on given affinities (by default the main job's predicted ones,
``runs/fib25_from_raw/output.zarr/affinities``: run the main job first) once
per parameter set, with thresholds 0.30 to 0.80 in steps of 0.05, and scores
every threshold on both halves of FIB-25: z < 125 (training, where parameters
and threshold are chosen) and z >= 125 (held out, reported only). The sets:

* ``extract_fragments.boundary_threshold`` 0.4 / 0.5 / 0.6 x
  ``min_seed_distance_nm`` 60 / 100 / 150, mean scoring (``hierarchical``);
* 50th and 75th histogram-quantile scoring at 0.5 / 100 nm (``global``: the
  hierarchy refuses quantile scorings).

Prints, per set, the threshold with the lowest VOI sum on z < 125, that VOI,
and the held-out VOI and ARAND at the same threshold; then the set chosen on
z < 125. Run directories go to ``--work`` (kept); results also to ``--json``.

    BLOCKWISE_DATA=../shared/data python tests/benchmarks/sweep_postprocessing.py \\
        [--affinities ZARR:DATASET] [--work DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from funlib.geometry import Roi

from blockwise.evaluation import evaluate_many, parse_dataset_arg
from blockwise.volume import open_volume

ROOT = Path(__file__).resolve().parents[2]
THRESHOLDS = [round(0.3 + 0.05 * i, 2) for i in range(11)]
#: FIB-25 at 10 nm, split along z at 125 voxels
HALVES = {
    "train": Roi((0, 0, 0), (1250, 2500, 2500)),
    "eval": Roi((1250, 0, 0), (1250, 2500, 2500)),
}


def parameter_sets() -> list[dict[str, Any]]:
    sets = [
        {"boundary": b, "seed_nm": s, "scoring": {"kind": "mean"}, "method": "hierarchical"}
        for b, s in itertools.product([0.4, 0.5, 0.6], [60, 100, 150])
    ]
    sets += [
        {
            "boundary": 0.5,
            "seed_nm": 100,
            "scoring": {"kind": "histogram_quantile", "quantile": q},
            "method": "global",
        }
        for q in (50, 75)
    ]
    for p in sets:
        scoring = p["scoring"]["kind"] + str(p["scoring"].get("quantile", ""))
        p["name"] = f"bt{p['boundary']}_seed{p['seed_nm']}_{scoring}"
    return sets


def write_config(work: Path, data: Path, affinities: str, p: dict[str, Any]) -> Path:
    config = yaml.safe_load((ROOT / "configs" / "fib25_demo.yaml").read_text())
    main_job = yaml.safe_load((ROOT / "configs" / "fib25_from_raw.yaml").read_text())
    # the parameters are chosen for the main job: its tiling, not the demo's
    for section in ("extract_fragments", "agglomerate"):
        for key in ("block_shape_vx", "context_vx"):
            if key in main_job[section]:
                config[section][key] = main_job[section][key]
    file, dataset = affinities.rsplit(":", 1)
    config["name"] = p["name"]
    config["run_dir"] = str(work / p["name"])
    config["inputs"] = {
        "affinities": {"file": file, "dataset": dataset},
        "offsets": [[-1, 0, 0], [0, -1, 0], [0, 0, -1]],
        "ground_truth": {"file": str(data / "fib25_training_sample2.h5"), "dataset": "labels"},
    }
    config["extract_fragments"]["boundary_threshold"] = p["boundary"]
    config["extract_fragments"]["min_seed_distance_nm"] = p["seed_nm"]
    config["agglomerate"]["scoring"] = p["scoring"]
    config["segments"] = {"method": p["method"], "thresholds": THRESHOLDS}
    config["evaluate"] = {"enabled": False}
    config["downsample"] = {"enabled": False}
    path = work / f"{p['name']}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def score(run_dir: Path, data: Path) -> dict[str, dict[str, list[float]]]:
    """Per half and segmentation dataset: [VOI split, VOI merge, ARAND]."""
    gt = open_volume(parse_dataset_arg(f"{data / 'fib25_training_sample2.h5'}:labels"), None)
    root = run_dir / "output.zarr"
    names = sorted(n for n in os.listdir(root / "segmentation") if not n.startswith("."))
    segs = {n: open_volume(parse_dataset_arg(f"{root}:segmentation/{n}"), None) for n in names}
    out: dict[str, dict[str, list[float]]] = {}
    for half, roi in HALVES.items():
        results = evaluate_many(segs, gt, roi)
        out[half] = {
            n: [r.scores.voi_split, r.scores.voi_merge, r.scores.arand] for n, r in results.items()
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--affinities",
        default=str(ROOT / "runs" / "fib25_from_raw" / "output.zarr") + ":affinities",
        help="FILE:DATASET of uint8 affinities of the FIB-25 cube (default: the main job's)",
    )
    parser.add_argument("--work", help="keep the run directories here (default: a temporary one)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    data = Path(os.environ.get("BLOCKWISE_DATA", ROOT.parent / "shared" / "data"))
    blockwise = str(Path(sys.executable).with_name("blockwise"))
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for p in parameter_sets():
            config = write_config(work, data, args.affinities, p)
            start = time.perf_counter()
            run = subprocess.run(
                [blockwise, "run", str(config), "--no-progress"],
                capture_output=True,
                text=True,
                check=False,
                env={**os.environ, "BLOCKWISE_DATA": str(data)},
            )
            seconds = time.perf_counter() - start
            if run.returncode != 0:
                print(f"{p['name']}: FAILED\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
                continue
            scores = score(work / p["name"], data)
            train = scores["train"]
            chosen = min(train, key=lambda n: sum(train[n][:2]))
            held = scores["eval"][chosen]
            results[p["name"]] = {
                "parameters": p,
                "seconds": seconds,
                "scores": scores,
                "chosen": chosen,
            }
            print(
                f"{p['name']:28s} {seconds:5.1f} s; chosen on z < 125: {chosen} "
                f"(VOI {sum(train[chosen][:2]):.3f}) -> z >= 125 VOI {sum(held[:2]):.3f} "
                f"({held[0]:.3f} + {held[1]:.3f}), ARAND {held[2]:.3f}",
                flush=True,
            )
    if results:
        best = min(results.values(), key=lambda r: sum(r["scores"]["train"][r["chosen"]][:2]))
        print(f"chosen on z < 125: {best['parameters']['name']} at {best['chosen']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
