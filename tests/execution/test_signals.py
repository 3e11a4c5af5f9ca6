"""Signals and stuck workers: real ``blockwise run`` drivers with 2 local workers on the gala crop.

- SIGINT or SIGTERM of the driver alone (not its process group) stops every
  worker process within seconds, even a stopped one; the driver prints the
  summary so far and the command that resumes, exits 128 + the signal, with no
  traceback; the same command then resumes and ends identical to an undisturbed run.
- A worker stopped with SIGSTOP mid-stage is killed once it has been stopped for
  a block timeout, its block runs elsewhere, and the run ends identical.
- A stage whose workers keep crashing is abandoned after
  ``execution.max_worker_restarts`` restarts, and the summary names it and why.

Worker processes are found through ``/proc`` (Linux): the worker program by its
command line, which holds the run's config path, and daisy's per-slot process
(which starts and watches it) as a child of the driver.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from gala import assert_same_outputs, gala_data

from blockwise.config import parse_config
from blockwise.execution.local import POLL_S, scheduler_gone
from blockwise.integrity import read_done
from blockwise.layout import RunLayout
from blockwise.runner import run

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="finds worker processes through /proc"
)

BLOCKWISE = str(Path(sys.executable).with_name("blockwise"))
#: the block timeout of the stuck-worker test (s): far above a gala block's
#: time, short enough for a fast test
BLOCK_TIMEOUT_S = 10


def gala_config(gala: Path, run_dir: Path, **execution: Any) -> dict[str, Any]:
    return gala_data(gala, run_dir, execution={"num_workers": 2, **execution})


def write_config(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "gala.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def assert_identical(run_dir: Path, reference: Path) -> None:
    assert_same_outputs(run_dir, reference)
    results = json.loads((run_dir / "evaluation.json").read_text())["results"]
    assert results == json.loads((reference / "evaluation.json").read_text())["results"]


@pytest.fixture(scope="module")
def reference(gala: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An undisturbed run of the gala config (in-process: the same blocks, same bytes)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = run(parse_config(gala_config(gala, run_dir)), multiprocessing=False, progress=False)
    assert result.ok, result.summary()
    return run_dir


def _proc_stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state) of a live process, None once it is gone (or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 1 :].split()
    return None if fields[0] in ("Z", "X") else (int(fields[1]), fields[0])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").glob("[0-9]*")]


def workers_of(run_dir: Path) -> dict[int, str]:
    """The run's worker programs: their command line holds the run's resolved config."""
    needle = str(run_dir / "config.yaml")
    return {
        pid: cmd
        for pid in _pids()
        if needle in (cmd := _cmdline(pid)) and _proc_stat(pid) is not None
    }


def children_running(driver_pid: int, needle: str) -> dict[int, str]:
    """The driver's children whose command line holds ``needle``."""
    found = {}
    for pid in _pids():
        stat = _proc_stat(pid)
        if stat is not None and stat[0] == driver_pid:
            cmd = _cmdline(pid)
            if needle in cmd:
                found[pid] = cmd
    return found


def slot_processes(driver_pid: int) -> dict[int, str]:
    """daisy's per-slot processes (they start and watch the worker programs where the
    run has no fork server; with one, the driver's threads do)."""
    return children_running(driver_pid, "daisy._subprocess_worker")


def survivors(processes: dict[int, str]) -> dict[int, str]:
    """Those of ``processes`` that still run (same pid, same command line)."""
    return {
        pid: cmd
        for pid, cmd in processes.items()
        if _proc_stat(pid) is not None and _cmdline(pid) == cmd
    }


