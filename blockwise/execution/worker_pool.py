"""Workers that go on to the next stage: one process per slot for a whole local run.

A local run used to start a new worker program for every slot of every stage
(and octree level). Each then opened the run again and read its inputs cold:
agglomerate's first block of a worker inflated the 27 HDF5 chunks of its
affinities that the same machine had inflated moments before for
extract_fragments, and paid the stage's setup (zarr arrays, the graph store)
once more. A FIB-25 run with 128^3 blocks spent 0.4 of its 1.0 block-seconds
of agglomerate on such first blocks.

So a worker forked by the run's fork server for a :class:`~blockwise.execution.local.DriverSlot`
does not exit when its stage has no block left for it. It tells the slot so
over a control socket (its standard input, a ``SOCK_SEQPACKET`` socket pair),
the slot returns (daisy counts the worker done, as if it had exited 0) and
puts it into the run's :class:`IdleWorkers`; the next slot of any stage takes
it from there and sends it that stage's name, daisy context and log files
(``SCM_RIGHTS``), and the worker serves the new stage with the run it opened
once (:class:`~blockwise.run_context.RunContext`, input chunk caches included).
A worker still idle when the run ends gets the end of its control socket and
exits 0.

Nothing else changes: a worker that exits, is killed or dies is watched and
counted exactly as before (:func:`~blockwise.execution.local.watch`), and one
that died while idle is dropped when a slot looks for one. GPU stages, workers
started as new interpreters (no fork server) and cluster profiles do not take
part. ``BLOCKWISE_WORKER_REUSE=0`` in the driver's environment starts a new
worker for every slot.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from blockwise.execution.forkserver import ForkedWorker

logger = logging.getLogger(__name__)

#: set in a worker's environment: its standard input is its control socket
CONTROL_VARIABLE = "BLOCKWISE_WORKER_CONTROL"
#: ``0`` in the driver's environment: every slot starts a new worker
SWITCH_VARIABLE = "BLOCKWISE_WORKER_REUSE"
#: the largest control message, bytes
MAX_MESSAGE = 1 << 20


def enabled() -> bool:
    """Whether workers go on to the next stage (not switched off in the environment)."""
    return os.environ.get(SWITCH_VARIABLE, "1") != "0"


def control_pair() -> tuple[socket.socket, socket.socket]:
    """The (slot's, worker's) ends of a new control socket."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


# -- the worker's side ------------------------------------------------------------------


def control_channel() -> socket.socket | None:
    """In a worker program at its start: its control socket, if its slot gave it one.

    The socket is standard input; it is taken over and standard input then
    reads from ``/dev/null``, as for every other worker.
    """
    if os.environ.pop(CONTROL_VARIABLE, None) != "stdin":
        return None
    try:
        control = socket.socket(fileno=os.dup(0))
    except OSError as e:  # not a socket: started by hand with the variable set
        logger.warning("standard input is not a control socket (%s): one stage only", e)
        return None
    with open(os.devnull, "rb") as null:
        os.dup2(null.fileno(), 0)
    return control


def next_stage(control: socket.socket, finished: str) -> str | None:
    """Tell the slot that ``finished`` has no block left for this worker; wait for the next.

    On an assignment the worker's standard output and error become the new
    slot's log files, ``DAISY_CONTEXT`` the new slot's context, and its title
    (``ps``) the new stage's command line.

    Returns:
        the next stage's daisy task id, or None when the run ends (the
        driver closed the socket, or is gone).
    """
    try:
        control.send(json.dumps({"idle": finished}).encode())
        message, fds, _, _ = socket.recv_fds(control, MAX_MESSAGE, 2)
    except OSError:
        return None
    if not message:
        return None
    assignment = json.loads(message)
    sys.stdout.flush()
    sys.stderr.flush()
    for target, fd in zip((1, 2), fds, strict=True):
        os.dup2(fd, target)
        os.close(fd)
    os.environ["DAISY_CONTEXT"] = assignment["context"]
    with contextlib.suppress(ImportError):
        from setproctitle import setproctitle

        setproctitle(" ".join(assignment["title"]))
    return str(assignment["stage"])


