"""``execution.profile: slurm`` on a real single-node SLURM (tests/execution/conftest.py).

The config and option tests need no cluster; the rest submit real job
arrays to the cluster ``deploy/slurm/up.sh`` starts, and check what SLURM
itself reports (``squeue --states=all``), never a fake ``sbatch``.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import yaml
import zarr

from blockwise.config import SlurmConfig, load_config, parse_config
from blockwise.errors import BlockwiseError, ConfigError
from blockwise.execution import open_profile, worker_command
from blockwise.execution.slurm import (
    JOBS_FILE,
    SlurmError,
    array_spec,
    cluster_max_array_size,
    sbatch_options,
    split_array,
)
from blockwise.run_context import RunContext
from blockwise.runner import run

from datafiles import REPO

if TYPE_CHECKING:
    from execution.conftest import SlurmCluster

BLOCKWISE = str(Path(sys.executable).with_name("blockwise"))
EXAMPLE = REPO / "configs" / "gala_slurm.yaml"


def example_config(gala: Path, run_dir: Path, **slurm: Any) -> dict[str, Any]:
    """configs/gala_slurm.yaml on the test data, named after ``run_dir``, polling every 0.5 s."""
    data = yaml.safe_load(EXAMPLE.read_text())
    data["name"] = run_dir.name
    data["run_dir"] = str(run_dir)
    data["inputs"]["affinities"]["file"] = str(gala)
    data["inputs"]["ground_truth"]["file"] = str(gala)
    data["execution"]["slurm"].update(poll_interval_s=0.5, **slurm)
    return data


def write_config(data: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def ledger(run_dir: Path) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = json.loads((run_dir / JOBS_FILE).read_text())["jobs"]
    return jobs


def tasks_of(cluster: SlurmCluster, jobs: list[dict[str, Any]]) -> dict[str, str]:
    """The state of every task of ``jobs`` (``"<job>_<task>"`` -> state)."""
    ids = {str(j["job_id"]) for j in jobs}
    return {t: s for t, s in cluster.jobs().items() if t.split("_")[0] in ids}


def arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a zarr container, by path."""
    found: dict[str, np.ndarray] = {}
    group = zarr.open_group(str(path), mode="r")
    group.visititems(
        lambda name, node: (
            found.__setitem__(name, node[...]) if isinstance(node, zarr.Array) else None
        )
    )
    return found


# --------------------------------------------------------------------------- no cluster needed


def test_example_config_is_a_slurm_run() -> None:
    config = load_config(EXAMPLE)
    assert config.execution.profile == "slurm"
    slurm = config.execution.slurm
    assert slurm.for_stage("agglomerate").mem == "1500M"
    assert slurm.for_stage("extract_fragments").mem == "1G"


def test_stage_overrides_replace_only_the_keys_they_set() -> None:
    slurm = SlurmConfig(
        cpus_per_task=2,
        mem="4G",
        partition="cpu",
        extra_sbatch_args=["--qos=normal"],
        stages={"predict": {"gpus": 2, "partition": "gpu", "extra_sbatch_args": ["--qos=high"]}},
    )
    predict = slurm.for_stage("predict")
    assert (predict.cpus_per_task, predict.mem, predict.gpus, predict.partition) == (
        2,
        "4G",
        2,
        "gpu",
    )
    # the stage's extras come last, so sbatch lets them win
    assert sbatch_options(predict, predict.gpus or 0) == [
        "--cpus-per-task=2",
        "--mem=4G",
        "--gres=gpu:2",
        "--partition=gpu",
        "--qos=normal",
        "--qos=high",
    ]
    relabel = slurm.for_stage("relabel")
    assert relabel.partition == "cpu" and relabel.gpus is None
    assert sbatch_options(relabel.model_copy(update={"time": "1-00:00"}), 0) == [
        "--cpus-per-task=2",
        "--mem=4G",
        "--partition=cpu",
        "--time=1-00:00",
        "--qos=normal",
    ]


@pytest.mark.parametrize(
    ("slurm", "message"),
    [
        ({"mem": "4 GB"}, "execution.slurm.mem"),
        ({"time": "2h"}, "execution.slurm.time"),
        ({"stages": {"agglomerat": {"mem": "1G"}}}, "unknown stage(s) ['agglomerat']"),
        ({"stages": {"predict": {"gpu": 1}}}, "unknown key `execution.slurm.stages.predict.gpu`"),
        ({"max_parallel": 0}, "execution.slurm.max_parallel"),
    ],
)
def test_bad_slurm_settings_name_the_key(slurm: dict[str, Any], message: str) -> None:
    data = {
        "name": "t",
        "run_dir": "/tmp/blockwise-test-run",
        "inputs": {"affinities": {"file": "/tmp/a.zarr", "dataset": "affs"}},
        "execution": {"profile": "slurm", "slurm": slurm},
    }
    with pytest.raises(ConfigError) as e:
        parse_config(data)
    assert message in str(e.value)


