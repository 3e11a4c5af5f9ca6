"""The local profile: worker processes on this machine, the same program a cluster node runs.

Each worker slot of a stage starts the worker program and watches it until
it exits, so that no worker outlives its run and none keeps the driver
waiting. CPU stages with the run's fork server (:mod:`blockwise.execution.forkserver`)
run their slots in the driver: daisy's scheduler calls :class:`DriverSlot` in
a thread, which asks the fork server for the worker program. GPU stages, and
every stage of a run without a fork server, run them as daisy does by
default: daisy starts one small process per slot and calls
:class:`LocalWorker` in it, which starts the worker program as a new
interpreter (or through the fork server). Either way:

- the worker program dies with the driver (Linux ``PR_SET_PDEATHSIG``, on the
  fork server or on the slot process, and the fork server's child ends when
  its slot's connection closes): a driver killed by any signal, even
  ``SIGKILL``, leaves no worker behind;
- when the run is interrupted (the driver's daisy scheduler stops listening,
  or a slot process gets SIGINT or SIGTERM), the worker program is killed and
  the slot ends cleanly: a stopped worker, or one inside a long block, does
  not hold the driver up;
- a worker that stays stopped (``SIGSTOP``, ``SIGTSTP``) for a whole block
  timeout is killed with ``SIGKILL``. A stopped process cannot run the block
  watchdog of its daisy client (which ends every other stuck block), and daisy
  would otherwise wait for it forever after every block is done; the block it
  held is given to another worker by daisy's own reclaim on the same timeout.
  A stopped slot process is killed by the driver (:class:`SlotWatch`).

Linux only where ``/proc`` and ``prctl`` are needed; elsewhere workers run
unwatched.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from blockwise.execution import (
    WORKER_MODULE,
    forkserver,
    probe,
    worker_arguments,
    worker_command,
    worker_pool,
)

if TYPE_CHECKING:
    # not at run time: daisy's per-slot process imports this module, and a short
    # start leaves a short window in which it cannot yet take a signal calmly
    from blockwise.run_context import RunContext
    from blockwise.stage import StageTask

logger = logging.getLogger(__name__)

#: seconds between two looks at whether the worker program is stopped
POLL_S = 0.5
#: seconds between two checks that the scheduler still listens
PROBE_S = 1.0
#: ``prctl`` option: the signal this process gets when its parent exits (Linux)
_PR_SET_PDEATHSIG = 1
#: set for a worker program started as a new interpreter by a thread of the driver:
#: the driver's pid, which the program ties itself to at its start (see :func:`adopt`)
PARENT_VARIABLE = "BLOCKWISE_WORKER_PARENT"


def die_with_parent(parent_pid: int) -> None:
    """Have this process killed (``SIGKILL``) when its parent exits; Linux only.

    Args:
        parent_pid: the parent this process must outlive no longer; if it is
            already gone (it died before the request took effect), this
            process exits at once.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        logger.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(errno))
        return
    if os.getppid() != parent_pid:
        os._exit(1)


def _worker_setup(parent_pid: int) -> None:
    """In the worker program's process before it starts: tie it to its watcher.

    It dies with the watching process, and ignores SIGINT: a Ctrl-C reaches the
    whole process group, and the watcher, which gets it too, ends the worker
    (a worker interrupted inside a block would report it failed, traceback and all).
    """
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def adopt() -> None:
    """In a worker program at its start: die with the driver that asked for it, if one did.

    A thread of the driver cannot run code between ``fork`` and ``exec`` safely
    (``preexec_fn``), so a worker it starts as a new interpreter finds the
    driver's pid in :data:`PARENT_VARIABLE` and calls :func:`_worker_setup` itself.
    """
    parent = os.environ.pop(PARENT_VARIABLE, None)
    if parent is not None and parent.isdigit():
        _worker_setup(int(parent))


def is_stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped by a signal or a tracer (Linux ``/proc``).

    False where ``/proc`` cannot say (another OS, a process already reaped).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # the state is the first field after the command name, which may hold ")"
    fields = stat[stat.rfind(")") + 1 :].split()
    return bool(fields) and fields[0] in ("T", "t")


def scheduler_gone(context: Any) -> bool:
    """Whether the daisy scheduler named by a worker context stopped listening (it ended).

    Asked from the scheduler's host (a worker-slot process), without connecting
    to it (see :mod:`~blockwise.execution.probe`).
    """
    return not probe.scheduler_listening(context["hostname"], int(context["port"]), 2.0)


class _Process(Protocol):
    """What a slot process needs of its worker program: a ``Popen`` or a forked worker."""

    pid: int

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


