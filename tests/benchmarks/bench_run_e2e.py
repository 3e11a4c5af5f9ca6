"""Benchmark: ``blockwise run`` end to end against what a user runs instead.

Two volumes (``--volume``):

* ``fib25`` (default): the full FIB-25 cube, the affinities
  ``fib25_baseline_affs.h5`` (250^3 = 15.6 MVox), scored on the held-out half
  z >= 125 against ``fib25_training_sample2.h5/labels``;
* ``synthetic``: a 400 x 500 x 500 = 100 MVox label volume made from the
  FIB-25 labels by mirroring them along z, then y, then x (continuous at every
  seam: a body cut by a seam keeps its id across it, every other body of a
  mirrored copy gets a new id) and keeping z < 400 (``--synthetic-shape``; the
  full 500^3 = 125 MVox took 14 min in all on the shared 2-core machine, so
  the default is the smallest volume >= 100 MVox); its affinities come from
  ``blockwise.synthetic.synthesize_affinities(labels, seed=0)``. Both are
  written once into the benchmark's temporary directory (``affs.h5/affs``,
  uint8, gzip 6, 64^3 chunks and ``resolution_nm`` 10 nm like the FIB-25
  file; ``labels.h5/labels``), and the segmentations are scored on the
  whole volume against those labels (the affinities are derived from them:
  no part of this volume was seen in training, there is nothing to hold out,
  and the scores say how well the pipeline recovers the answer it was handed,
  nothing about a real model).

Side by side in one invocation, each in its own subprocess, on the same
affinities and thresholds 0.3 / 0.5 / 0.6 / 0.7, evaluation switched off (the
numbers below are scored afterwards, outside the timings):

* ``hierarchical``: ``blockwise run`` of configs/fib25_demo.yaml (blocks of
  128^3, 2 worker processes, ``segments.method: hierarchical``), reading the HDF5
  input and writing fragments, graph, task files and segmentations;
* ``global``: the same with ``segments.method: global``;
  (``--block-shape Z Y X`` gives both other blocks: a block floods its
  context too, so larger blocks flood fewer voxels in all; ``--chunk-shape
  Z Y X`` other output chunks: every chunk of every array written is one
  file, and creating files is what a run's kernel time goes to);
* ``whole``: the same config with one block covering the volume, in-process
  (the whole-volume pipeline, the exact reference);
* ``waterz``: ``waterz.agglomerate`` (0.10.1, mean affinity) on the whole
  array, reading the same HDF5 file and writing its segmentations to zarr.

Printed per run of ``blockwise run``: where its time went, per stage (from
its ``summary.json``: the stage's wall time, its blocks' summed time, and
the wait before its first block, which is worker start-up where it could not
overlap the stage before).

Printed per method: wall seconds (the subprocess's, reading and writing
included), MVox/s, peak RSS (``ru_maxrss`` that ``wait4`` reports for the
method's process: the largest single process of its tree, workers included),
and VOI split / merge and adapted Rand at each threshold; plus the VOI between
the hierarchical and the whole-volume segmentation at each threshold (0 would
mean the block-wise run reproduces the whole-volume one exactly; fragments
differ where blocks cut basins, see the README), and the ratios
hierarchical / whole and waterz / hierarchical. A method whose process fails
is reported as FAILED (with its command) and the others still run; with
``--work DIR`` the inputs and every run directory (logs, summary.json) stay
in DIR for a look afterwards.

Not collected by pytest; run as

    BLOCKWISE_DATA=../shared/data python tests/benchmarks/bench_run_e2e.py \
        [--volume {fib25,synthetic}] [--block-shape Z Y X] [--chunk-shape Z Y X]
        [--json PATH]
        [--skip METHOD ...] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[2]
THRESHOLDS = [0.3, 0.5, 0.6, 0.7]
FIB25_EVAL_Z = 125
VOXEL_SIZE_NM = [10, 10, 10]
SYNTHETIC_SHAPE = (400, 500, 500)
# voxels read and counted at once when scoring (bounds the scorer's memory: ~0.5 GB)
SLAB_VOXELS = 1 << 24


class Sliceable(Protocol):
    """A numpy or zarr array: something with a shape that slices along z."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, key: Any) -> Any: ...


