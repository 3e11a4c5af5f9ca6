"""Benchmark: what blockwise's scheduling costs per block, against bare daisy 2.0.

Two measurements, each run in its own subprocess (so that each driver's CPU
time and peak memory are its own):

1. **Overhead per block** (``--blocks``, default 2000 and 8000, each
   ``--repeats`` times): a run of one no-op stage over N blocks with W local
   workers,

   * ``blockwise``: ``blockwise.runner.run`` of a config whose only stage is
     a no-op (its block function returns at once). Everything else is the
     code a real run executes: the checks and state of ``prepare``, the daisy
     task ``blockwise.tasks`` builds (done markers, timeout, retries), the local
     profile's watched worker processes running the worker program, and per
     block ``StageWorker``'s failure records and per-block time log;
   * ``daisy``: bare daisy 2.0 with the same blocks and workers: one
     ``daisy.Task`` with a 1-argument no-op ``process_function`` (daisy's own
     worker subprocesses), ``tracking_path`` set as blockwise sets it, run
     with ``daisy.run_blockwise``;
   * ``daisy-rois``: the same, with a block function that reads
     ``block.read_roi`` and ``block.write_roi`` first, as every real daisy
     block function does (daisy builds a ``funlib`` ``Roi`` for each on first
     access, about 6 us; a blockwise worker needs both to cut and index its
     block). Printed as a second ratio beside the first, never instead of it.

   Printed for each N: wall seconds, split into the span from the first
   block's start to the last block's end (over blocks: the scheduling cost
   per block, workers running) and the rest (start-up of the driver and the
   workers, and the end of the run); blockwise / daisy per block. Target:
   per-block ratio <= 1.2. Block times come from blockwise's own per-block
   log (``summary.json``) and, for daisy, from the no-op function itself.
   The span includes the time until the last worker to start has begun its
   first block (a blockwise worker imports more than daisy's, so this skew
   is larger); "with every worker running" is the rest of the span over
   the blocks started in it: the cost per block once every worker is up.
   Also printed: the CPU seconds of the driver and of the workers (every
   process the driver started, ``RUSAGE_CHILDREN``), and their growth per
   block between the two sizes of a repeat (start-up cancels). On a shared
   machine CPU per block is steadier than wall time: other load slows the
   span, not the work a block costs.

2. **A 10^5-block run** (``--driver-blocks``, default 100000): the blockwise
   no-op run alone, measuring the driver's own CPU seconds (``getrusage`` of
   the driver process: its Python thread and daisy's scheduler threads, not
   the workers), their share of the wall time, CPU per block and the driver's
   peak RSS. With no-op blocks the workers do nothing but ask for blocks, so
   this is the driver's busiest case; for blocks of T seconds on W workers
   the driver's share of a core is about ``cpu_per_block * W / T``, printed
   for T = 1 s and 10 s. Target: < 5 % of a core while workers are busy.

The no-op stage is the module ``noop_stage`` written into the scratch
directory; a ``sitecustomize`` there makes it the only entry of the stage
registry in the driver and in every worker (the registry is otherwise the
library's own; nothing in ``blockwise/`` knows about this benchmark).

    python tests/benchmarks/bench_scheduling.py [--blocks 2000 8000] [--repeats 3]
        [--driver-blocks 100000] [--workers 2] [--json PATH] [--skip-driver]

The machine is shared and noisy: compare numbers of one invocation only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

#: one block is one output chunk of BLOCK^3 voxels (the config's minimum sensible block)
BLOCK = 4

NOOP_STAGE = '''
"""A stage whose blocks do nothing (bench_scheduling.py)."""
from funlib.geometry import Coordinate

from blockwise.stage import Stage, Tiling, single_function


def tiling(ctx):
    cfg = ctx.config.extract_fragments
    return Tiling(ctx.data_roi, ctx.voxel_size, Coordinate(cfg.block_shape_vx))


def noop(ctx, block):
    del ctx, block


_SEEN = []


def _write_span():
    import json, os
    out = os.environ.get("BENCH_SPAN_DIR")
    if out and _SEEN:
        with open(os.path.join(out, f"{os.getpid()}.json"), "w") as f:
            span = {"start": _SEEN[0], "end": _SEEN[-1], "blocks": len(_SEEN), "starts": _SEEN}
            json.dump(span, f)


def noop_block(block):
    """bare daisy's 1-argument block function (notes when it ran, written at exit)"""
    import atexit, time
    if not _SEEN:
        atexit.register(_write_span)
    _SEEN.append(time.time())
    del block


def noop_block_rois(block):
    """the same, reading the block's ROIs first, as every real daisy block function does"""
    block.read_roi, block.write_roi
    noop_block(block)


