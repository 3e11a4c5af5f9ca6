"""Benchmark: the slurm execution profile on the local single-node cluster.

    sudo SLURM_CPUS=8 bash deploy/slurm/up.sh        # once
    python tests/benchmarks/bench_slurm.py [--data DIR] [--repeats N] [--json PATH]
        [--parts trivial gala arrays]

Three measurements, each on the cluster ``deploy/slurm/up.sh`` starts:

1. ``trivial worker``: a daisy task of 64 blocks run by the profile's worker
   function (``SlurmWorker``, the code path of every stage) with a minimal
   pull worker (connect, take blocks, sleep 10 ms each): seconds from the
   driver's start to ``sbatch``, from ``sbatch`` to the first block
   processed, and to the end. It isolates SLURM + daisy overhead.
2. ``blockwise worker``: the gala crop (configs/gala_slurm.yaml on synthetic
   affinities) run end to end with ``execution.profile: slurm``: seconds
   from ``sbatch`` of extract_fragments to its first fragments chunk on disk
   (worker start-up: Python, imports, opening the run), and the stage and
   run times. The data come from ``--data`` or $BLOCKWISE_DATA.
3. ``array vs single jobs``: 8 trivial tasks as one ``sbatch --array=0-7``
   against 8 separate ``sbatch`` calls: seconds spent submitting, and until
   all 8 ended (``squeue``), best of ``--repeats``.

The machines are shared and noisy: compare the numbers of one run side by
side, never absolute seconds from different runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

# a pull worker that only records when it got its first block
TRIVIAL_WORKER = """
import sys, time
from pathlib import Path
import daisy.v2 as daisy
client = daisy.Client()
first = Path(sys.argv[1])
while True:
    with client.acquire_block() as block:
        if block is None:
            break
        if not first.exists():
            first.write_text(repr(time.time()))
        time.sleep(0.01)