@dataclass(frozen=True)
class Volume:
    """The input every method reads, and what its segmentations are scored against.

    Attributes:
        name: ``fib25`` or ``synthetic``.
        affinities: HDF5 file holding ``affs`` (3, z, y, x) uint8.
        inputs: the config's ``inputs`` section reading ``affinities``.
        gt: ground-truth labels (z, y, x); 0 is unlabelled.
        eval_z: segmentations are scored on z >= ``eval_z`` (voxels).
        description: one line saying what the volume is.
    """

    name: str
    affinities: Path
    inputs: dict[str, Any]
    gt: np.ndarray
    eval_z: int
    description: str

    @property
    def mvox(self) -> float:
        return self.gt.size / 1e6

    @property
    def eval_region(self) -> str:
        return "whole volume" if self.eval_z == 0 else f"z >= {self.eval_z}"


def data_dir() -> Path:
    return Path(os.environ.get("BLOCKWISE_DATA", "/work/shared/data")).resolve()


def mirrored(labels: np.ndarray, axis: int) -> np.ndarray:
    """``labels`` followed along ``axis`` by its mirror image, continuous at the seam.

    A body that touches the seam (the last slice along ``axis``) is one body
    across it; every other body of the copy gets a new id, so that no id names
    two separate objects.
    """
    mirror = np.flip(labels, axis)
    offset = int(labels.max()) + 1
    if 2 * offset >= np.iinfo(labels.dtype).max:
        raise ValueError(f"mirrored ids would overflow {labels.dtype} (max id {offset - 1})")
    copy = np.where(mirror != 0, mirror + offset, 0).astype(labels.dtype)
    seam = np.take(labels, [labels.shape[axis] - 1], axis=axis)
    at_seam = np.isin(mirror, np.unique(seam))
    copy[at_seam] = mirror[at_seam]
    return np.concatenate([labels, copy], axis=axis)


def fib25_volume(data: Path) -> Volume:
    import h5py

    with h5py.File(data / "fib25_training_sample2.h5", "r") as f:
        gt = f["labels"][:]
    config = yaml.safe_load((ROOT / "configs" / "fib25_demo.yaml").read_text())
    return Volume(
        name="fib25",
        affinities=data / "fib25_baseline_affs.h5",
        inputs=config["inputs"],
        gt=gt,
        eval_z=FIB25_EVAL_Z,
        description=f"FIB-25 baseline affinities, {gt.shape} voxels",
    )


def synthetic_volume(data: Path, work: Path, shape: tuple[int, int, int]) -> Volume:
    """Mirror the FIB-25 labels to ``shape``, synthesize affinities, write both under ``work``."""
    import h5py

    from blockwise.synthetic import SOURCE, synthesize_affinities

    if any(not 0 < s <= 2 * 250 for s in shape):
        raise ValueError(f"--synthetic-shape must be in 1..500 per axis; received {list(shape)}")
    start = time.perf_counter()
    with h5py.File(data / "fib25_training_sample2.h5", "r") as f:
        source = f["labels"][:]
    if source.max() >= 2**28:
        raise ValueError(f"FIB-25 label ids reach {source.max()}; 8 mirrored copies need < 2**31")
    labels = source.astype(np.uint32)
    for axis in range(3):
        labels = mirrored(labels, axis)
    labels = np.ascontiguousarray(labels[: shape[0], : shape[1], : shape[2]])
    affs = synthesize_affinities(labels, seed=0)
    affinities = work / "affs.h5"
    with h5py.File(affinities, "w") as f:
        ds = f.create_dataset(
            "affs", data=affs, chunks=(3, 64, 64, 64), compression="gzip", compression_opts=6
        )
        ds.attrs["resolution_nm"] = VOXEL_SIZE_NM
        ds.attrs["offsets"] = [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]
        ds.attrs["axis_order"] = "czyx"
        ds.attrs["source"] = SOURCE
    del affs
    ground_truth = work / "labels.h5"
    with h5py.File(ground_truth, "w") as f:
        ds = f.create_dataset("labels", data=labels, chunks=(64, 64, 64))
        ds.attrs["resolution_nm"] = VOXEL_SIZE_NM
        ds.attrs["axis_order"] = "zyx"
    seconds = time.perf_counter() - start
    bodies = np.unique(labels).size - 1
    return Volume(
        name="synthetic",
        affinities=affinities,
        inputs={
            "affinities": {"file": str(affinities), "dataset": "affs"},
            "offsets": [[-1, 0, 0], [0, -1, 0], [0, 0, -1]],
            "ground_truth": {"file": str(ground_truth), "dataset": "labels"},
        },
        gt=labels,
        eval_z=0,
        description=(
            f"FIB-25 labels mirrored along z, y, x to {list(labels.shape)} voxels "
            f"({bodies} bodies), synthesize_affinities(seed=0); made and written in "
            f"{seconds:.1f} s"
        ),
    )