# -- the driver's side ------------------------------------------------------------------


class PooledWorker:
    """A worker forked by the fork server that can go on to another stage.

    What :func:`~blockwise.execution.local.watch` needs of a process, plus
    :attr:`idle`: :meth:`wait` returns 0 when the worker says its stage has no
    block left for it, as a worker's exit would.

    Args:
        process: the forked worker program.
        control: the slot's end of its control socket.
        stage: the daisy task id it serves.
    """

    def __init__(self, process: ForkedWorker, control: socket.socket, stage: str) -> None:
        self.process = process
        self.pid = process.pid
        self.stage = stage
        self._control = control
        #: the worker finished its stage and waits for the next
        self.idle = False

    def wait(self, timeout: float | None = None) -> int:
        """Wait until the worker exits, or is done with its stage (then 0, and :attr:`idle`).

        Raises:
            subprocess.TimeoutExpired: if neither happened within ``timeout`` seconds.
        """
        if self.process.returncode is not None:
            return self.process.returncode
        exited = self.process.fileno()
        ready, _, _ = select.select([exited, self._control.fileno()], [], [], timeout)
        if not ready:
            raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0.0)
        if exited in ready:
            return self.process.wait(0)
        try:
            message = self._control.recv(MAX_MESSAGE)
        except OSError:
            message = b""
        if message and json.loads(message).get("idle") == self.stage:
            self.idle = True
            return 0
        # the control socket closed under it: the worker is ending
        return self.process.wait()

    def poll(self) -> int | None:
        """The exit status if the worker ended, else None."""
        return self.process.poll()

    def kill(self) -> None:
        """SIGKILL the worker (nothing if it has ended)."""
        self.process.kill()

    def assign(self, stage: str, context: str, title: list[str], fds: tuple[int, int]) -> None:
        """Send the idle worker its next stage, daisy context, title and log files.

        Raises:
            OSError: if the worker cannot be reached (it died meanwhile).
        """
        message = {"stage": stage, "context": context, "title": title}
        socket.send_fds(self._control, [json.dumps(message).encode()], list(fds))
        self.stage = stage
        self.idle = False

    def release(self) -> None:
        """Close the control socket: an idle worker exits 0."""
        self._control.close()


#: seconds a slot waits for a busy worker to finish its stage before it starts a new
#: one: daisy starts the next stage's slots as the last block of the one before is
#: released, a moment before that block's worker has asked for another and gone
#: idle (a few milliseconds). A slot of a stage that runs beside a busy one (daisy
#: starts a stage's blocks as soon as the blocks they read are done) waits this
#: long in vain, and then starts a new worker as it always did.
HANDOVER_WAIT_S = 0.1

#: seconds between checks that the run is ending, for a slot that waits while the
#: run holds its limit of workers
GIVE_UP_CHECK_S = 0.5


