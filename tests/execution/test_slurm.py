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
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import yaml
import zarr
from daisy.v2 import Context

from blockwise.config import SlurmConfig, load_config, parse_config
from blockwise.errors import BlockwiseError, ConfigError
from blockwise.execution import open_profile, worker_command
from blockwise.execution.slurm import (
    JOBS_FILE,
    TEARDOWN_GRACE_S,
    SlurmError,
    SlurmProfile,
    SlurmWorker,
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
#: task states in which a task may still run (squeue)
LIVE_STATES = frozenset({"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED"})


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


def assert_same_outputs(run_dir: Path, reference: Path) -> None:
    """``run_dir``'s output arrays are byte-identical to ``reference``'s, segmentations included."""
    ours = arrays(run_dir / "output.zarr")
    theirs = arrays(reference / "output.zarr")
    assert sorted(ours) == sorted(theirs)
    assert any(name.startswith("segmentation/") for name in ours), sorted(ours)
    for name, array in ours.items():
        assert array.dtype == theirs[name].dtype, name
        assert array.tobytes() == theirs[name].tobytes(), name


def run_driver(path: Path, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    """``blockwise run PATH --no-progress`` to its end, its output captured."""
    return subprocess.run(
        [BLOCKWISE, "run", str(path), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def start_driver(path: Path, log: Path, own_group: bool = False) -> subprocess.Popen[bytes]:
    """``blockwise run PATH --no-progress`` in the background, stdout and stderr to ``log``.

    Args:
        path: the config.
        log: where the driver's output goes.
        own_group: start the driver in a session and process group of its own,
            which a terminal's Ctrl-C would reach as a whole (``os.killpg``).
    """
    with open(log, "wb") as out:
        return subprocess.Popen(
            [BLOCKWISE, "run", str(path), "--no-progress"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=own_group,
        )


def run_prefix(run_dir: Path) -> str:
    """The name prefix of every job of the run named after ``run_dir`` (see example_config)."""
    return f"blockwise-{run_dir.name}-"


def settled_states(cluster: SlurmCluster, run_dir: Path, timeout_s: float) -> dict[str, str]:
    """Wait until no task of the run's ledger is live; the state of each of them then.

    Raises:
        AssertionError: naming the live tasks, if some are still live after ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        states = tasks_of(cluster, ledger(run_dir))  # every array submitted so far
        live = {t: s for t, s in states.items() if s in LIVE_STATES}
        if not live:
            return states
        assert time.monotonic() < deadline, f"still live after {timeout_s} s: {live}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def local_reference(gala: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example config run undisturbed by worker processes on this machine."""
    run_dir = tmp_path_factory.mktemp("reference") / "local"
    data = example_config(gala, run_dir)
    data["execution"] = {"profile": "local", "num_workers": 2}
    result = run(parse_config(data), progress=False)
    assert result.ok, result.summary()
    return run_dir


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
    proc = run_driver(path)
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


def test_status_lists_the_jobs_even_where_squeue_cannot_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from blockwise.execution.slurm import JOBS_FILE, describe_jobs

    assert describe_jobs(tmp_path) == []  # never submitted: nothing to say
    entry = {
        "job_id": "4242",
        "stage": "agglomerate",
        "session": "s",
        "name": "blockwise-x-agglomerate",
        "tasks": 3,
        "submitted_at": "2026-11-30T12:00:00.000+00:00",
    }
    (tmp_path / JOBS_FILE).write_text(json.dumps({"jobs": [entry]}))
    monkeypatch.setenv("PATH", str(tmp_path / "empty_bin"))
    lines = describe_jobs(tmp_path)
    assert lines[0].startswith("SLURM jobs of this run (1, recorded in")
    assert lines[1] == (
        "  agglomerate: array job 4242, 3 task(s), submitted 2026-11-30T12:00:00.000+00:00: "
        "states unknown"
    )
    assert "squeue could not answer" in lines[2]


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
    proc = run_driver(path)
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


@pytest.mark.timeout(300)
@pytest.mark.parametrize("listening", [True, False], ids=["scheduler-listens", "scheduler-gone"])
def test_a_failed_worker_fails_its_task_unless_its_scheduler_is_gone(
    slurm: SlurmCluster, tmp_path: Path, listening: bool
) -> None:
    # a worker whose driver was stopped loses its scheduler mid-block and exits
    # non-zero: its task must end COMPLETED (the run ended, not the task), while a
    # worker failing under a live scheduler fails its task (a dirty worker exit)
    scheduler = socket.create_server(("127.0.0.1", 0))
    port = scheduler.getsockname()[1]
    if not listening:
        scheduler.close()
    run_dir = tmp_path / "failing"
    worker = SlurmWorker(
        stage="extract_fragments",
        run_dir=str(run_dir),
        session="test",
        command=("bash", "-c", "echo 'lost the scheduler' >&2; exit 3"),
        options=(),
        job_name=f"{run_prefix(run_dir)}extract_fragments",
        num_tasks=1,
        max_array_size=1001,
        max_parallel=None,
        poll_interval_s=0.5,
    )
    context = Context(hostname="127.0.0.1", port=str(port), task_id="extract_fragments")
    try:
        job = worker._submit(1, context)  # the stage's batch script, as the profile submits it
        task = f"{job}_0"
        deadline = time.monotonic() + 120
        while slurm.jobs().get(task) not in {"COMPLETED", "FAILED", "CANCELLED"}:
            assert time.monotonic() < deadline, slurm.jobs()
            time.sleep(0.2)
    finally:
        scheduler.close()
    log = (run_dir / "logs" / "slurm" / f"extract_fragments-{task}.out").read_text()
    assert "lost the scheduler" in log
    if listening:
        assert slurm.jobs()[task] == "FAILED", log
        assert worker.exit_path(task).read_text().strip() == "3"
    else:
        assert slurm.jobs()[task] == "COMPLETED", log
        assert worker.exit_path(task).read_text().strip() == "0"
        assert (
            f"the worker exited with 3 after the driver's scheduler at 127.0.0.1:{port} "
            "stopped listening"
        ) in log


@pytest.mark.timeout(120)
def test_a_second_signal_ends_the_teardown_grace_but_not_the_cancelling(
    slurm: SlurmCluster, tmp_path: Path
) -> None:
    # after a run the runner caught a Ctrl-C for, the teardown gives running tasks
    # a grace period to exit by themselves; a task that never does (a long block)
    # must not keep a user who presses Ctrl-C again waiting, nor escape the cancel
    run_dir = tmp_path / "teardown"
    profile = SlurmProfile(RunContext(parse_config(example_config(tmp_path / "no.zarr", run_dir))))
    run_dir.mkdir()
    job = subprocess.run(
        [
            "sbatch",
            "--parsable",
            f"--job-name={run_prefix(run_dir)}sleeper",
            "--output=/dev/null",
            "--wrap=sleep 300",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    profile.ledger.add(
        {"job_id": job, "name": f"{run_prefix(run_dir)}sleeper", "stage": "x", "session": "s"}
    )
    deadline = time.monotonic() + 60
    while slurm.jobs().get(job) != "RUNNING":
        assert time.monotonic() < deadline, slurm.jobs()
        time.sleep(0.2)

    before = signal.getsignal(signal.SIGINT)

    def second_ctrl_c() -> None:
        # only into the teardown's own handler: a KeyboardInterrupt would end pytest
        if signal.getsignal(signal.SIGINT) is not before:
            os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Timer(1.0, second_ctrl_c)
    start = time.monotonic()
    timer.start()
    profile.teardown()
    took = time.monotonic() - start
    timer.join()
    assert took < TEARDOWN_GRACE_S, f"the teardown waited {took:.1f} s despite the signal"
    assert signal.getsignal(signal.SIGINT) is before
    deadline = time.monotonic() + 30
    while slurm.jobs().get(job) != "CANCELLED":
        assert time.monotonic() < deadline, slurm.jobs()
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pipeline_runs_one_array_per_stage_and_matches_the_local_run(
    slurm: SlurmCluster, gala: Path, local_reference: Path, tmp_path: Path
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
    assert_same_outputs(config.run_dir, local_reference)

    # status lists the run's jobs with the states SLURM gives their tasks
    from blockwise.status import describe_status

    text = describe_status(config)
    assert f"SLURM jobs of this run ({len(jobs)}, recorded in" in text
    for job in jobs:
        head = f"  {job['stage']}: array job {job['job_id']}, {job['tasks']} task(s)"
        line = next(row for row in text.splitlines() if row.startswith(head))
        counted = sum(int(part.split()[0]) for part in line.split(": ")[-1].split(", "))
        assert counted == job["tasks"], line


def wait_for_blocks(
    cluster: SlurmCluster, run_dir: Path, driver: subprocess.Popen[bytes], timeout_s: float
) -> dict[str, str]:
    """Wait until a task of the run runs and has written a fragment chunk.

    So the signal comes while array tasks are connected to the driver and
    processing blocks, not while they are still starting.

    Returns:
        the state of every task of the run's jobs then.
    """
    fragments = run_dir / "output.zarr" / "fragments"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert driver.poll() is None, "the driver ended before its jobs ran"
        if (run_dir / JOBS_FILE).exists() and any(fragments.glob("*.*.*")):
            states = tasks_of(cluster, ledger(run_dir))
            if "RUNNING" in states.values():
                return states
        time.sleep(0.05)
    raise AssertionError(f"no task of the run was processing blocks after {timeout_s} s")


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("signum", "to_group"),
    [
        (signal.SIGINT, False),
        (signal.SIGTERM, False),
        (signal.SIGKILL, False),
        (signal.SIGINT, True),
    ],
    ids=["SIGINT", "SIGTERM", "SIGKILL", "Ctrl-C"],
)
def test_stopping_the_driver_cancels_every_job_and_the_same_command_resumes(
    slurm: SlurmCluster,
    gala: Path,
    local_reference: Path,
    tmp_path: Path,
    signum: signal.Signals,
    to_group: bool,
) -> None:
    # The signal goes to the driver alone (`kill PID`), or, as Ctrl-C in its
    # terminal sends it, to its whole process group: daisy's worker slots and the
    # SLURM commands they run get it too. It comes while array tasks process
    # blocks, so a task may lose its scheduler mid-block.
    # 3 workers in arrays of at most 2, one task of each running at a time:
    # arrays 0-1%1 and 0-0%1, so two tasks run and one waits when the signal comes
    name = f"{signum.name}_to_group" if to_group else signum.name
    run_dir = tmp_path / f"stopped_{name.lower()}"
    data = example_config(gala, run_dir, max_array_size=2, max_parallel=1)
    path = write_config(data, tmp_path / "stopped.yaml")
    log = tmp_path / "driver.log"
    driver = start_driver(path, log, own_group=to_group)
    try:
        before = wait_for_blocks(slurm, run_dir, driver, timeout_s=240)
        # the second array (of 1 task) may not be submitted yet when a task runs
        assert all(j["stage"] == "extract_fragments" for j in ledger(run_dir))
        assert "PENDING" in before.values(), before
        sent = time.monotonic()
        if to_group:
            os.killpg(driver.pid, signum)
        else:
            os.kill(driver.pid, signum)
        # within seconds (1-2 s here): no grace period or back-off is waited out
        driver.wait(timeout=30)
        driver_s = time.monotonic() - sent
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    out = log.read_text()
    # the driver's teardown (or, after SIGKILL, the orphaned worker slots) cancels
    # every job: nothing of the run stays in the queue. A running task may also end
    # COMPLETED: a worker whose scheduler is gone exits cleanly.
    states = settled_states(slurm, run_dir, timeout_s=60)
    settled_s = time.monotonic() - sent
    print(
        f"{name}: driver exited after {driver_s:.1f} s (code {driver.returncode}); "
        f"every task of the run settled after {settled_s:.1f} s: {states}"
    )
    assert states and set(states.values()) <= {"CANCELLED", "COMPLETED"}, states
    # a task still waiting at the signal is cancelled, or, started by SLURM when a
    # running task of its array ended, finds no scheduler and exits at once
    for task, state in before.items():
        # squeue may list a cancelled task of a one-task array under the job id alone
        if state == "PENDING" and states.get(task, states.get(task.split("_")[0])) != "CANCELLED":
            log = run_dir / "logs" / "slurm" / f"extract_fragments-{task}.out"
            assert "not reachable; assuming the run has ended" in log.read_text(), task
    assert not slurm.live(run_prefix(run_dir)), "squeue still lists jobs of the run"
    if signum != signal.SIGKILL:
        assert driver.returncode == 128 + signum, out
        assert "Traceback" not in out, out
        assert "Run summary" in out and f"interrupted by {signum.name}" in out, out
        assert f"resume with\n  blockwise run {path}\n" in out, out

    # the same command finishes the run, which ends identical to an undisturbed one
    resumed = run_driver(path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Run summary" in resumed.stdout, resumed.stdout
    assert_same_outputs(run_dir, local_reference)
    assert not slurm.live(run_prefix(run_dir)), "squeue still lists jobs of the run"
