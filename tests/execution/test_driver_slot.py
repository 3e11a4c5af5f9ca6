"""Worker slots run by the driver: daisy's scheduler calls them in a driver thread.

A real fork server forks a stand-in worker program (a small module written by
the test), and a real daisy scheduler (:func:`blockwise.execution.serve.serve_pipeline`)
hands out blocks to it; no worker-slot interpreter (``python -m
daisy._subprocess_worker``) starts in between.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import daisy.v2 as daisy
import pytest
from daisy import logging as daisy_logging
from funlib.geometry import Roi

from blockwise.execution import forkserver, local
from blockwise.execution.serve import serve_pipeline

from stand_in_workers import alive, stand_in_server

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the fork server is Linux-only"
)

#: the stand-in worker program: argv = RECORD_DIR MODE; MODE is "blocks" (process
#: blocks as a worker does), "exit3" (die at start), "quick" (exit 0 at once), "stop"
#: (stop itself) or "sleep"
WORKER = textwrap.dedent(
    """
    import json, os, signal, sys, time

    def main(argv):
        out, mode = argv
        os.makedirs(out, exist_ok=True)
        record = {
            "pid": os.getpid(),
            "parent": os.getppid(),
            "context": os.environ.get("DAISY_CONTEXT"),
            "parent_variable": os.environ.get("BLOCKWISE_WORKER_PARENT"),
            "sigint_ignored": signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
            "cmdline": open("/proc/self/cmdline", "rb").read().decode().replace("\\0", " "),
        }
        with open(os.path.join(out, f"{os.getpid()}.json.tmp"), "w") as f:
            json.dump(record, f)
        os.replace(os.path.join(out, f"{os.getpid()}.json.tmp"),
                   os.path.join(out, f"{os.getpid()}.json"))
        print(f"worker {os.getpid()} stdout", flush=True)
        print(f"worker {os.getpid()} stderr", file=sys.stderr, flush=True)
        if mode == "exit3":
            return 3
        if mode == "quick":
            return 0
        if mode == "stop":
            os.kill(os.getpid(), signal.SIGSTOP)
        if mode == "sleep" or mode == "stop":
            time.sleep(120)
            return 0
        import daisy.v2 as daisy
        client = daisy.Client()
        while True:
            with client.acquire_block() as block:
                if block is None:
                    return 0
                with open(os.path.join(out, f"block_{block.block_id[1]}"), "w") as f:
                    f.write(str(os.getpid()))

    if __name__ == "__main__":
        from blockwise.execution import local
        local.adopt()
        sys.exit(main(sys.argv[1:]))
    """
)


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[forkserver.ForkServer]:
    """A fork server that can import the stand-in worker, which DriverSlot then starts."""
    with stand_in_server(tmp_path, monkeypatch, "slot_test_worker", WORKER) as started:
        yield started


def records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]


def one_task(out: Path, mode: str, server: forkserver.ForkServer, **task: Any) -> Any:
    """A daisy task of 4 blocks whose two workers are DriverSlots of the stand-in."""
    slot = local.DriverSlot(str(out), mode, server.published, stuck_after_s=600.0)
    return daisy.Task(
        "slot_test",
        total_roi=Roi((0,), (40,)),
        read_roi=Roi((0,), (10,)),
        write_roi=Roi((0,), (10,)),
        process_function=slot,
        max_workers=2,
        **task,
    )


@pytest.mark.timeout(120)
def test_the_scheduler_calls_driver_slots_in_the_driver_and_their_workers_log_to_the_slot_files(
    server: forkserver.ForkServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    # counted in this process: a slot run in a slot interpreter would not count
    watched: list[int] = []
    real_watch = local.watch

    def counting_watch(proc: Any, *args: Any) -> int:
        watched.append(proc.pid)
        return real_watch(proc, *args)

    monkeypatch.setattr(local, "watch", counting_watch)
    daisy_logging.set_log_basedir(str(tmp_path / "logs"))
    try:
        states = serve_pipeline(one_task(out, "blocks", server), None, "127.0.0.1")
    finally:
        daisy_logging.set_log_basedir(None)
    state = states["slot_test"]
    assert state.completed_count == 4 and state.failed_count == 0
    assert sorted(p.name for p in out.glob("block_*")) == [f"block_{i}" for i in range(4)]
    started = records(out)
    assert started
    assert sorted(watched) == sorted(r["pid"] for r in started)
    for record in started:
        # forked by the fork server (no slot interpreter between), with the slot's context
        assert record["parent"] == server.process.pid
        assert "task_id=slot_test" in record["context"]
        assert record["parent_variable"] is None
        assert record["sigint_ignored"]
    # each worker's output went to its slot's log files, as daisy's own slots do it
    logs = tmp_path / "logs" / "slot_test"
    out_text = "".join(p.read_text() for p in logs.glob("*.out"))
    err_text = "".join(p.read_text() for p in logs.glob("*.err"))
    for record in started:
        assert f"worker {record['pid']} stdout" in out_text
        assert f"worker {record['pid']} stderr" in err_text


def record_pid(block: Any) -> None:
    """A block function: notes which process ran the block (``OUT`` from the environment)."""
    Path(os.environ["SLOT_TEST_OUT"], f"block_{block.block_id[1]}").write_text(str(os.getpid()))


@pytest.mark.timeout(120)
def test_other_process_functions_run_in_daisys_worker_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("SLOT_TEST_OUT", str(out))
    task = daisy.Task(
        "plain",
        total_roi=Roi((0,), (20,)),
        read_roi=Roi((0,), (10,)),
        write_roi=Roi((0,), (10,)),
        process_function=record_pid,
        max_workers=1,
    )
    states = serve_pipeline(task, None, "127.0.0.1")
    assert states["plain"].completed_count == 2
    pids = {int(p.read_text()) for p in out.glob("block_*")}
    assert pids and os.getpid() not in pids


@pytest.mark.timeout(120)
def test_a_worker_that_keeps_dying_abandons_the_task_with_its_exit_status(
    server: forkserver.ForkServer, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    states = serve_pipeline(
        one_task(out, "exit3", server, max_worker_restarts=2), None, "127.0.0.1"
    )
    state = states["slot_test"]
    assert state.abandoned
    assert "exited with 3" in str(state.last_worker_error)
    assert state.completed_count == 0


def listening() -> tuple[socket.socket, daisy.Context]:
    """A socket standing in for the scheduler, and the context naming it."""
    scheduler = socket.create_server(("127.0.0.1", 0))
    port = scheduler.getsockname()[1]
    return scheduler, daisy.Context(hostname="127.0.0.1", port=port, task_id="t", worker_id=0)


@pytest.mark.timeout(60)
def test_a_stuck_worker_is_killed_and_counts_as_failed(
    server: forkserver.ForkServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    scheduler, context = listening()
    try:
        slot = local.DriverSlot(str(out), "stop", server.published, stuck_after_s=1.0)
        started = time.monotonic()
        with pytest.raises(local.WorkerExitError, match="exited with -9"):
            slot(context=context)
        assert time.monotonic() - started < 30
    finally:
        scheduler.close()
    [record] = records(out)
    assert not alive(record["pid"])
    err = capsys.readouterr().err
    assert f"worker {record['pid']} of stop stopped for" in err, err


@pytest.mark.timeout(60)
def test_a_worker_is_stopped_quietly_when_the_scheduler_ends(
    server: forkserver.ForkServer, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    scheduler, context = listening()
    slot = local.DriverSlot(str(out), "sleep", server.published, stuck_after_s=600.0)
    deadline = time.monotonic() + 20
    thread = threading.Thread(target=slot, kwargs={"context": context})
    thread.start()
    while not records(out) and time.monotonic() < deadline:
        time.sleep(0.02)
    [record] = records(out)
    time.sleep(1.5)  # the scheduler listens: the worker runs on
    assert alive(record["pid"]) and thread.is_alive()
    scheduler.close()
    thread.join(timeout=30)  # returns without an error: the run ended, not a failure
    assert not thread.is_alive()
    assert not alive(record["pid"])
    # and a slot asked for after the scheduler ended starts no worker
    slot(context=context)
    assert len(records(out)) == 1


@pytest.mark.timeout(60)
def test_without_a_fork_server_the_worker_is_a_new_interpreter_tied_to_the_driver(
    server: forkserver.ForkServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    published = server.published
    server.stop(wait_s=0.0)
    local.DriverSlot(str(out), "quick", published)(context=None)
    assert "starting the worker as a new interpreter" in caplog.text
    [record] = records(out)
    assert record["parent"] == os.getpid()
    # adopt() read the variable at the program's start (and removed it): the program
    # dies with the driver and ignores SIGINT, as a forked worker does
    assert record["parent_variable"] is None
    assert record["sigint_ignored"]


@pytest.mark.timeout(60)
def test_a_slot_whose_server_went_with_the_run_starts_no_worker(
    server: forkserver.ForkServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # a signal to the whole process group stops the fork server and, a moment
    # later, the scheduler: a slot asked for in between starts nothing
    out = tmp_path / "out"
    published = server.published
    server.stop(wait_s=0.0)
    scheduler, context = listening()
    threading.Timer(0.5, scheduler.close).start()
    local.DriverSlot(str(out), "quick", published)(context=context)
    assert not records(out)
    assert "starting the worker as a new interpreter" not in caplog.text
