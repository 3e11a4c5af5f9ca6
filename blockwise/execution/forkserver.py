"""Warm worker processes: a fork server that starts local workers without Python's start-up.

A local run starts the worker program once per worker and stage (and octree
level): each start pays for an interpreter, numpy, zarr, pydantic's config
schemas and the stage's own imports, 0.5-0.8 s, during which a stage that
cannot overlap the one before waits. The local profile therefore starts one
fork server per run (``python -m blockwise.execution.forkserver ADDRESS``),
which imports once what workers import and then waits on a Unix socket.

A worker slot (:class:`~blockwise.execution.local.DriverSlot`, a thread of
the driver, or :class:`~blockwise.execution.local.LocalWorker` in a slot
process) asks it for a worker: it sends the worker program's arguments, its
environment and working directory, and its standard input, output and error
(``SCM_RIGHTS``); the server forks a child that takes all of them and runs
the worker program's ``main``. The child shows the worker program's command
line in ``ps`` (``setproctitle``), ignores SIGINT as a worker does, and ends
(SIGKILL) when the slot that asked for it closes its connection (the slot
process, or the driver, ends); the server reports its pid at once and its
exit status when it exits, on the same connection, so that the slot watches
it as it would watch its own child (:class:`ForkedWorker`). The server dies
with the driver, and its children with it.

GPU stages start their workers as new interpreters (CUDA must not be set up
in a process that forks). ``BLOCKWISE_FORK_SERVER=0`` in the driver's
environment turns the server off: every worker is then a new interpreter.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

logger = logging.getLogger(__name__)

#: set by the driver for its children: the address of the run's fork server
ADDRESS_VARIABLE = "BLOCKWISE_FORK_SERVER_ADDRESS"
#: ``0`` in the driver's environment: no fork server (every worker a new interpreter)
SWITCH_VARIABLE = "BLOCKWISE_FORK_SERVER"
#: the largest request (arguments and environment), bytes
MAX_MESSAGE = 1 << 20
#: seconds a run's end waits for workers that are still exiting before they are killed
STOP_WAIT_S = 10.0
#: seconds a slot process waits for the server to fork its worker
REQUEST_TIMEOUT_S = 60.0


def enabled() -> bool:
    """Whether local runs start their workers through a fork server (Linux, not switched off)."""
    return sys.platform.startswith("linux") and os.environ.get(SWITCH_VARIABLE, "1") != "0"


class ForkServerError(OSError):
    """The fork server could not be reached or did not answer as expected."""


# -- the server ------------------------------------------------------------------


#: what blocks import at their first read, beyond the stage modules: the HDF5 and
#: fsspec layers of the input readers (h5py's import also runs ``uname -p`` once, for
#: ``platform.uname()``, whose answer the forked workers then inherit)
LATE_IMPORTS = ("h5py", "fsspec", "multiprocessing.synchronize")


def _preload() -> None:
    """Import what worker programs import, stage modules included (never torch)."""
    from blockwise.execution import WORKER_MODULE
    from blockwise.stages import STAGE_MODULES

    importlib.import_module("setproctitle")
    importlib.import_module(WORKER_MODULE)
    for module in STAGE_MODULES.values():
        importlib.import_module(module)
    for module in LATE_IMPORTS:
        with contextlib.suppress(ImportError):  # an optional layer that is not installed
            importlib.import_module(module)


def _reap(children: dict[int, socket.socket]) -> None:
    """Send the exit status of every child that ended to the slot process that asked for it."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        connection = children.pop(pid, None)
        if connection is None:
            continue
        # OSError: the slot process is gone; nobody waits for this child
        with contextlib.suppress(OSError):
            connection.send(json.dumps({"exit": os.waitstatus_to_exitcode(status)}).encode())
        connection.close()