class _StopRequest:
    """Why a worker-watching process stops its worker program early (nothing yet: None, False)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        #: the scheduler refuses connections: the run ended under the worker
        self.scheduler_gone = False

    def request(self, signum: int, frame: object) -> None:
        """A signal handler: note the request (the watch loop acts on it)."""
        del frame
        self.signum = signum


@dataclass(frozen=True)
class LocalWorker:
    """Starts one worker program on this machine and watches it (one per daisy worker slot).

    The program reads the run config, connects to the scheduler named by
    ``DAISY_CONTEXT`` (inherited) and processes blocks until none are left. A
    GPU stage's worker sees one device: ``CUDA_VISIBLE_DEVICES`` is the
    worker's slot modulo the GPUs given.

    Args:
        config_path: the resolved config the worker reads.
        stage: the daisy task id whose blocks the worker processes.
        gpu_ids: the devices GPU workers are spread over (empty: no GPU).
        stuck_after_s: seconds a worker may stay stopped before it is killed
            (the stage's block timeout).
    """

    config_path: str
    stage: str
    gpu_ids: tuple[str, ...] = ()
    stuck_after_s: float = 600.0

    def __call__(self, *, context: Any = None) -> None:
        """Run the worker program until it exits.

        Raises:
            SystemExit: if the worker program exited non-zero or was killed:
                this process then exits 1, which daisy counts against the
                stage's worker restarts.
        """
        # first of all, as daisy starts this process when the run may already be
        # ending: SIGTERM or SIGINT (a Ctrl-C reaches the whole process group)
        # stops the worker program, and this process leaves quietly
        stop = _StopRequest()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, stop.request)
        try:
            self._run(stop, context)
        finally:
            # Python restores the default actions while it shuts down, when a
            # signal would end this process with a failure that daisy reports
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})

    def _run(self, stop: _StopRequest, context: Any) -> None:
        """Start the worker program, watch it, and say how it ended (see ``__call__``)."""
        # this process dies with the driver, its worker program with this process
        die_with_parent(os.getppid())
        command = worker_command(self.config_path, self.stage)
        env = dict(os.environ)
        if self.gpu_ids:
            worker_id = int(context["worker_id"]) if context is not None else 0
            env["CUDA_VISIBLE_DEVICES"] = self.gpu_ids[worker_id % len(self.gpu_ids)]
        proc = self._start(command, env)
        try:
            returncode = watch(proc, self.stage, self.stuck_after_s, stop, context)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if stop.signum is not None:
            logger.info("%s worker stopped: signal %d", self.stage, stop.signum)
            return
        if stop.scheduler_gone:
            logger.info("%s worker stopped: the scheduler ended", self.stage)
            return
        if returncode != 0 and context is not None and scheduler_gone(context):
            # the run ended or was interrupted under it (its connection broke):
            # a straggler, not a failed worker
            logger.info(
                "%s worker exited with %d after the scheduler stopped", self.stage, returncode
            )
            return
        if returncode != 0:
            # one line on stderr (no traceback): daisy quotes its tail in the run's log
            raise SystemExit(f"worker {' '.join(command)} exited with {returncode}")

    def _start(self, command: list[str], env: dict[str, str]) -> _Process:
        """Start the worker program: forked by the run's fork server, or a new interpreter.

        GPU workers are always new interpreters; so is every worker when the
        server cannot be reached (said once per slot process, as a warning).
        """
        address = os.environ.get(forkserver.ADDRESS_VARIABLE)
        if address and not self.gpu_ids:
            try:
                return forkserver.ForkedWorker(
                    address,
                    WORKER_MODULE,
                    worker_arguments(self.config_path, self.stage),
                    command,
                    env,
                )
            except forkserver.ForkServerError as e:
                logger.warning("%s; starting the worker as a new interpreter", e)
        return subprocess.Popen(
            command, env=env, preexec_fn=functools.partial(_worker_setup, os.getpid())
        )


def _descriptor(stream: Any, default: int) -> int:
    """The file descriptor behind ``stream``; ``default`` for a stream without one (captured)."""
    try:
        return int(stream.fileno())
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both
        return default


class WorkerExitError(RuntimeError):
    """A worker program a driver-run slot started exited non-zero or was killed.

    ``daisy_worker_exit`` tells daisy's logging wrapper that the worker wrote
    its own traceback (to the slot's log file) already, as daisy's own spawn
    error does; daisy counts the exit against the stage's worker restarts.
    """

    daisy_worker_exit = True


@dataclass(frozen=True)
class DriverSlot:
    """A worker slot the driver runs itself: no slot interpreter between daisy and the worker.

    daisy's scheduler calls it in a thread of the driver, once per worker slot
    (:func:`blockwise.execution.serve.serve_pipeline` hands it to daisy
    unwrapped). It asks the run's fork server for the worker program, with the
    slot's daisy context in the worker's environment and the slot's log files as
    its output, and watches it as :class:`LocalWorker` does: killed when stopped
    for a whole block timeout or when the scheduler ended; a non-zero exit is
    a failed worker (:class:`WorkerExitError`). The worker dies with the fork server
    and when this slot's connection to it closes, so with the driver. Where the
    server cannot start it, the worker starts as a new interpreter that dies
    with the driver (a warning says so).

    With ``pool`` the slot first takes an idle worker of an earlier stage from
    it, and a worker done with this slot's stage goes back to it instead of
    exiting (:mod:`~blockwise.execution.worker_pool`).

    Args:
        config_path: the resolved config the worker reads.
        stage: the daisy task id whose blocks the worker processes.
        address: the fork server's address (``ADDRESS:SERVER_PID``).
        stuck_after_s: seconds a worker may stay stopped before it is killed.
        pool: the run's idle workers (None: a new worker per slot, which exits).
    """

    config_path: str
    stage: str
    address: str
    stuck_after_s: float = 600.0
    pool: worker_pool.IdleWorkers | None = field(default=None, compare=False, repr=False)
    #: daisy must call this in the driver, not in a slot interpreter
    in_driver: ClassVar[bool] = True

    def __call__(self, *, context: Any = None) -> None:
        """Run the worker program of this slot until it exits.

        Raises:
            WorkerExitError: if it exited non-zero or was killed while the scheduler listened.
        """
        from daisy import logging as daisy_logging

        if context is not None and scheduler_gone(context):
            return  # the run is ending (interrupted): no new worker
        command = worker_command(self.config_path, self.stage)
        env = dict(os.environ)
        if context is not None:
            env["DAISY_CONTEXT"] = context.to_env()
        file_mode = daisy_logging.get_log_mode() == "file"
        files = daisy_logging.current_slot_files() if file_mode else None
        out, err = files if files is not None else (sys.stdout, sys.stderr)
        out.flush()
        err.flush()

        def say(message: str) -> None:
            """An error of this slot: in the driver's log and the slot's log file."""
            logger.error("%s", message)
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            with contextlib.suppress(OSError, ValueError):
                err.write(f"{stamp} {__name__} ERROR: {message}\n")
                err.flush()

        with open(os.devnull, "rb") as null:
            fds = (null.fileno(), _descriptor(out, 1), _descriptor(err, 2))
            proc = self._adopt(command, context, fds) or self._start(command, env, fds, context)
        if proc is None:
            logger.info("%s: no worker started, the run is ending", self.stage)
            return
        stop = _StopRequest()
        try:
            returncode = watch(proc, self.stage, self.stuck_after_s, stop, context, say)
        except BaseException:
            proc.kill()
            if isinstance(proc, worker_pool.PooledWorker):
                proc.process.wait()  # its exit, not a message it may have sent
                proc.release()
                if self.pool is not None:
                    self.pool.forget(proc)
            else:
                proc.wait()
            raise
        if isinstance(proc, worker_pool.PooledWorker) and self.pool is not None:
            if proc.idle:
                self.pool.put(proc)  # done with this stage: a slot of the next one takes it
                return
            proc.release()
            self.pool.forget(proc)
        if stop.scheduler_gone:
            logger.info("%s worker stopped: the scheduler ended", self.stage)
            return
        grace_s = SIGNALLED_GRACE_S if returncode < 0 else 0.0
        if returncode != 0 and context is not None and _scheduler_stops(context, grace_s):
            # the run ended or was interrupted under it (a signal to the whole
            # process group ends the workers too): a straggler, not a failed worker
            logger.info("%s worker exited with %d as the scheduler stopped", self.stage, returncode)
            return
        if returncode != 0:
            message = f"worker {' '.join(command)} exited with {returncode}"
            say(message)
            raise WorkerExitError(message)

    def _adopt(
        self, command: list[str], context: Any, fds: tuple[int, int, int]
    ) -> worker_pool.PooledWorker | None:
        """An idle worker of an earlier stage, sent this slot's stage; None if there is none."""
        if self.pool is None or context is None:
            return None
        while (
            worker := self.pool.take(self.stage, give_up=lambda: scheduler_gone(context))
        ) is not None:
            try:
                worker.assign(self.stage, context.to_env(), command, (fds[1], fds[2]))
            except OSError:  # it died after it went idle
                self.pool.forget(worker)
                worker.release()
                worker.kill()
                worker.process.wait()
                continue
            logger.debug("%s: worker %d goes on from another stage", self.stage, worker.pid)
            return worker
        return None

    def _start(
        self, command: list[str], env: dict[str, str], fds: tuple[int, int, int], context: Any
    ) -> _Process | None:
        """The worker program, forked by the server; None if the server is gone because
        the run is ending (a signal to the whole process group stops it too)."""
        # with a pool, the worker's standard input is its control socket
        control = worker_pool.control_pair() if self.pool is not None else None
        worker_env = env if control is None else {**env, worker_pool.CONTROL_VARIABLE: "stdin"}
        worker_fds = fds if control is None else (control[1].fileno(), fds[1], fds[2])
        try:
            try:
                forked = forkserver.ForkedWorker(
                    self.address,
                    WORKER_MODULE,
                    worker_arguments(self.config_path, self.stage),
                    command,
                    worker_env,
                    worker_fds,
                )
            finally:
                if control is not None:
                    control[1].close()  # the worker has its own copy
        except BaseException as e:
            if control is not None:
                control[0].close()
            if not isinstance(e, forkserver.ForkServerError):
                raise
            if context is not None and _scheduler_stops(context, SIGNALLED_GRACE_S):
                return None
            logger.warning("%s; starting the worker as a new interpreter", e)
        else:
            if self.pool is None or control is None:
                return forked
            pooled = worker_pool.PooledWorker(forked, control[0], self.stage)
            self.pool.track(pooled)
            return pooled
        # no preexec_fn in a threaded driver: the worker ties itself to the driver
        env[PARENT_VARIABLE] = str(os.getpid())
        return subprocess.Popen(command, env=env, stdin=fds[0], stdout=fds[1], stderr=fds[2])


#: seconds a slot whose worker a signal ended (or whose fork server is gone) waits
#: for the scheduler to stop before it counts the worker as failed (or starts a new
#: interpreter): a signal to the whole process group reaches the workers and the
#: server first, the driver's scheduler stops a moment later
SIGNALLED_GRACE_S = 2.0


def _scheduler_stops(context: Any, grace_s: float) -> bool:
    """Whether the scheduler stopped, or stops within ``grace_s`` seconds."""
    deadline = time.monotonic() + grace_s
    while True:
        if scheduler_gone(context):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def watch(
    proc: _Process,
    stage: str,
    stuck_after_s: float,
    stop: _StopRequest,
    context: Any,
    say: Callable[[str], None] | None = None,
) -> int:
    """Wait for a worker program; kill it when asked, when the scheduler ended, or when stuck.

    Args:
        proc: the worker program.
        stage: its stage (daisy task id), for the log.
        stuck_after_s: seconds it may stay stopped (``SIGSTOP``) before it is killed.
        stop: set by whoever may ask for an early end (a signal handler).
        context: the daisy worker context naming the scheduler (None: not probed).
        say: where the error that a stuck worker was killed goes (default: logged).

    Returns:
        Its exit status (negative: the signal that ended it).
    """
    stopped_since: float | None = None
    refused = 0
    next_probe = time.monotonic() + PROBE_S
    while True:
        try:
            return proc.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            pass
        # the scheduler ended (the run was interrupted, or finished while the
        # worker cannot notice): refused twice in a row, one hiccup is not enough
        now = time.monotonic()
        if context is not None and now >= next_probe:
            next_probe = now + PROBE_S
            refused = refused + 1 if scheduler_gone(context) else 0
            stop.scheduler_gone = refused >= 2
        if stop.signum is not None or stop.scheduler_gone:
            proc.kill()  # SIGKILL: a stopped program ends too
            return proc.wait()
        if not is_stopped(proc.pid):
            stopped_since = None
            continue
        if stopped_since is None:
            stopped_since = now
        elif now - stopped_since >= stuck_after_s:
            message = (
                f"worker {proc.pid} of {stage} stopped for {now - stopped_since:.0f} s "
                f"(block timeout {stuck_after_s:.0f} s); killing it"
            )
            (say or logger.error)(message)
            proc.kill()
            return proc.wait()


def _slot_processes() -> list[int]:
    """This process's children that are daisy worker-slot processes (Linux ``/proc``)."""
    found = []
    for children in Path("/proc/self/task").glob("*/children"):
        try:
            pids = [int(p) for p in children.read_text().split()]
        except (OSError, ValueError):
            continue
        for pid in pids:
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"daisy._subprocess_worker" in command:
                found.append(pid)
    return found


class SlotWatch:
    """Kills the driver's worker-slot processes that stay stopped past the block timeout.

    A slot process (:class:`LocalWorker`) watches its worker program, but a
    stopped slot process (``SIGSTOP``, ``SIGTSTP``) watches nothing and never
    ends, and daisy waits for it after every block is done. The driver looks
    every :data:`POLL_S`; a slot stopped for ``stuck_after_s`` is killed
    (SIGKILL, its worker program ends with it), and daisy hands the block it
    held to another worker. Linux only (elsewhere it does nothing).

    Args:
        stuck_after_s: seconds a slot process may stay stopped (the block timeout).
    """

    def __init__(self, stuck_after_s: float) -> None:
        self.stuck_after_s = stuck_after_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="blockwise-slot-watch", daemon=True)
        if sys.platform.startswith("linux"):
            self._thread.start()

    def _run(self) -> None:
        stopped_since: dict[int, float] = {}
        while not self._done.wait(POLL_S):
            now = time.monotonic()
            slots = _slot_processes()
            for pid in list(stopped_since):
                if pid not in slots:
                    del stopped_since[pid]
            for pid in slots:
                if not is_stopped(pid):
                    stopped_since.pop(pid, None)
                    continue
                since = stopped_since.setdefault(pid, now)
                if now - since >= self.stuck_after_s:
                    logger.error(
                        "worker slot process %d stopped for %.0f s (block timeout %.0f s); "
                        "killing it",
                        pid,
                        now - since,
                        self.stuck_after_s,
                    )
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    del stopped_since[pid]

    def stop(self) -> None:
        """Stop watching; safe to call more than once."""
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()


def visible_gpus() -> tuple[str, ...]:
    """The GPUs local workers may use: ``CUDA_VISIBLE_DEVICES`` or every device torch sees."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return tuple(d.strip() for d in listed.split(",") if d.strip())
    import torch

    return tuple(str(i) for i in range(torch.cuda.device_count()))


class LocalProfile:
    """Worker processes on this machine, listening on loopback.

    Args:
        config_path: the resolved config every worker reads.
        fork_server: the run's fork server
            (:func:`~blockwise.execution.start_fork_server`); None: every
            worker starts a new interpreter.
        stuck_after_s: seconds a worker-slot process may stay stopped (the
            block timeout) before it is killed.
    """

    multiprocessing = True
    host = "127.0.0.1"

    def __init__(
        self,
        config_path: Path,
        fork_server: forkserver.ForkServer | None = None,
        stuck_after_s: float = 600.0,
    ) -> None:
        self.config_path = config_path
        #: kills worker-slot processes that stay stopped (see :class:`SlotWatch`)
        self.slot_watch = SlotWatch(stuck_after_s)
        #: starts CPU workers without a new interpreter each (see :mod:`.forkserver`)
        self.fork_server = fork_server
        #: workers that finished a stage, for the next stage's slots (see :mod:`.worker_pool`)
        self.idle_workers = (
            worker_pool.IdleWorkers() if fork_server is not None and worker_pool.enabled() else None
        )

    def process_function(self, ctx: RunContext, task: StageTask) -> Callable[..., Any]:
        """A worker-starting function; GPU stages spread their workers over the GPUs."""
        from blockwise.stage import stage_execution

        gpus = visible_gpus() if task.stage.resources(ctx.config).gpus else ()
        execution = stage_execution(ctx.config, task.stage)
        timeout_s = execution.block_timeout_s
        if self.fork_server is not None and not gpus:
            address = self.fork_server.published
            if self.idle_workers is not None:
                # the run holds as many workers at once as its widest CPU stage asks for
                limit = max(self.idle_workers.limit or 0, execution.num_workers)
                self.idle_workers.limit = limit
                self.idle_workers.register(task.name)
            return DriverSlot(
                str(self.config_path), task.name, address, timeout_s, self.idle_workers
            )
        return LocalWorker(str(self.config_path), task.name, gpus, timeout_s)

    def teardown(self, interrupted: bool = False) -> None:
        """Release the idle workers and stop the fork server; every other worker dies
        with its daisy worker process or the driver."""
        self.slot_watch.stop()
        if self.idle_workers is not None:
            self.idle_workers.close(0.0 if interrupted else forkserver.STOP_WAIT_S)
        if self.fork_server is not None:
            self.fork_server.stop(wait_s=0.0 if interrupted else forkserver.STOP_WAIT_S)