class IdleWorkers:
    """The run's workers that finished a stage and wait for a slot of the next.

    It also counts the workers that are busy with a stage (:meth:`track`), so
    that a slot can wait a moment for one to finish instead of starting a
    new worker. Owned by the local profile, which :meth:`close`\\ s it at the
    end of the run.

    With ``limit``, the run holds at most that many workers at once where it
    can: daisy starts a stage's slots as soon as one of its blocks can run,
    which is long before the stage before has ended (an agglomerate block
    needs only the fragments around it), and each slot used to start its own
    worker: a 2-worker run on FIB-25 with 64^3 blocks held 4 workers for most
    of its time, and the 2 extra ones read the inputs again from cold caches.
    A slot whose stage comes after every stage a busy worker serves (its
    :meth:`register` order: the pipeline's order, in which a stage may depend
    on any earlier one) now waits for one of them to go idle. A slot of an
    earlier stage (a block retried after the later stages started) never
    waits: a busy worker of a later stage may be waiting for its blocks.

    Args:
        limit: the most workers to hold at once (None: no limit).
    """

    def __init__(self, limit: int | None = None) -> None:
        self._changed = threading.Condition()
        self._workers: list[PooledWorker] = []
        # busy workers by pid: the stage each serves
        self._busy: dict[int, str] = {}
        self._order: dict[str, int] = {}
        self._closed = False
        self.limit = limit

    def register(self, stage: str) -> None:
        """Note the next stage of the run's pipeline (call in pipeline order)."""
        with self._changed:
            self._order.setdefault(stage, len(self._order))

    def track(self, worker: PooledWorker) -> None:
        """Count ``worker`` busy with a stage (until it is :meth:`put` back or :meth:`forget`)."""
        with self._changed:
            self._busy[worker.pid] = worker.stage

    def forget(self, worker: PooledWorker) -> None:
        """``worker`` ended, or will: no slot waits for it."""
        with self._changed:
            self._busy.pop(worker.pid, None)
            self._changed.notify_all()

    def put(self, worker: PooledWorker) -> None:
        """Keep an idle worker for the next slot (released at once after :meth:`close`)."""
        with self._changed:
            self._busy.pop(worker.pid, None)
            if not self._closed:
                self._workers.append(worker)
                self._changed.notify_all()
                return
        worker.release()

    def waiting(self) -> list[PooledWorker]:
        """The idle workers now, oldest first."""
        with self._changed:
            return list(self._workers)

    def _full_for(self, stage: str | None) -> bool:
        """Whether a slot of ``stage`` waits for a busy worker (see the class docstring)."""
        if self.limit is None or stage is None or len(self._busy) < self.limit:
            return False
        mine = self._order.get(stage)
        if mine is None:
            return False
        return all(self._order.get(other, mine + 1) <= mine for other in self._busy.values())

    def take(
        self,
        stage: str | None = None,
        wait_s: float = HANDOVER_WAIT_S,
        give_up: Callable[[], bool] | None = None,
    ) -> PooledWorker | None:
        """An idle worker that is still alive for a slot of ``stage``, or None (start one).

        With none idle but some busy, waits up to ``wait_s`` seconds for one
        to be put back; while the run holds its ``limit`` of workers and
        ``stage`` comes after all their stages, for as long as that lasts,
        checking ``give_up`` (the run is ending: None) every
        :data:`GIVE_UP_CHECK_S` seconds.
        """
        deadline = time.monotonic() + wait_s
        with self._changed:
            while True:
                while self._workers:
                    worker = self._workers.pop(0)
                    if worker.poll() is None:
                        self._busy[worker.pid] = stage if stage is not None else worker.stage
                        return worker
                    logger.info("worker %d ended while idle: %d", worker.pid, worker.poll())
                    worker.release()
                if self._closed:
                    return None
                if self._full_for(stage):
                    if not self._changed.wait(GIVE_UP_CHECK_S) and give_up is not None:
                        # asked without the lock: it may take a moment
                        self._changed.release()
                        try:
                            ending = give_up()
                        finally:
                            self._changed.acquire()
                        if ending:
                            return None
                    continue
                left = deadline - time.monotonic()
                if not self._busy or left <= 0:
                    return None
                self._changed.wait(left)

    def close(self, wait_s: float) -> None:
        """Release every idle worker and wait up to ``wait_s`` seconds for each to exit;
        with ``wait_s`` 0 (an interrupted run), kill them at once."""
        with self._changed:
            self._closed = True
            workers, self._workers = self._workers, []
            self._changed.notify_all()
        for worker in workers:
            # killed before its socket closes: a released worker may exit 0 first
            if wait_s <= 0:
                worker.kill()
            worker.release()
        for worker in workers:
            if wait_s <= 0:
                worker.process.wait()
                continue
            try:
                worker.process.wait(wait_s)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "idle worker %d did not exit in %.0f s; killing it", worker.pid, wait_s
                )
                worker.kill()
                worker.process.wait()
