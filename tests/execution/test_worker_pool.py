"""Workers that go on to the next stage (blockwise.execution.worker_pool).

A real fork server forks a stand-in worker program that serves blocks of a real
daisy scheduler (:func:`blockwise.execution.serve.serve_pipeline`) and, when its
stage has none left, asks its slot for the next one through the control socket,
as ``workers/block_worker.py`` does. The last test runs ``blockwise run`` on real
data with and without reuse and compares every output byte.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import daisy.v2 as daisy
import numpy as np
import pytest
import yaml
import zarr
from daisy import logging as daisy_logging
from funlib.geometry import Roi
from gala import gala_data

from blockwise.execution import forkserver, local, worker_pool
from blockwise.execution.serve import serve_pipeline

from stand_in_workers import alive, stand_in_server

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the fork server is Linux-only"
)

#: the stand-in worker: argv = RECORD_DIR STAGE; records every block it processes
#: (its pid, the stage and the task of its daisy context), prints a line per stage
#: to its standard output and error, and goes on to the next stage while its slot
#: sends one. STAGE "die" exits 5 after its blocks, instead of going idle.
WORKER = textwrap.dedent(
    """
    import json, os, sys, time

    def serve(out, stage):
        import daisy.v2 as daisy
        print(f"worker {os.getpid()} serves {stage}", flush=True)
        print(f"worker {os.getpid()} err {stage}", file=sys.stderr, flush=True)
        client = daisy.Client()
        context = os.environ["DAISY_CONTEXT"]
        while True:
            with client.acquire_block() as block:
                if block is None:
                    break
                if stage.startswith("slow"):
                    time.sleep(0.3)
                name = f"{stage}_{block.block_id[1]}.json"
                with open(os.path.join(out, name), "w") as f:
                    json.dump({"pid": os.getpid(), "stage": stage, "context": context}, f)
        if client._client is not None:
            client._client.disconnect()

    def main(argv):
        from blockwise.execution import worker_pool
        out, stage = argv
        os.makedirs(out, exist_ok=True)
        control = worker_pool.control_channel()
        with open(os.path.join(out, f"started_{os.getpid()}"), "w") as f:
            f.write(str(control is not None))
        while stage is not None:
            serve(out, stage)
            if stage == "die":
                return 5
            if control is None:
                break
            stage = worker_pool.next_stage(control, stage)
        return 0

    if __name__ == "__main__":
        sys.exit(main(sys.argv[1:]))
    """
)


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[forkserver.ForkServer]:
    """A fork server that can import the stand-in worker, which DriverSlot then starts."""
    with stand_in_server(tmp_path, monkeypatch, "pool_test_worker", WORKER) as started:
        yield started


def chain(
    out: Path, server: forkserver.ForkServer, pool: worker_pool.IdleWorkers | None, names: list[str]
) -> Any:
    """A daisy pipeline of tasks of 4 blocks each, one after the other, 2 DriverSlots each."""
    tasks = [
        daisy.Task(
            name,
            total_roi=Roi((0,), (40,)),
            read_roi=Roi((0,), (10,)),
            write_roi=Roi((0,), (10,)),
            process_function=local.DriverSlot(str(out), name, server.published, 600.0, pool),
            max_workers=2,
        )
        for name in names
    ]
    pipeline = tasks[0]
    for task in tasks[1:]:
        pipeline = pipeline + task
    return pipeline


def blocks(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]


@pytest.mark.timeout(120)
def test_two_workers_serve_every_stage_with_each_stages_context_and_log_files(
    server: forkserver.ForkServer, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    pool = worker_pool.IdleWorkers()
    names = ["first", "second", "third"]
    daisy_logging.set_log_basedir(str(tmp_path / "logs"))
    try:
        states = serve_pipeline(chain(out, server, pool, names), None, "127.0.0.1")
    finally:
        daisy_logging.set_log_basedir(None)
    assert all(states[n].completed_count == 4 and states[n].failed_count == 0 for n in names)
    done = blocks(out)
    assert sorted((b["stage"]) for b in done) == sorted(names * 4)
    pids = {b["pid"] for b in done}
    started = {int(p.name.split("_")[1]) for p in out.glob("started_*")}
    # at most two processes for three stages of two slots each: the workers went on
    # (one of them may serve no block, or not start, where the other took every
    # block first, which a busy machine makes possible)
    assert 1 <= len(started) <= 2 and pids <= started, done
    for record in done:
        # each block was served under the context of its own stage's slot
        assert f"task_id={record['stage']}" in record["context"]
    # each stage's output went to that stage's slot log files
    for name in names:
        logs = tmp_path / "logs" / name
        out_text = "".join(p.read_text() for p in logs.glob("*.out"))
        err_text = "".join(p.read_text() for p in logs.glob("*.err"))
        served = {b["pid"] for b in done if b["stage"] == name}
        for pid in served:
            assert f"worker {pid} serves {name}" in out_text
            assert f"worker {pid} err {name}" in err_text
        for other in names:
            if other != name:
                assert f"serves {other}" not in out_text
    # at the end of the run the idle workers exit 0 when released
    waiting = pool.waiting()
    assert {w.pid for w in waiting} == started
    pool.close(wait_s=10.0)
    assert [w.process.returncode for w in waiting] == [0] * len(started)
    assert not any(alive(pid) for pid in started)


@pytest.mark.timeout(120)
def test_without_a_pool_every_slot_starts_a_worker_that_exits(
    server: forkserver.ForkServer, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    names = ["first", "second"]
    states = serve_pipeline(chain(out, server, None, names), None, "127.0.0.1")
    assert all(states[n].completed_count == 4 for n in names)
    done = blocks(out)
    first = {b["pid"] for b in done if b["stage"] == "first"}
    second = {b["pid"] for b in done if b["stage"] == "second"}
    assert first and second and not first & second
    # no control socket was handed over
    assert {p.read_text() for p in out.glob("started_*")} == {"False"}


@pytest.mark.timeout(120)
def test_a_worker_that_exits_instead_is_counted_as_before_and_not_kept(
    server: forkserver.ForkServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    pool = worker_pool.IdleWorkers()
    states = serve_pipeline(chain(out, server, pool, ["die", "after"]), None, "127.0.0.1")
    # the "die" workers exited 5 after their blocks: daisy counts the exit as it
    # always did, the stage's blocks are done, and no dead worker is handed on
    assert states["die"].completed_count == 4
    assert "die exited with 5" in caplog.text
    assert states["after"].completed_count == 4
    after = {b["pid"] for b in blocks(out) if b["stage"] == "after"}
    died = {b["pid"] for b in blocks(out) if b["stage"] == "die"}
    assert after and not after & died
    pool.close(wait_s=10.0)


@pytest.mark.timeout(60)
def test_an_idle_worker_that_died_is_dropped_and_close_kills_when_interrupted(
    server: forkserver.ForkServer, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    pool = worker_pool.IdleWorkers()
    # slow blocks: the second slot starts its own worker before the first is idle
    serve_pipeline(chain(out, server, pool, ["slow_first"]), None, "127.0.0.1")
    waiting = pool.waiting()
    assert len(waiting) == 2
    os.kill(waiting[0].pid, 9)
    deadline = time.monotonic() + 10
    while waiting[0].poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    # the dead one is skipped, the live one handed out
    taken = pool.take()
    assert taken is waiting[1]
    # none idle and none busy (the one taken counts busy until forgotten): no waiting
    pool.forget(taken)
    started = time.monotonic()
    assert pool.take() is None and time.monotonic() - started < worker_pool.HANDOVER_WAIT_S
    pool.put(taken)
    # an interrupted run kills its idle workers at once
    pool.close(wait_s=0.0)
    assert taken.process.returncode == -9
    assert not alive(taken.pid)


@pytest.mark.timeout(60)
def test_a_slot_waits_for_a_busy_worker_to_finish_its_stage(tmp_path: Path) -> None:
    pool = worker_pool.IdleWorkers()

    class Finished:
        pid = 4242
        stage = "first"

        def poll(self) -> int | None:
            return None

    worker: Any = Finished()
    pool.track(worker)
    # put back after 0.05 s: the waiting slot gets it instead of starting a new one
    import threading

    threading.Timer(0.05, pool.put, args=(worker,)).start()
    assert pool.take(wait_s=5.0) is worker
    # busy and never put back: the slot gives up after its wait
    started = time.monotonic()
    assert pool.take(wait_s=0.1) is None
    assert 0.1 <= time.monotonic() - started < 2.0


class Busy:
    """A worker as IdleWorkers sees it."""

    def __init__(self, pid: int, stage: str) -> None:
        self.pid = pid
        self.stage = stage

    def poll(self) -> int | None:
        return None


@pytest.mark.timeout(60)
def test_at_its_limit_a_later_stage_waits_for_a_worker_and_an_earlier_one_does_not() -> None:
    import threading

    pool = worker_pool.IdleWorkers(limit=2)
    for name in ("first", "second", "third"):
        pool.register(name)
    one, two = Busy(1, "first"), Busy(2, "first")
    pool.track(one)  # type: ignore[arg-type]
    pool.track(two)  # type: ignore[arg-type]
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(pool.take("second", wait_s=0.05)))
    waiter.start()
    waiter.join(0.5)
    # far past the handover wait, the slot of the later stage still waits
    assert waiter.is_alive() and not got
    pool.put(one)  # type: ignore[arg-type]
    waiter.join(5)
    assert got == [one] and one.stage == "first"
    # the worker taken counts busy for "second" now: a slot of "first" (a retried
    # block) must not wait for workers of a later stage, which may wait for it
    started = time.monotonic()
    assert pool.take("first", wait_s=0.05) is None
    assert time.monotonic() - started < 1.0
    # while the limit is held by the stage itself and earlier ones, a slot of a
    # later stage gives up only when the run ends
    pool.forget(one)  # type: ignore[arg-type]
    pool.track(Busy(3, "third"))  # type: ignore[arg-type]
    started = time.monotonic()
    assert pool.take("second", wait_s=0.05) is None  # "third" is later: no waiting
    assert time.monotonic() - started < 1.0
    pool.forget(Busy(3, "third"))  # type: ignore[arg-type]
    pool.track(Busy(4, "second"))  # type: ignore[arg-type]
    started = time.monotonic()
    assert pool.take("third", wait_s=0.05, give_up=lambda: True) is None
    assert worker_pool.GIVE_UP_CHECK_S <= time.monotonic() - started < 5.0
    # no limit: the handover wait only
    unlimited = worker_pool.IdleWorkers()
    unlimited.register("first")
    unlimited.register("second")
    unlimited.track(Busy(5, "first"))  # type: ignore[arg-type]
    unlimited.track(Busy(6, "first"))  # type: ignore[arg-type]
    started = time.monotonic()
    assert unlimited.take("second", wait_s=0.05) is None
    assert time.monotonic() - started < 1.0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("limit", [2, None])
def test_a_run_holds_its_limit_of_workers_when_stages_overlap(
    server: forkserver.ForkServer, tmp_path: Path, limit: int | None
) -> None:
    # each "after" block needs only its own "slow" block, so daisy starts the
    # slots of "after" while "slow" is busy: they used to start workers of their
    # own (the control, limit None); with a limit they wait for the busy ones
    out = tmp_path / "out"
    pool = worker_pool.IdleWorkers(limit=limit)
    names = ["slow", "after"]
    for name in names:
        pool.register(name)
    states = serve_pipeline(chain(out, server, pool, names), None, "127.0.0.1")
    assert all(states[n].completed_count == 4 and states[n].failed_count == 0 for n in names)
    pids = {b["pid"] for b in blocks(out)}
    if limit is None:
        assert len(pids) > 2
    else:
        assert len(pids) == 2
    pool.close(wait_s=10.0)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_blockwise_run_with_reused_workers_writes_the_bytes_of_new_workers(
    tmp_path: Path, gala: Path
) -> None:
    """``blockwise run`` of the gala crop, 2 workers, with and without reuse: every
    array of the output and every lookup table byte for byte, and the summary shows
    which processes served the blocks."""
    blockwise = str(Path(sys.executable).with_name("blockwise"))
    stages_of: dict[str, dict[str, set[str]]] = {}
    for mode in ("reused", "new"):
        path = tmp_path / f"{mode}.yaml"
        path.write_text(yaml.safe_dump(gala_data(gala, tmp_path / mode)))
        env = dict(os.environ)
        env[worker_pool.SWITCH_VARIABLE] = "1" if mode == "reused" else "0"
        proc = subprocess.run(
            [blockwise, "run", str(path), "--workers", "2", "--no-progress"],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        summary = json.loads((tmp_path / mode / "summary.json").read_text())
        served: dict[str, set[str]] = {}
        for block in summary["blocks"]:
            served.setdefault(block["worker"], set()).add(block["stage"])
        stages_of[mode] = served
    # new: one worker per slot and stage (and octree level). Reused: the two
    # workers go on from stage to stage, also where daisy runs two stages side by
    # side (hierarchy level 0 starts on the blocks whose agglomerate neighbours
    # are done): the run holds 2 workers, as configured
    assert all(len(stages) == 1 for stages in stages_of["new"].values()), stages_of
    assert max(len(stages) for stages in stages_of["reused"].values()) >= 3, stages_of
    assert len(stages_of["reused"]) <= 2 < len(stages_of["new"]), stages_of
    a = zarr.open_group(str(tmp_path / "reused" / "output.zarr"), mode="r")
    b = zarr.open_group(str(tmp_path / "new" / "output.zarr"), mode="r")
    names: list[str] = []
    a.visitvalues(lambda v: names.append(v.path) if isinstance(v, zarr.Array) else None)
    assert names
    for name in names:
        assert np.array_equal(a[name][:], b[name][:]), name
    for lut in sorted((tmp_path / "reused" / "luts").glob("*")):
        assert lut.read_bytes() == (tmp_path / "new" / "luts" / lut.name).read_bytes()