def serve(address: str) -> None:
    """Listen on the abstract Unix socket ``address`` and fork a worker per request."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver ends the server
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind("\0" + address)
    listener.listen(128)  # requests wait in the backlog while the imports run
    # tell the driver that requests can come (standard output is its pipe), then drop it
    os.write(1, b"listening\n")
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    _preload()
    # the imported modules' objects stay out of every collection: a forked worker's
    # collector then does not touch (and copy) the pages it shares with the server
    gc.freeze()
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    # SIGTERM: take no more requests, and exit once the children have ended
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    children: dict[int, socket.socket] = {}
    while True:
        watched: list[Any] = [wake_read] if stopping else [listener, wake_read]
        ready, _, _ = select.select(watched, [], [])
        if wake_read in ready:
            os.read(wake_read, 4096)
            _reap(children)
        if stopping:
            if not children:
                return
            continue
        if listener not in ready:
            continue
        connection, _ = listener.accept()
        fds: list[int] = []
        try:
            message, fds, _, _ = socket.recv_fds(connection, MAX_MESSAGE, 3)
            request = json.loads(message)
        except (OSError, ValueError):
            for fd in fds:  # a request that cannot be read keeps no descriptor open
                os.close(fd)
            connection.close()
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            listener.close()
            os.close(wake_read)
            os.close(wake_write)
            for other in children.values():  # the other children's connections
                other.close()
            _run_child(connection, fds, request)
        for fd in fds:
            os.close(fd)
        children[pid] = connection
        try:
            connection.send(json.dumps({"pid": pid}).encode())
        except OSError:
            os.kill(pid, signal.SIGKILL)  # the slot process is gone already
        _reap(children)


def _end_with_peer(connection: socket.socket) -> None:
    """In a child: wait until the slot process that asked for it closes its end, then die."""
    try:
        while connection.recv(1):
            pass
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGKILL)


def _run_child(connection: socket.socket, fds: list[int], request: dict[str, Any]) -> None:
    """In a forked child: become the worker program the request names; never returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        # a Ctrl-C reaches the whole process group; the slot process ends its worker
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        # before the environment changes: the title takes over the space of the server's
        from setproctitle import setproctitle

        setproctitle(" ".join(request["title"]))
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        from blockwise.execution.local import die_with_parent

        die_with_parent(int(request["server"]))
        threading.Thread(target=_end_with_peer, args=(connection,), daemon=True).start()
        worker = importlib.import_module(request["module"])
        sys.argv = [request["module"], *request["arguments"]]
        code = int(worker.main(request["arguments"]))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


# -- the driver's side ------------------------------------------------------------------


class ForkServer:
    """The run's fork server, started by the driver (see the module docstring).

    Its address is put into the driver's environment, which daisy's per-slot
    processes inherit; :meth:`stop` ends it and removes the address. The
    constructor does not wait for the server's interpreter to start (a tenth of
    a second or more, which then overlaps the driver's own imports and checks):
    :meth:`wait_ready` does, and must return before the first worker is asked for.
    """

    def __init__(self, fork: bool = False) -> None:
        self.address = f"blockwise-{os.getpid()}-{os.urandom(6).hex()}"
        from blockwise.execution.local import die_with_parent

        driver = os.getpid()
        command = [sys.executable, "-m", __name__, self.address]
        self.process: subprocess.Popen[bytes] | _ForkedServer
        if fork and threading.active_count() == 1:
            self.process = _ForkedServer(command, self.address)
        else:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                preexec_fn=lambda: die_with_parent(driver),
            )
        self._ready = False
        #: ``ADDRESS:SERVER_PID``, as :class:`ForkedWorker` takes it
        self.published = f"{self.address}:{self.process.pid}"
        os.environ[ADDRESS_VARIABLE] = self.published

    def wait_ready(self) -> None:
        """Wait until the server listens (its socket is bound before its imports run:
        a worker asked for later waits in its backlog).

        Raises:
            ForkServerError: if the server exited instead (it is then stopped and
                its address removed).
        """
        if self._ready:
            return
        started = False
        if self.process.stdout is not None:
            with self.process.stdout as ready:
                started = ready.readline() == b"listening\n"
        if not started:
            self.stop(wait_s=0.0)
            raise ForkServerError(f"the fork server exited with {self.process.returncode}")
        self._ready = True

    def stop(self, wait_s: float = STOP_WAIT_S) -> None:
        """End the server; safe to call more than once.

        Args:
            wait_s: seconds its running children (workers finishing their
                logs) may take before the server is killed, and they with it;
                0 kills it at once.
        """
        if os.environ.get(ADDRESS_VARIABLE, "").startswith(self.address + ":"):
            del os.environ[ADDRESS_VARIABLE]
        if self.process.poll() is None and wait_s > 0:
            self.process.terminate()
            try:
                self.process.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "fork server %d: workers still ran after %.0f s", self.process.pid, wait_s
                )
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        if self.process.stdout is not None:
            # the pipe of its "listening" line, still open if nobody waited for it
            self.process.stdout.close()