def test_arrays_are_split_at_the_size_limit() -> None:
    assert split_array(2500, 1001) == [1001, 1001, 498]
    assert split_array(1001, 1001) == [1001]
    assert split_array(3, 1001) == [3]
    assert array_spec(8, None) == "0-7"
    assert array_spec(8, 2) == "0-7%2"


def test_sqlite_store_is_refused_pointing_at_mongodb(tmp_path: Path, gala: Path) -> None:
    data = example_config(gala, tmp_path / "run")
    del data["execution"]["slurm"]["allow_sqlite_on_cluster"]
    path = write_config(data, tmp_path / "sqlite.yaml")
    proc = subprocess.run(
        [BLOCKWISE, "run", str(path), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "graph store is SQLite" in proc.stderr
    assert "mongodb://" in proc.stderr and "allow_sqlite_on_cluster" in proc.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_sbatch_missing_from_path_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = example_config(tmp_path / "absent.zarr", tmp_path / "nopath")
    monkeypatch.setenv("PATH", str(tmp_path / "empty_bin"))
    with pytest.raises(SlurmError) as e:
        open_profile(RunContext(parse_config(data)))
    assert "sbatch, squeue, scancel, scontrol are not on PATH" in str(e.value)
    assert "execution.profile: local" in str(e.value)
    assert not (tmp_path / "nopath").exists()


# --------------------------------------------------------------------------- on the cluster


def test_array_size_limit_is_read_from_the_cluster(slurm: SlurmCluster) -> None:
    # deploy/slurm/up.sh keeps SLURM's default
    assert cluster_max_array_size() == 1001


@pytest.mark.timeout(900)
def test_unknown_partition_ends_the_run_naming_the_stage(
    slurm: SlurmCluster, gala: Path, tmp_path: Path
) -> None:
    data = example_config(gala, tmp_path / "refused")
    data["execution"]["slurm"]["stages"] = {"agglomerate": {"partition": "nosuch"}}
    path = write_config(data, tmp_path / "refused.yaml")
    proc = subprocess.run(
        [BLOCKWISE, "run", str(path), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "stage agglomerate: SLURM refuses its job options ['--cpus-per-task=1'" in proc.stderr
    assert "invalid partition specified: nosuch" in proc.stderr
    # refused before any stage was submitted
    assert not (tmp_path / "refused" / JOBS_FILE).exists()
    assert not slurm.live()


@pytest.mark.timeout(900)
def test_impossible_resources_raise_naming_the_stage(
    slurm: SlurmCluster, gala: Path, tmp_path: Path
) -> None:
    data = example_config(gala, tmp_path / "too_big")
    data["execution"]["slurm"]["stages"] = {"extract_fragments": {"mem": "100G"}}
    with pytest.raises(SlurmError) as e:
        run(parse_config(data), progress=False)
    assert isinstance(e.value, BlockwiseError)
    assert "stage extract_fragments: SLURM refuses" in str(e.value)
    assert "--mem=100G" in str(e.value)
    assert "Requested node configuration is not available" in str(e.value)
    assert not (tmp_path / "too_big" / JOBS_FILE).exists()
    assert not slurm.live()


@pytest.mark.timeout(900)
def test_a_task_whose_driver_is_gone_exits_cleanly(
    slurm: SlurmCluster, gala: Path, tmp_path: Path
) -> None:
    # a task that starts after its driver ended (a straggler) finds nobody at the
    # scheduler's address: it must end COMPLETED, not FAILED, and process nothing
    config = parse_config(example_config(gala, tmp_path / "gone"))
    config.run_dir.mkdir(parents=True)
    config_path = config.run_dir / "config.yaml"
    config.dump(config_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nobody listens there
    context = (
        f"hostname=127.0.0.1:port={port}:task_id=extract_fragments:worker_id=-1:"
        f"logdir={tmp_path / 'daisy_logs'}"
    )
    log = tmp_path / "straggler.out"
    proc = subprocess.run(
        [
            "sbatch",
            "--wait",
            "--parsable",
            "--job-name=blockwise-straggler",
            f"--output={log}",
            f"--export=ALL,DAISY_CONTEXT={context}",
            f"--wrap={shlex.join(worker_command(config_path, 'extract_fragments'))}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    text = log.read_text()
    assert proc.returncode == 0, proc.stderr + text
    assert "not reachable; assuming the run has ended" in text
    assert "worker for extract_fragments: 0 blocks done, 0 failed" in text
    job = proc.stdout.strip().split(";")[0]
    assert slurm.jobs().get(job) == "COMPLETED"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pipeline_runs_one_array_per_stage_and_matches_the_local_run(
    slurm: SlurmCluster, gala: Path, tmp_path: Path
) -> None:
    data = example_config(gala, tmp_path / "on_slurm")
    config = parse_config(data)
    result = run(config, progress=False)
    assert result.ok, result.summary()

    # one sbatch per stage that had blocks to run, each an array of that stage's workers
    jobs = ledger(config.run_dir)
    ran = [s for s in result.stages if s.done > 0]
    assert sorted(j["stage"] for j in jobs) == sorted(s.name for s in ran)
    expected = {s.name: 1 if s.total == 1 else min(3, s.total) for s in ran}
    assert {j["stage"]: j["tasks"] for j in jobs} == expected
    # nothing left in the queue; every task that started ran to completion (exit
    # code 0, its own log); tasks not started when their stage ran out of blocks
    # were cancelled. (squeue forgets tasks 300 s after they end: the exit codes
    # the tasks wrote into the run directory cover the early stages.)
    assert not slurm.live()
    exits = {
        p.name: int(p.read_text())
        for p in (config.run_dir / "slurm").glob("*/exit/*")
        if not p.name.endswith(".tmp")
    }
    assert set(exits.values()) == {0}, exits
    assert set(tasks_of(slurm, jobs).values()) <= {"COMPLETED", "CANCELLED"}
    for job in jobs:
        ran_here = [t for t in exits if t.startswith(f"{job['job_id']}_")]
        assert 1 <= len(ran_here) <= job["tasks"], (job, exits)
        for task in ran_here:
            log = config.run_dir / "logs" / "slurm" / f"{job['stage']}-{task}.out"
            assert f"worker for {job['stage']}: " in log.read_text(), log

    # the same run with worker processes on this machine writes the same bytes
    local = dict(data, name="local", run_dir=str(tmp_path / "local"))
    local["execution"] = {"profile": "local", "num_workers": 2}
    local_result = run(parse_config(local), progress=False)
    assert local_result.ok, local_result.summary()
    on_slurm = arrays(config.run_dir / "output.zarr")
    on_local = arrays(tmp_path / "local" / "output.zarr")
    assert sorted(on_slurm) == sorted(on_local)
    assert any(name.startswith("segmentation/") for name in on_slurm)
    for name, array in on_slurm.items():
        assert array.dtype == on_local[name].dtype, name
        assert array.tobytes() == on_local[name].tobytes(), name


def wait_for_running_task(
    cluster: SlurmCluster, run_dir: Path, driver: subprocess.Popen[bytes], timeout_s: float
) -> list[dict[str, Any]]:
    """Wait until the run has submitted its first stage and one of its tasks runs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert driver.poll() is None, "the driver ended before its jobs ran"
        if (run_dir / JOBS_FILE).exists():
            jobs = ledger(run_dir)
            if "RUNNING" in tasks_of(cluster, jobs).values():
                return jobs
        time.sleep(0.2)
    raise AssertionError(f"no task of the run was running after {timeout_s} s")


@pytest.mark.slow
@pytest.mark.timeout(400)
# SIGINT and SIGTERM of the driver are not covered yet: daisy's run loop handles
# SIGINT itself, and whether the teardown then cancels every job in time is open
@pytest.mark.parametrize("signum", [signal.SIGKILL])
def test_stopping_the_driver_cancels_every_job(
    slurm: SlurmCluster, gala: Path, tmp_path: Path, signum: signal.Signals
) -> None:
    # 3 workers in arrays of at most 2, one task of each running at a time:
    # arrays 0-1%1 and 0-0%1, so two tasks run and one waits when the signal comes
    run_dir = tmp_path / f"stopped_{signum.name.lower()}"
    data = example_config(gala, run_dir, max_array_size=2, max_parallel=1)
    path = write_config(data, tmp_path / "stopped.yaml")
    with open(tmp_path / "driver.log", "wb") as log:
        driver = subprocess.Popen(
            [BLOCKWISE, "run", str(path), "--no-progress"], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        jobs = wait_for_running_task(slurm, run_dir, driver, timeout_s=240)
        # the second array (of 1 task) may not be submitted yet when a task runs
        assert jobs and all(j["stage"] == "extract_fragments" for j in jobs), jobs
        os.kill(driver.pid, signum)
        driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    # the driver's teardown (or, after SIGKILL, the orphaned worker slots) cancels
    # every job: nothing of the run stays in the queue. A task that was running may
    # also end COMPLETED: a worker whose driver is gone exits cleanly.
    jobs = ledger(run_dir)  # every array the run submitted, to the end
    live = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED"}
    deadline = time.monotonic() + 30
    while set(tasks_of(slurm, jobs).values()) & live:
        assert time.monotonic() < deadline, tasks_of(slurm, jobs)
        time.sleep(0.5)
    assert not slurm.wait_until_idle(30)
    states = tasks_of(slurm, jobs)
    assert states and set(states.values()) <= {"CANCELLED", "COMPLETED"}, states
    assert "CANCELLED" in states.values(), states  # the task still waiting never ran
    if signum != signal.SIGKILL:
        assert driver.returncode != 0
        assert "cancelled SLURM job(s)" in (tmp_path / "driver.log").read_text()
