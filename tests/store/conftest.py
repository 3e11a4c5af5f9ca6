"""Graph-store fixtures: every backend as a real file or a real server process.

``backend`` is parametrized over every store the project ships: an SQLite
file under ``tmp_path``, and a fresh database on a SecantusDB server (a
MongoDB-wire server) that one session-scoped fixture starts on a free
loopback port and stops by its PID at the end.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from blockwise.store import GraphStore, open_store

SERVER_EXECUTABLE = "secantusd-py"
# the server listens in about 0.3 s; a loaded machine gets plenty more
SERVER_START_TIMEOUT_S = 30.0
SERVER_STOP_TIMEOUT_S = 30.0


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_server_executable() -> str | None:
    """The SecantusDB server command: next to this Python first, then on PATH."""
    beside = Path(sys.executable).parent / SERVER_EXECUTABLE
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(SERVER_EXECUTABLE)


class SecantusServer:
    """One SecantusDB server process on a fixed port and storage folder.

    It can be stopped and started again on the same port and storage, as a
    crashed or restarted production server would be.
    """

    def __init__(self, executable: str, storage_path: Path, port: int) -> None:
        self.executable = executable
        self.storage_path = storage_path
        self.port = port
        self.log_path = storage_path.parent / f"{storage_path.name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    def uri(self, database: str) -> str:
        """The URI of ``database`` on this server."""
        return f"mongodb://127.0.0.1:{self.port}/{database}?directConnection=true"

    @property
    def is_running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        if self.is_running:
            raise RuntimeError(f"SecantusDB on port {self.port} is already running")
        command = [
            self.executable,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--storage-path",
            str(self.storage_path),
            "--log-level",
            "WARNING",
        ]
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process.wait()
                raise RuntimeError(
                    f"SecantusDB exited with status {self._process.returncode} while starting "
                    f"on port {self.port}; its log {self.log_path} ends with:\n{self._log_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"SecantusDB did not accept connections on port {self.port} within "
            f"{SERVER_START_TIMEOUT_S} s; its log ends with:\n{self._log_tail()}"
        )

    def stop(self) -> None:
        """Stop the server by its PID: SIGTERM, then wait (SIGKILL if it hangs)."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()

    def restart(self) -> None:
        """Stop the server and start it again on the same port and storage."""
        self.stop()
        self.start()

    def _log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecantusServer]:
    """A SecantusDB server for the whole session (skipped if not installed, unless CI=true)."""
    executable = find_server_executable()
    if executable is None:
        message = f"{SERVER_EXECUTABLE} is not installed (pip install SecantusDB==0.7.0b3)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    storage = tmp_path_factory.mktemp("secantus") / "data"
    server = SecantusServer(executable, storage, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mongo_uri(mongo_server: SecantusServer) -> str:
    """The URI of a database of its own for this test."""
    if not mongo_server.is_running:  # a test before this one left it stopped
        mongo_server.start()
    return mongo_server.uri(f"test_{secrets.token_hex(6)}")


@dataclass
class Backend:
    """One graph-store backend under test.

    Attributes:
        name: "sqlite" or "mongodb".
        uri: what :func:`open_store` opens.
        restart: stops and starts the storage behind the store (the server
            process; nothing for a file).
    """

    name: str
    uri: str
    restart: Callable[[], None]
    _opened: list[GraphStore] = field(default_factory=list)

    def open(self) -> GraphStore:
        """Open the store (again); it is closed at the end of the test."""
        store = open_store(self.uri)
        self._opened.append(store)
        return store

    def close_all(self) -> None:
        """Close every store this test opened."""
        for store in self._opened:
            store.close()
        self._opened.clear()


@pytest.fixture(params=["sqlite", "mongodb"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Every graph-store backend, each a real file or a real server."""
    if request.param == "sqlite":
        result = Backend("sqlite", f"sqlite:///{tmp_path / 'graph.sqlite'}", lambda: None)
    else:
        server: SecantusServer = request.getfixturevalue("mongo_server")
        uri: str = request.getfixturevalue("mongo_uri")
        result = Backend("mongodb", uri, server.restart)
    try:
        yield result
    finally:
        result.close_all()


@pytest.fixture
def store(backend: Backend) -> GraphStore:
    """A new, empty store of each backend."""
    return backend.open()