def start_driver(config_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    # its own session: the signal goes to the driver alone, as `kill PID` sends it
    return subprocess.Popen(
        [BLOCKWISE, "run", str(config_path), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=env,
    )


def done_markers(run_dir: Path, stage: str) -> int:
    """How many of ``stage``'s blocks daisy has marked done (0 while it writes one)."""
    try:
        done = read_done(RunLayout(run_dir).tracking_dir(stage))
    except (ValueError, OSError, json.JSONDecodeError):  # a marker file being written
        return 0
    return 0 if done is None else int(done.sum())


def wait_for_workers(
    driver: subprocess.Popen[str],
    run_dir: Path,
    stage: str | None,
    chunks: int = 0,
    done: int = 0,
    timeout_s: float = 120,
) -> dict[int, str]:
    """Wait until ``stage``'s workers run (None: a worker of any stage), at least
    ``chunks`` fragment chunks are written and at least ``done`` of its blocks are
    marked done."""
    fragments = run_dir / "output.zarr" / "fragments"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert driver.poll() is None, f"the run ended too early:\n{driver.communicate()[0]}"
        workers = {
            p: c
            for p, c in workers_of(run_dir).items()
            if stage is None or c.rstrip().endswith(stage)
        }
        if (
            workers
            and len(list(fragments.glob("*.*.*"))) >= chunks
            and (done == 0 or stage is None or done_markers(run_dir, stage) >= done)
        ):
            return workers
        time.sleep(0.02)
    raise AssertionError(f"no {stage} worker after {timeout_s} s")


def stage_line(output: str, stage: str) -> list[str]:
    lines = [line.split() for line in output.splitlines() if line.startswith(stage + " ")]
    assert lines, output
    return lines[0]


# -- the watching process alone, around a stand-in worker program (seconds) --

#: runs LocalWorker (as daisy's per-slot process does) around a sleeping stand-in worker;
#: argv: stuck_after_s, then the scheduler's port (0: no scheduler context)
WATCHER = """
import sys
import blockwise.execution.local as local
local.worker_command = lambda config, stage: [sys.executable, "-c", "import time; time.sleep(120)"]
port = int(sys.argv[2])
context = {"hostname": "127.0.0.1", "port": str(port)} if port else None
local.LocalWorker("config.yaml", "stage", (), float(sys.argv[1]))(context=context)
"""


@pytest.fixture
def start_watcher() -> Iterator[Callable[..., tuple[subprocess.Popen[str], int]]]:
    """Starts LocalWorker processes (ended after the test) around a stand-in worker."""
    started: list[tuple[subprocess.Popen[str], int]] = []

    def start(stuck_after_s: float, port: int = 0) -> tuple[subprocess.Popen[str], int]:
        watcher = subprocess.Popen(
            [sys.executable, "-c", WATCHER, str(stuck_after_s), str(port)],
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for pid in _pids():
                # the stand-in itself, past its fork and exec
                if (_proc_stat(pid) or (0, ""))[0] == watcher.pid and "sleep(120)" in _cmdline(pid):
                    started.append((watcher, pid))
                    return watcher, pid
            time.sleep(0.01)
        watcher.kill()
        watcher.communicate()
        raise AssertionError("the watcher started no worker program")

    yield start
    for watcher, worker in started:
        if "sleep(120)" in _cmdline(worker):  # it holds the watcher's stderr open
            os.kill(worker, signal.SIGKILL)
        if watcher.poll() is None:
            watcher.kill()
        watcher.communicate(timeout=30)


def wait_gone(pid: int, timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while _proc_stat(pid) is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    return _proc_stat(pid) is None


@pytest.mark.timeout(60)
def test_a_worker_stopped_for_a_block_timeout_is_killed(start_watcher: Callable[..., Any]) -> None:
    watcher, worker = start_watcher(stuck_after_s=1.0)
    time.sleep(1.5)  # running, not stopped: left alone however long it takes
    assert _proc_stat(worker) is not None
    os.kill(worker, signal.SIGSTOP)
    _, err = watcher.communicate(timeout=30)
    assert watcher.returncode == 1, err  # a failed worker: daisy counts it
    assert wait_gone(worker)
    assert f"worker {worker} of stage stopped for" in err, err
    assert err.strip().endswith("exited with -9"), err
    assert "Traceback" not in err, err


@pytest.mark.timeout(60)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signalled_watcher_kills_its_worker_and_exits_cleanly(
    start_watcher: Callable[..., Any], signum: int
) -> None:
    watcher, worker = start_watcher(stuck_after_s=600)
    os.kill(worker, signal.SIGSTOP)  # even a stopped one
    os.kill(watcher.pid, signum)
    _, err = watcher.communicate(timeout=30)
    assert watcher.returncode == 0, err
    assert wait_gone(worker)
    assert "Traceback" not in err, err


@pytest.mark.timeout(60)
def test_a_killed_watcher_takes_its_worker_along(start_watcher: Callable[..., Any]) -> None:
    watcher, worker = start_watcher(stuck_after_s=600)
    watcher.kill()
    watcher.wait()
    assert wait_gone(worker), "the worker program outlived its watcher"


@pytest.mark.timeout(60)
def test_a_worker_is_stopped_when_its_scheduler_ends(start_watcher: Callable[..., Any]) -> None:
    scheduler = socket.create_server(("127.0.0.1", 0))
    port = scheduler.getsockname()[1]
    context = {"hostname": "127.0.0.1", "port": str(port)}
    assert not scheduler_gone(context)
    watcher, worker = start_watcher(stuck_after_s=600, port=port)
    time.sleep(2.5)  # the scheduler listens: the worker runs on
    assert _proc_stat(worker) is not None and watcher.poll() is None
    # and the watcher looked without connecting: daisy would remember each probe's
    # closed address and declare lost the blocks of a worker that later gets its port
    scheduler.setblocking(False)
    with pytest.raises(BlockingIOError):
        scheduler.accept()
    scheduler.close()
    assert scheduler_gone(context)
    _, err = watcher.communicate(timeout=30)
    assert watcher.returncode == 0, err  # the run ended: not a failure
    assert wait_gone(worker)


# -- real runs --


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("signum", "stop_one_worker", "to_group"),
    [(signal.SIGINT, False, False), (signal.SIGTERM, True, False), (signal.SIGTERM, False, True)],
    ids=["SIGINT", "SIGTERM-with-a-stopped-worker", "SIGTERM-to-the-process-group"],
)
def test_a_signalled_driver_stops_every_worker_summarises_and_resumes(
    tmp_path: Path, gala: Path, reference: Path, signum: int, stop_one_worker: bool, to_group: bool
) -> None:
    # to_group: as a cluster's job cancel or a terminal's Ctrl-C sends it, to the
    # driver and every worker slot at once (slots just starting die of it)
    run_dir = tmp_path / "run"
    path = write_config(tmp_path, gala_config(gala, run_dir))
    driver = start_driver(path)
    # a block released before the signal: the summary counts it and the resumed run skips it
    wait_for_workers(driver, run_dir, "extract_fragments", done=1)
    time.sleep(0.2)  # daisy tells the driver's progress observer right after the marker
    # the workers running now, of whichever stage: extract_fragments may be over, and
    # its workers gone on to the next stage (blockwise.execution.worker_pool)
    workers = wait_for_workers(driver, run_dir, None)
    # the fork server forks the workers and the driver's threads watch them: no
    # worker-slot interpreters in between
    assert not slot_processes(driver.pid), "a worker slot interpreter runs beside the fork server"
    servers = children_running(driver.pid, "blockwise.execution.forkserver")
    assert servers, "the run's fork server was not found"
    if stop_one_worker:
        # a stopped worker cannot notice anything; it must not keep the driver waiting
        os.kill(next(iter(workers)), signal.SIGSTOP)
    everything = {**workers, **servers}

    sent = time.monotonic()
    if to_group:
        os.killpg(driver.pid, signum)  # the driver leads its own session
    else:
        os.kill(driver.pid, signum)
    out, _ = driver.communicate(timeout=60)
    driver_s = time.monotonic() - sent
    left = survivors(everything) | workers_of(run_dir)
    while left and time.monotonic() - sent < driver_s + 5:
        time.sleep(0.05)
        left = survivors(everything) | workers_of(run_dir)
    all_gone_s = time.monotonic() - sent
    print(
        f"{signal.Signals(signum).name}: driver exited after {driver_s:.2f} s, "
        f"all {len(everything)} worker processes gone after {all_gone_s:.2f} s"
    )

    assert not left, f"worker processes survived the driver: {left}"
    assert driver.returncode == 128 + signum, out
    assert "Traceback" not in out, out
    # daisy's warnings are its notice of the abort and, when the whole group got the
    # signal, what it says of the worker slots that died of it (slots of a later
    # stage may be starting at that moment too) and of the blocks their workers held
    warnings = [line for line in out.splitlines() if "WARN" in line]
    if to_group:
        expected = (
            "abort requested",
            "worker exited with error",
            "block lost",
            f"exited with code -{int(signum)}",
        )
        unexpected = [w for w in warnings if not any(kind in w for kind in expected)]
        assert not unexpected, out
        assert sum("abort requested" in w for w in warnings) <= 1, out
    else:
        assert len(warnings) <= 1, out
    assert "Run summary" in out and f"interrupted by {signal.Signals(signum).name}" in out, out
    done_before = int(stage_line(out, "extract_fragments")[2])
    assert done_before >= 1, out
    assert f"resume with\n  blockwise run {path}\n" in out, out
    assert not (run_dir / "evaluation.json").exists()
    # summary.json records the interrupted invocation: its status, exit code and stages
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["exit_status"] == "interrupted", summary
    assert summary["exit_code"] == 128 + signum, summary
    stages = {s["name"]: s for s in summary["stages"]}
    assert stages["extract_fragments"]["done"] == done_before, summary

    resumed = subprocess.run(
        [BLOCKWISE, "run", str(path), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    # the blocks finished before the signal are kept, not redone
    assert int(stage_line(resumed.stdout, "extract_fragments")[3]) >= done_before, resumed.stdout
    assert_identical(run_dir, reference)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_driver_killed_with_sigkill_leaves_no_worker_behind(tmp_path: Path, gala: Path) -> None:
    # the driver alone: its threads watched the workers, and nothing runs its teardown
    run_dir = tmp_path / "run"
    path = write_config(tmp_path, gala_config(gala, run_dir))
    driver = start_driver(path)
    workers = wait_for_workers(driver, run_dir, "extract_fragments", done=1)
    servers = children_running(driver.pid, "blockwise.execution.forkserver")
    assert servers, "the run's fork server was not found"
    driver.kill()
    driver.communicate(timeout=60)
    everything = {**workers, **servers}
    deadline = time.monotonic() + 10
    while (survivors(everything) or workers_of(run_dir)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not survivors(everything), "worker processes outlived the driver"
    assert not workers_of(run_dir), "worker processes outlived the driver"


def run_with_one_stopped(
    tmp_path: Path,
    gala: Path,
    pick: Callable[[subprocess.Popen[str], dict[int, str]], int],
    env: dict[str, str] | None = None,
) -> tuple[Path, int, float]:
    """A gala run in which one process, chosen by ``pick``, is stopped (SIGSTOP).

    ``pick`` gets the driver and the extract_fragments workers once they run.
    Returns the run directory, the stopped process and the seconds from the
    stop to the run's end, after checking that the run succeeded.
    """
    run_dir = tmp_path / "run"
    path = write_config(tmp_path, gala_config(gala, run_dir, block_timeout_s=BLOCK_TIMEOUT_S))
    driver = start_driver(path, env)
    victim = pick(driver, wait_for_workers(driver, run_dir, "extract_fragments", chunks=6))
    os.kill(victim, signal.SIGSTOP)
    stopped = time.monotonic()
    out, _ = driver.communicate(timeout=240)
    finished_s = time.monotonic() - stopped
    print(f"run finished {finished_s:.1f} s after the SIGSTOP")
    assert driver.returncode == 0, out
    return run_dir, victim, finished_s


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_worker_stopped_mid_block_does_not_keep_the_run_from_finishing(
    tmp_path: Path, gala: Path, reference: Path
) -> None:
    run_dir, victim, finished_s = run_with_one_stopped(
        tmp_path, gala, lambda driver, workers: next(iter(workers))
    )
    assert _proc_stat(victim) is None, "the stopped worker is still there"
    logs = "".join(p.read_text() for p in (run_dir / "logs" / "extract_fragments").glob("*.err"))
    # its watcher kills it once it has seen it stopped for a block timeout (it looks
    # every POLL_S); a run that ends before that removes it as the scheduler goes
    if finished_s > BLOCK_TIMEOUT_S + 3 * POLL_S:
        assert f"worker {victim} of extract_fragments stopped for" in logs, logs
    assert_identical(run_dir, reference)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_stopped_worker_slot_process_does_not_keep_the_run_from_finishing(
    tmp_path: Path, gala: Path, reference: Path
) -> None:
    """daisy's per-slot process (the worker's watcher) stopped: the driver kills it.

    Slot processes start the workers where the run has no fork server.
    """
    run_dir, victim, _ = run_with_one_stopped(
        tmp_path,
        gala,
        lambda driver, workers: next(iter(slot_processes(driver.pid))),
        dict(os.environ, BLOCKWISE_FORK_SERVER="0"),
    )
    assert _proc_stat(victim) is None, "the stopped slot process is still there"
    assert_identical(run_dir, reference)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_stage_abandoned_after_too_many_worker_restarts_is_named_with_its_reason(
    tmp_path: Path, gala: Path
) -> None:
    # every agglomerate worker program dies at start (as one that cannot load its
    # libraries, or is killed by the OOM killer, would)
    crash = tmp_path / "crash"
    crash.mkdir()
    (crash / "sitecustomize.py").write_text(
        "import os, sys\n"
        "if 'task_id=agglomerate:' in os.environ.get('DAISY_CONTEXT', '') + ':' and "
        "'blockwise_workers.block_worker' in sys.orig_argv:\n"
        "    os._exit(3)\n"
    )
    run_dir = tmp_path / "run"
    path = write_config(tmp_path, gala_config(gala, run_dir, max_worker_restarts=2))
    # the crash comes with the interpreter's start: every worker must be a new interpreter
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(crash), os.environ.get("PYTHONPATH", "")]),
        BLOCKWISE_FORK_SERVER="0",
    )
    driver = start_driver(path, env)
    out, _ = driver.communicate(timeout=240)

    assert driver.returncode == 1, out
    assert "Run summary" in out, out
    assert stage_line(out, "extract_fragments")[2] == "56", out
    [abandoned] = [line for line in out.splitlines() if line.startswith("agglomerate was")]
    assert abandoned.startswith("agglomerate was abandoned: worker restart cap exhausted ("), out
    assert (
        " worker failures, 2 restarts; the limit is execution.max_worker_restarts = 2); "
        "last worker error: worker " in abandoned
    ), abandoned
    assert abandoned.endswith(
        "blockwise_workers.block_worker "
        + str(run_dir / "config.yaml")
        + " agglomerate exited with 3"
    ), abandoned
    assert "relabel was abandoned: upstream task abandoned" in out, out
    assert not workers_of(run_dir)