"""


def cluster_is_up() -> bool:
    result = subprocess.run(
        ["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, check=False
    )
    return result.returncode == 0 and bool(result.stdout.strip())


def submitted_at(run_dir: Path, stage: str) -> float:
    """When the stage's (first) array was submitted, from the run's job ledger."""
    jobs = json.loads((run_dir / "slurm_jobs.json").read_text())["jobs"]
    first = min(j["submitted_at"] for j in jobs if j["stage"] == stage)
    return datetime.fromisoformat(first).timestamp()


def bench_trivial_worker(workdir: Path, workers: int) -> dict[str, float]:
    import daisy.v2 as daisy
    from daisy import logging as daisy_logging
    from funlib.geometry import Roi

    from blockwise.execution.slurm import SlurmWorker

    run_dir = workdir / "trivial"
    run_dir.mkdir(parents=True)
    daisy_logging.set_log_basedir(str(run_dir / "logs"))
    first = run_dir / "first_block"
    worker = SlurmWorker(
        stage="trivial",
        run_dir=str(run_dir),
        session="bench",
        command=(sys.executable, "-c", TRIVIAL_WORKER, str(first)),
        options=(),
        job_name="bench-slurm-trivial",
        num_tasks=workers,
        max_array_size=1001,
        max_parallel=None,
        poll_interval_s=1.0,
    )
    task = daisy.Task(
        "trivial",
        total_roi=Roi((0,), (64,)),
        read_roi=Roi((0,), (1,)),
        write_roi=Roi((0,), (1,)),
        process_function=worker,
        max_workers=workers,
        read_write_conflict=False,
    )
    start = time.time()
    ok = daisy.run_blockwise(task, host="127.0.0.1", progress=False, summary=False)
    end = time.time()
    if not ok:
        raise RuntimeError(f"the trivial task failed; see {run_dir / 'logs'}")
    sbatch = submitted_at(run_dir, "trivial")
    first_block = float(first.read_text())
    return {
        "start -> sbatch s": sbatch - start,
        "sbatch -> first block s": first_block - sbatch,
        "sbatch -> done s": end - sbatch,
        "total s": end - start,
    }


def bench_blockwise_worker(workdir: Path, data: Path) -> dict[str, float]:
    from blockwise.config import parse_config
    from blockwise.runner import run
    from blockwise.synthetic import synthesize_affinities_file

    affs = workdir / "gala_synth.zarr"
    synthesize_affinities_file(data / "gala_fib_train.h5", "labels", affs, seed=0)
    config: dict[str, Any] = yaml.safe_load((REPO / "configs" / "gala_slurm.yaml").read_text())
    run_dir = workdir / "gala"
    config.update(name="bench_gala", run_dir=str(run_dir))
    config["inputs"]["affinities"]["file"] = str(affs)
    config["inputs"]["ground_truth"]["file"] = str(affs)
    config["execution"]["slurm"]["poll_interval_s"] = 1.0
    start = time.time()
    result = run(parse_config(config), progress=False)
    end = time.time()
    if not result.ok:
        raise RuntimeError(result.summary())
    sbatch = submitted_at(run_dir, "extract_fragments")
    chunks = [p for p in (run_dir / "output.zarr" / "fragments").iterdir() if p.name[0].isdigit()]
    first_chunk = min(p.stat().st_mtime for p in chunks)
    fragments = next(s for s in result.stages if s.name == "extract_fragments")
    return {
        "start -> sbatch s": sbatch - start,
        "sbatch -> first fragments chunk s": first_chunk - sbatch,
        "extract_fragments stage s": fragments.wall_s,
        "run s": end - start,
        "stages": float(len(result.stages)),
    }


def wait_until_gone(job_ids: list[str]) -> None:
    while True:
        out = subprocess.run(
            ["squeue", "--noheader", f"--jobs={','.join(job_ids)}", "--format=%i"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        if not out.strip():
            return
        time.sleep(0.1)


def sbatch(*args: str) -> str:
    out = subprocess.run(
        ["sbatch", "--parsable", "--output=/dev/null", "--job-name=bench-slurm", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.strip().split(";")[0]


def bench_array_vs_single(tasks: int, repeats: int) -> dict[str, float]:
    best: dict[str, float] = {}
    for _ in range(repeats):
        for kind in ("array", "single"):
            start = time.time()
            if kind == "array":
                ids = [sbatch(f"--array=0-{tasks - 1}", "--wrap=true")]
            else:
                ids = [sbatch("--wrap=true") for _ in range(tasks)]
            submitted = time.time()
            wait_until_gone(ids)
            ended = time.time()
            for key, value in (
                (f"{kind}: submit s", submitted - start),
                (f"{kind}: submit -> all ended s", ended - start),
            ):
                best[key] = min(best.get(key, float("inf")), value)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="shared data folder")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8, help="array tasks of the trivial task")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=["trivial", "gala", "arrays"],
        default=["trivial", "gala", "arrays"],
        help="which measurements to run",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args()
    if not cluster_is_up():
        sys.stderr.write("no SLURM cluster answers; start one: sudo bash deploy/slurm/up.sh\n")
        return 2
    data = args.data or Path(os.environ.get("BLOCKWISE_DATA", REPO.parent / "shared" / "data"))
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_slurm_") as tmp:
        workdir = Path(tmp)
        if "trivial" in args.parts:
            results["trivial worker"] = bench_trivial_worker(workdir, args.workers)
        if "gala" in args.parts:
            results["blockwise worker (gala)"] = bench_blockwise_worker(workdir, data)
        if "arrays" in args.parts:
            results[f"{args.workers} tasks"] = bench_array_vs_single(args.workers, args.repeats)
    for name, numbers in results.items():
        sys.stdout.write(f"{name}\n")
        for key, value in numbers.items():
            sys.stdout.write(f"  {key:<36} {value:8.2f}\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