def write_config(work: Path, volume: Volume, name: str, **changes: Any) -> Path:
    config = yaml.safe_load((ROOT / "configs" / "fib25_demo.yaml").read_text())
    config["name"] = name
    config["run_dir"] = str(work / name)
    config["inputs"] = volume.inputs
    config["evaluate"] = {"enabled": False}
    config.setdefault("downsample", {})["enabled"] = False
    for section, values in changes.items():
        config[section] = {**config.get(section, {}), **values}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def whole_chunk_shape(shape: tuple[int, ...]) -> list[int]:
    """Output chunks of the one-block run: per axis the largest divisor of the extent <= 128."""
    return [max(d for d in range(1, min(s, 128) + 1) if s % d == 0) for s in shape]


# Runs one command and reports its wall time and its tree's peak RSS. A small
# process of its own, so that the peak cannot include the benchmark's: a child
# started by vfork + exec inherits its parent's high-water mark as its own.
MEASURE = """
import json, os, subprocess, sys, time
start = time.perf_counter()
process = subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(process.pid, 0)
wall = time.perf_counter() - start
with open(sys.argv[1], "w") as f:
    json.dump({"wall_s": wall, "peak_kib": usage.ru_maxrss}, f)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def timed(command: list[str], env: dict[str, str], work: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one command: its tree's largest process."""
    report = work / "measure.json"
    subprocess.run([sys.executable, "-c", MEASURE, str(report), *command], env=env, check=True)
    measured = json.loads(report.read_text())
    return measured["wall_s"], measured["peak_kib"] / 1024


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