class _ForkedServer:
    """The fork server as a child forked from the driver: what :class:`ForkServer` needs
    of a ``Popen``.

    The driver has imported most of what the server preloads (numpy, zarr,
    h5py, pydantic's config models) by the time it starts the run: a server
    forked from it starts with them in memory and imports only the rest (0.08 s
    against 0.3-0.45 s for a new interpreter, FIB-25 run on 2 cores), and the
    driver's first blocks do not wait for a second interpreter's imports. Only
    a driver with no other thread forks (a thread's locks would stay held in
    the child); the server then runs :func:`serve` as the new interpreter does,
    with the same command line in ``ps``, and ends with the driver.

    Args:
        command: the command line it shows.
        address: the address it listens on.
    """

    def __init__(self, command: list[str], address: str) -> None:
        from blockwise.execution.local import die_with_parent

        driver = os.getpid()
        read_fd, write_fd = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the server; never returns
            code = 1
            try:
                os.close(read_fd)
                os.dup2(write_fd, 1)  # its "listening" line goes to the driver
                os.close(write_fd)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.close(null)
                die_with_parent(driver)
                signal.set_wakeup_fd(-1)
                for signum in (signal.SIGTERM, signal.SIGCHLD):
                    signal.signal(signum, signal.SIG_DFL)
                with contextlib.suppress(ImportError):
                    from setproctitle import setproctitle

                    setproctitle(" ".join(command))
                serve(address)
                code = 0
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        os.close(write_fd)
        self.pid = pid
        self.returncode: int | None = None
        self.stdout: Any = os.fdopen(read_fd, "rb")

    def poll(self) -> int | None:
        """The exit status if the server ended, else None."""
        if self.returncode is None:
            with contextlib.suppress(ChildProcessError):
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid == self.pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the server to end; its exit status.

        Raises:
            subprocess.TimeoutExpired: if it still runs after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"fork server {self.pid}", timeout or 0.0)
            time.sleep(0.01)
        return code

    def terminate(self) -> None:
        """SIGTERM the server (nothing if it has ended)."""
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the server (nothing if it has ended)."""
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


# -- the slot process's side ----------------------------------------------------------


class ForkedWorker:
    """A worker program the fork server started: what a slot process needs of a ``Popen``.

    Args:
        address: ``ADDRESS:SERVER_PID`` as the driver published it.
        module: the worker program's module.
        arguments: its command-line arguments.
        title: the command line it shows in ``ps``.
        env: its environment.
        fds: its standard input, output and error (descriptors of this process;
            default this process's own).

    Raises:
        ForkServerError: if the server cannot be reached or does not answer.
    """

    def __init__(
        self,
        address: str,
        module: str,
        arguments: list[str],
        title: list[str],
        env: dict[str, str],
        fds: tuple[int, int, int] = (0, 1, 2),
    ) -> None:
        name, _, server = address.rpartition(":")
        request = {
            "module": module,
            "arguments": arguments,
            "title": title,
            "env": env,
            "cwd": os.getcwd(),
            "server": int(server),
        }
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # a server that cannot answer (stopped, or still importing on a swamped
        # machine) must not hold the slot: the worker then starts as a new interpreter
        self._socket.settimeout(REQUEST_TIMEOUT_S)
        try:
            self._socket.connect("\0" + name)
            socket.send_fds(self._socket, [json.dumps(request).encode()], list(fds))
            reply = self._socket.recv(MAX_MESSAGE)
            self.pid = int(json.loads(reply)["pid"])
            self._socket.settimeout(None)
        except (OSError, ValueError, KeyError, TypeError) as e:
            self._socket.close()
            raise ForkServerError(f"the fork server {name} did not start a worker: {e}") from e
        self.returncode: int | None = None

    def fileno(self) -> int:
        """The connection to the server, readable once the worker ended (for ``select``)."""
        return self._socket.fileno()

    def poll(self) -> int | None:
        """The exit status if the worker ended, else None."""
        if self.returncode is None:
            ready, _, _ = select.select([self._socket], [], [], 0)
            if ready:
                self._read_status()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the worker to end; its exit status (negative: the signal that ended it).

        Raises:
            subprocess.TimeoutExpired: if it still runs after ``timeout`` seconds.
        """
        if self.returncode is None:
            ready, _, _ = select.select([self._socket], [], [], timeout)
            if not ready:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0.0)
            return self._read_status()
        return self.returncode

    def _read_status(self) -> int:
        code = -int(signal.SIGKILL)  # no status: the server ended first, and its children with it
        try:
            message = self._socket.recv(MAX_MESSAGE)
            if message:
                code = int(json.loads(message)["exit"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        self._socket.close()
        self.returncode = code
        return code

    def kill(self) -> None:
        """SIGKILL the worker (nothing if it has ended)."""
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


if __name__ == "__main__":
    serve(sys.argv[1])