STAGE = Stage(name="noop", sections=(), upstream=(), tiling=tiling, setup=single_function(noop))
'''

SITECUSTOMIZE = """
import os
if os.environ.get("BENCH_NOOP_REGISTRY"):
    import blockwise.stages as _stages
    _stages.STAGE_MODULES.clear()
    _stages.STAGE_MODULES["noop"] = "noop_stage"
"""


def grid_for(blocks: int) -> tuple[int, int, int]:
    """A block grid of about ``blocks`` blocks (z, y, x), close to a cube."""
    side = round(blocks ** (1 / 3))
    z = max(1, round(blocks / (side * side)))
    return (z, side, side)


def prepare_inputs(work: Path, grid: tuple[int, int, int]) -> Path:
    """A uint8 affinities zarr covering ``grid`` blocks (values irrelevant: nothing reads them)."""
    import numpy as np
    import zarr

    shape = tuple(g * BLOCK for g in grid)
    path = work / f"affs_{'x'.join(map(str, grid))}.zarr"
    if not path.exists():
        root = zarr.open_group(str(path), mode="w")
        affs = root.create_dataset(
            "affs",
            shape=(3, *shape),
            chunks=(3, *(min(s, 64) for s in shape)),
            dtype="uint8",
        )
        affs[:] = np.full((3, *shape), 200, dtype=np.uint8)
        affs.attrs["resolution"] = [1, 1, 1]
        affs.attrs["offset"] = [0, 0, 0]
    return path


def write_config(work: Path, name: str, affs: Path, workers: int) -> Path:
    import yaml

    config = {
        "name": name,
        "run_dir": str(work / name),
        "inputs": {"affinities": {"file": str(affs), "dataset": "affs"}, "voxel_size": [1, 1, 1]},
        "output": {"chunk_shape_vx": [BLOCK] * 3},
        "extract_fragments": {"block_shape_vx": [BLOCK] * 3, "context_vx": [0, 0, 0]},
        "agglomerate": {"context_vx": [1, 1, 1]},
        "segments": {"thresholds": [0.5]},
        "evaluate": {"enabled": False},
        "execution": {"num_workers": workers},
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def steady_span(starts: list[list[float]], end: float) -> dict[str, float]:
    """The part of the block span in which every worker was running, and its blocks.

    Args:
        starts: per worker, when each of its blocks started (seconds).
        end: when the last block ended.

    Returns:
        ``steady_span_s`` (from the moment the last worker to start began its
        first block, to ``end``) and ``steady_blocks`` (the blocks started in it).
    """
    begin = max(min(s) for s in starts if s)
    return {
        "steady_span_s": end - begin,
        "steady_blocks": sum(1 for s in starts for t in s if t >= begin),
    }


def _children_cpu_s() -> float:
    """CPU seconds of this process's finished (waited-for) descendants: the workers."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def child_blockwise(config_path: str) -> dict[str, Any]:
    """Run the no-op stage through blockwise's runner in this process (the driver)."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    from blockwise.config import load_config
    from blockwise.runner import run

    config = load_config(config_path)
    before, children = resource.getrusage(resource.RUSAGE_SELF), _children_cpu_s()
    start = time.monotonic()
    result = run(config, progress=False)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    workers_cpu = _children_cpu_s() - children
    (stage,) = result.stages
    if not result.ok or stage.done != stage.total:
        raise RuntimeError(f"the no-op run did not finish: {result.summary()}")
    summary = json.loads((config.run_dir / "summary.json").read_text())
    starts = [b["start_s"] for b in summary["blocks"]]
    ends = [b["end_s"] for b in summary["blocks"]]
    by_worker: dict[str, list[float]] = {}
    for b in summary["blocks"]:
        by_worker.setdefault(b["worker"], []).append(b["start_s"])
    return {
        "blocks": stage.total,
        "wall_s": wall,
        "block_span_s": max(ends) - min(starts),
        **steady_span(list(by_worker.values()), max(ends)),
        "driver_cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "workers_cpu_s": workers_cpu,
        "driver_peak_rss_mib": after.ru_maxrss / 1024,
    }


def child_daisy(config_path: str, read_rois: bool = False) -> dict[str, Any]:
    """The same blocks and workers with bare daisy 2.0 (no blockwise code in the loop).

    ``read_rois``: the block function reads ``block.read_roi`` and
    ``block.write_roi`` (daisy builds a ``funlib`` ``Roi`` for each, about 6 us).
    """
    import daisy.v2 as daisy
    import yaml
    import zarr
    from funlib.geometry import Coordinate, Roi
    from noop_stage import noop_block, noop_block_rois

    config = yaml.safe_load(Path(config_path).read_text())
    affs = zarr.open_group(config["inputs"]["affinities"]["file"], mode="r")["affs"]
    total = Roi((0, 0, 0), affs.shape[1:])
    block = Roi((0, 0, 0), Coordinate([BLOCK] * 3))
    run_dir = Path(config["run_dir"])
    task = daisy.Task(
        "noop",
        total_roi=total,
        read_roi=block,
        write_roi=block,
        process_function=noop_block_rois if read_rois else noop_block,
        read_write_conflict=False,
        fit="shrink",
        max_workers=config["execution"]["num_workers"],
        max_retries=2,
        timeout=600,
        tracking_path=str(run_dir / "tracking"),
    )
    spans = run_dir / "spans"
    spans.mkdir(parents=True)
    os.environ["BENCH_SPAN_DIR"] = str(spans)  # the workers inherit it
    before, children = resource.getrusage(resource.RUSAGE_SELF), _children_cpu_s()
    start = time.monotonic()
    states = daisy.run_blockwise([task], progress=False, summary=False, return_states=True)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    workers_cpu = _children_cpu_s() - children
    state = states["noop"]
    if int(state.completed_count) != int(state.total_block_count):
        raise RuntimeError(f"bare daisy did not finish: {state}")
    seen = [json.loads(p.read_text()) for p in spans.glob("*.json")]
    if sum(s["blocks"] for s in seen) != int(state.total_block_count):
        raise RuntimeError(f"bare daisy's workers noted {seen}, not every block")
    return {
        "blocks": int(state.total_block_count),
        "wall_s": wall,
        "block_span_s": max(s["end"] for s in seen) - min(s["start"] for s in seen),
        **steady_span([s["starts"] for s in seen], max(s["end"] for s in seen)),
        "driver_cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "workers_cpu_s": workers_cpu,
        "driver_peak_rss_mib": after.ru_maxrss / 1024,
    }


def measure(work: Path, kind: str, blocks: int, workers: int, tag: str) -> dict[str, Any]:
    """One run in a subprocess; returns what it measured."""
    grid = grid_for(blocks)
    affs = prepare_inputs(work, grid)
    config = write_config(work, f"{kind}_{tag}", affs, workers)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(work), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["BENCH_NOOP_REGISTRY"] = "1"
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(config)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{kind} run of {blocks} blocks failed:\n{out.stdout}\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["grid"] = list(grid)
    return result


def cpu_slope_us(runs: list[dict[str, Any]], key: str) -> float | None:
    """Median over repeats of ``key``'s growth per block between the sizes, microseconds.

    The difference between the largest and the smallest run of one repeat:
    what start-up and the end of a run cost cancels. None with one size.
    """
    by_repeat: dict[int, list[dict[str, Any]]] = {}
    for r in runs:
        by_repeat.setdefault(r["repeat"], []).append(r)
    slopes = []
    for group in by_repeat.values():
        small = min(group, key=lambda r: r["blocks"])
        large = max(group, key=lambda r: r["blocks"])
        if large["blocks"] > small["blocks"]:
            slopes.append(1e6 * (large[key] - small[key]) / (large["blocks"] - small["blocks"]))
    return statistics.median(slopes) if slopes else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, nargs=2, default=[2000, 8000])
    parser.add_argument("--driver-blocks", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved repeats of the overhead runs (median)"
    )
    parser.add_argument("--skip-driver", action="store_true", help="only the overhead runs")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", nargs=2, metavar=("KIND", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        kind, config = args.child
        if kind == "blockwise":
            result = child_blockwise(config)
        else:
            result = child_daisy(config, read_rois=kind == "daisy-rois")
        sys.stdout.write(json.dumps(result) + "\n")
        return

    report: dict[str, Any] = {"workers": args.workers, "overhead": {}}
    with tempfile.TemporaryDirectory(prefix="bench_scheduling_") as tmp:
        work = Path(tmp)
        (work / "noop_stage.py").write_text(NOOP_STAGE)
        (work / "sitecustomize.py").write_text(SITECUSTOMIZE)
        runs: dict[str, list[dict[str, Any]]] = {"blockwise": [], "daisy": [], "daisy-rois": []}
        # interleaved, so that load on the shared machine hits both alike
        for repeat, n in [(r, n) for r in range(args.repeats) for n in args.blocks]:
            for kind in ("daisy", "daisy-rois", "blockwise"):
                r = measure(work, kind, n, args.workers, f"{n}_{repeat}")
                r["repeat"] = repeat
                r["per_block_ms"] = 1e3 * r["block_span_s"] / r["blocks"]
                r["steady_per_block_ms"] = 1e3 * r["steady_span_s"] / r["steady_blocks"]
                r["fixed_s"] = r["wall_s"] - r["block_span_s"]
                runs[kind].append(r)
                print(
                    f"{kind:10s} {r['blocks']:7d} blocks: {r['wall_s']:7.2f} s wall = "
                    f"{r['block_span_s']:6.2f} s from first block to last "
                    f"({r['per_block_ms']:.3f} ms per block; "
                    f"{r['steady_per_block_ms']:.3f} with every worker running) + "
                    f"{r['fixed_s']:5.2f} s start and end; "
                    f"CPU driver {r['driver_cpu_s']:6.2f} s, workers "
                    f"{r['workers_cpu_s']:6.2f} s; driver peak RSS "
                    f"{r['driver_peak_rss_mib']:.0f} MiB",
                    flush=True,
                )
        # medians over sizes and repeats: the machine is shared and noisy
        per_block = {k: statistics.median(r["per_block_ms"] for r in v) for k, v in runs.items()}
        steady = {
            k: statistics.median(r["steady_per_block_ms"] for r in v) for k, v in runs.items()
        }
        fixed = {k: statistics.median(r["fixed_s"] for r in v) for k, v in runs.items()}
        ratio = per_block["blockwise"] / per_block["daisy"]
        largest = runs["blockwise"][-1]["wall_s"] / runs["daisy"][-1]["wall_s"]
        print(
            f"medians: blockwise / daisy per block {ratio:.2f}x (target <= 1.2) "
            f"({per_block['blockwise']:.3f} / {per_block['daisy']:.3f} ms); start and end "
            f"{fixed['blockwise']:.2f} s / {fixed['daisy']:.2f} s; wall at "
            f"{runs['blockwise'][-1]['blocks']} blocks {largest:.2f}x"
        )
        print(
            "  against a daisy block function that reads its block's ROIs (as real ones do): "
            f"{per_block['blockwise'] / per_block['daisy-rois']:.2f}x "
            f"({per_block['blockwise']:.3f} / {per_block['daisy-rois']:.3f} ms)"
        )
        print(
            "medians with every worker running: blockwise / daisy per block "
            f"{steady['blockwise'] / steady['daisy']:.2f}x "
            f"({steady['blockwise']:.3f} / {steady['daisy']:.3f} ms)"
        )
        # CPU per block: the slope between the two sizes of one repeat (start-up cancels)
        cpu_us = {
            k: {part: cpu_slope_us(v, f"{part}_cpu_s") for part in ("workers", "driver")}
            for k, v in runs.items()
        }
        if all(c["workers"] is not None for c in cpu_us.values()):
            b, d, dr = cpu_us["blockwise"], cpu_us["daisy"], cpu_us["daisy-rois"]
            print(
                "medians: CPU per block (slope between the sizes): workers "
                f"{b['workers']:.0f} / {d['workers']:.0f} / {dr['workers']:.0f} us, driver "
                f"{b['driver']:.0f} / {d['driver']:.0f} / {dr['driver']:.0f} us "
                "(blockwise / daisy / daisy reading ROIs)"
            )
        report["overhead"] = {
            "runs": runs,
            "per_block_ms": per_block,
            "fixed_s": fixed,
            "per_block_ratio": ratio,
            "per_block_ratio_to_daisy_reading_rois": per_block["blockwise"]
            / per_block["daisy-rois"],
            "steady_per_block_ms": steady,
            "steady_per_block_ratio": steady["blockwise"] / steady["daisy"],
            "wall_ratio_largest": largest,
            "cpu_per_block_us": cpu_us,
        }

        if not args.skip_driver:
            r = measure(work, "blockwise", args.driver_blocks, args.workers, "driver")
            per_block = r["driver_cpu_s"] / r["blocks"]
            share = r["driver_cpu_s"] / r["wall_s"]
            print(
                f"blockwise {r['blocks']} no-op blocks, {args.workers} workers: "
                f"{r['wall_s']:.1f} s wall, driver CPU {r['driver_cpu_s']:.1f} s = "
                f"{1e3 * per_block:.3f} ms per block, "
                f"{100 * share:.1f} % of a core over the run; peak RSS "
                f"{r['driver_peak_rss_mib']:.0f} MiB"
            )
            for seconds in (1.0, 10.0):
                busy = per_block * args.workers / seconds
                print(
                    f"  with {seconds:g} s blocks on {args.workers} workers the driver would use "
                    f"{100 * busy:.2f} % of a core (target < 5 %)"
                )
            r["driver_cpu_ms_per_block"] = 1e3 * per_block
            r["driver_core_share"] = share
            report["driver"] = r
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