def pair_table(
    a: Sliceable, b: Sliceable, z_begin: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel counts of the (a, b) label pairs on z >= ``z_begin``, sorted by (a, b).

    Reads both arrays slab by slab. Inside a slab each voxel's pair is packed
    into one uint64 and runs of equal pairs along the flattened slab are
    collapsed before the sort, which is what makes 125 MVox take seconds.
    """
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
    step = max(1, SLAB_VOXELS // int(np.prod(a.shape[1:])))
    parts_a, parts_b, parts_n = [], [], []
    for z in range(z_begin, a.shape[0], step):
        sa = np.asarray(a[z : z + step]).ravel().astype(np.uint64)
        sb = np.asarray(b[z : z + step]).ravel().astype(np.uint64)
        lookup_a = lookup_b = None
        if int(sa.max()).bit_length() + int(sb.max()).bit_length() > 64:
            # ids too large to pack: pack their ranks instead (slower: two more sorts)
            lookup_a, rank_a = np.unique(sa, return_inverse=True)
            lookup_b, rank_b = np.unique(sb, return_inverse=True)
            sa, sb = rank_a.astype(np.uint64), rank_b.astype(np.uint64)
        shift = int(sb.max()).bit_length()
        key = (sa << np.uint64(shift)) | sb
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        lengths = np.diff(np.r_[starts, key.size])
        keys, inverse = np.unique(key[starts], return_inverse=True)
        counts = np.bincount(inverse.ravel(), weights=lengths).astype(np.int64)
        ids_a = keys >> np.uint64(shift)
        ids_b = keys & np.uint64((1 << shift) - 1)
        if lookup_a is not None and lookup_b is not None:
            ids_a = lookup_a[ids_a.astype(np.intp)]
            ids_b = lookup_b[ids_b.astype(np.intp)]
        parts_a.append(ids_a)
        parts_b.append(ids_b)
        parts_n.append(counts)
    ids_a, ids_b, counts = map(np.concatenate, (parts_a, parts_b, parts_n))
    order = np.lexsort((ids_b, ids_a))
    ids_a, ids_b, counts = ids_a[order], ids_b[order], counts[order]
    starts = np.flatnonzero(np.r_[True, (ids_a[1:] != ids_a[:-1]) | (ids_b[1:] != ids_b[:-1])])
    return ids_a[starts], ids_b[starts], np.add.reduceat(counts, starts)


def scores(seg: Sliceable, volume: Volume) -> dict[str, float]:
    """VOI split / merge and adapted Rand of ``seg`` on the volume's evaluation region."""
    from blockwise.metrics import table_scores

    gt, ids, counts = pair_table(volume.gt, seg, volume.eval_z)
    labelled = gt != 0
    s = table_scores(gt[labelled], ids[labelled], counts[labelled])
    return {"voi_split": s.voi_split, "voi_merge": s.voi_merge, "arand": s.arand}


def voi_between(a: Sliceable, b: Sliceable) -> float:
    """VOI split + merge between two labelings of the whole volume (no label ignored)."""
    from blockwise.metrics import table_scores

    ids_a, ids_b, counts = pair_table(a, b)
    s = table_scores(ids_a + np.uint64(1), ids_b, counts)
    return s.voi_split + s.voi_merge


def segmentations(work: Path, method: str) -> list[Any]:
    """The method's segmentation at each threshold, as zarr arrays (read lazily)."""
    import zarr

    from blockwise.layout import RunLayout

    if method == "waterz":
        root = zarr.open_group(str(work / "waterz.zarr"), mode="r")
        return [root[f"t{t}"] for t in THRESHOLDS]
    root = zarr.open_group(str(work / method / "output.zarr"), mode="r")
    return [root[RunLayout.segmentation_dataset(t)] for t in THRESHOLDS]


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
    parser.add_argument("--volume", choices=["fib25", "synthetic"], default="fib25")
    parser.add_argument(
        "--synthetic-shape",
        nargs=3,
        type=int,
        default=list(SYNTHETIC_SHAPE),
        metavar=("Z", "Y", "X"),
        help="crop of the mirrored volume (voxels, at most 500 each; default 400 500 500)",
    )
    parser.add_argument(
        "--block-shape",
        nargs=3,
        type=int,
        default=None,
        metavar=("Z", "Y", "X"),
        help="extract_fragments blocks of the block-wise runs (voxels; default the demo "
        "config's 64 64 64); a multiple of the output chunks",
    )
    parser.add_argument(
        "--chunk-shape",
        nargs=3,
        type=int,
        default=None,
        metavar=("Z", "Y", "X"),
        help="output chunks of the block-wise runs (voxels; default the demo config's "
        "64 64 64): each chunk of each written array is one file",
    )
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument(
        "--work",
        help="keep inputs, configs and run directories in this (new or empty) folder "
        "instead of a temporary one removed at the end",
    )
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["hierarchical", "global", "whole", "waterz"],
        help="methods to leave out",
    )
    args = parser.parse_args()

    data = data_dir()
    env = {**os.environ, "BLOCKWISE_DATA": str(data)}
    blockwise = str(Path(sys.executable).with_name("blockwise"))
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if any(work.iterdir()):
            raise SystemExit(f"--work {work} is not empty; give a new or empty folder")
        if args.volume == "fib25":
            volume = fib25_volume(data)
        else:
            volume = synthetic_volume(data, work, tuple(args.synthetic_shape))
        mvox = volume.mvox
        results["volume"] = {
            "name": volume.name,
            "shape": list(volume.gt.shape),
            "mvox": round(mvox, 2),
            "scored_on": volume.eval_region,
            "description": volume.description,
        }
        results["block_shape_vx"] = args.block_shape or "fib25_demo.yaml's"
        results["chunk_shape_vx"] = args.chunk_shape or "fib25_demo.yaml's"
        print(f"volume {volume.name}: {volume.description}; {mvox:.1f} MVox")
        print(f"scores on the {volume.eval_region}; skipped: {args.skip or 'none'}")
        blocks: dict[str, Any] = (
            {"extract_fragments": {"block_shape_vx": args.block_shape}} if args.block_shape else {}
        )
        if args.chunk_shape:
            blocks["output"] = {"chunk_shape_vx": args.chunk_shape}
        if args.block_shape:
            print(f"block-wise runs with blocks of {args.block_shape} voxels")
        if args.chunk_shape:
            print(f"block-wise runs with output chunks of {args.chunk_shape} voxels")
        runs = {
            "hierarchical": (write_config(work, volume, "hierarchical", **blocks), []),
            "global": (
                write_config(work, volume, "global", segments={"method": "global"}, **blocks),
                [],
            ),
            "whole": (
                write_config(
                    work,
                    volume,
                    "whole",
                    extract_fragments={"block_shape_vx": list(volume.gt.shape)},
                    output={"chunk_shape_vx": whole_chunk_shape(volume.gt.shape)},
                ),
                ["--in-process"],
            ),
        }
        commands = {
            name: [blockwise, "run", str(config), "--no-progress", *extra]
            for name, (config, extra) in runs.items()
        }
        commands["waterz"] = [
            sys.executable, "-c", WATERZ, str(volume.affinities), str(work / "waterz.zarr")
        ]  # fmt: skip
        methods: list[str] = []
        for name, command in commands.items():
            if name in args.skip:
                continue
            try:
                wall, peak = timed(command, env, work)
            except subprocess.CalledProcessError as e:
                # report it and go on: the other methods' numbers still count
                results[name] = {"failed": f"exit status {e.returncode}"}
                where = (
                    f"run directory kept: {work / name}"
                    if args.work
                    else "rerun with --work DIR to keep its run directory"
                )
                shown = "the waterz script" if name == "waterz" else " ".join(command)
                print(f"{name:>12}: FAILED, exit status {e.returncode}: {shown} ({where})")
                continue
            methods.append(name)
            results[name] = {
                "seconds": round(wall, 2),
                "mvox_per_s": round(mvox / wall, 3),
                "peak_rss_mib": round(peak),
            }
            rate = mvox / wall
            print(f"{name:>12}: {wall:7.1f} s  {rate:6.2f} MVox/s  (peak RSS {peak:.0f} MiB)")
            if name in runs:
                results[name]["stages"] = stage_breakdown(work / name)
                print_breakdown(name, results[name]["stages"])
        for name in methods:
            start = time.perf_counter()
            results[name]["scores"] = {
                str(t): scores(seg, volume)
                for t, seg in zip(THRESHOLDS, segmentations(work, name), strict=True)
            }
            per_threshold = "  ".join(
                f"{t}: {v['voi_split']:.3f}/{v['voi_merge']:.3f}/{v['arand']:.3f}"
                for t, v in results[name]["scores"].items()
            )
            best = min(v["voi_split"] + v["voi_merge"] for v in results[name]["scores"].values())
            results[name]["best_voi_sum"] = round(best, 3)
            print(
                f"{name:>12}: best VOI sum ({volume.eval_region}) {best:.3f}; "
                f"VOI split/merge/ARAND {per_threshold} "
                f"(scored in {time.perf_counter() - start:.0f} s)"
            )
        if "hierarchical" in methods and "whole" in methods:
            import zarr

            a = zarr.open_group(str(work / "hierarchical" / "output.zarr"), mode="r")["fragments"]
            b = zarr.open_group(str(work / "whole" / "output.zarr"), mode="r")["fragments"]
            fragments_voi = voi_between(a, b)
            results["voi_fragments_blockwise_vs_whole"] = round(fragments_voi, 4)
            print(f"VOI(block-wise fragments, whole-volume fragments): {fragments_voi:.4f}")
            between = [
                voi_between(a, b)
                for a, b in zip(
                    segmentations(work, "hierarchical"), segmentations(work, "whole"), strict=True
                )
            ]
            results["voi_hierarchical_vs_whole"] = [round(v, 4) for v in between]
            print(f"VOI(hierarchical, whole) per threshold: {[round(v, 4) for v in between]}")
        if "hierarchical" in methods and "whole" in methods:
            ratio = results["hierarchical"]["seconds"] / results["whole"]["seconds"]
            print(f"ratio hierarchical / whole-volume in-process: {ratio:.2f}x")
        if "hierarchical" in methods and "waterz" in methods:
            ratio = results["waterz"]["seconds"] / results["hierarchical"]["seconds"]
            print(f"ratio waterz / hierarchical (>1: blockwise faster): {ratio:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
