"""Stand-in worker programs for the execution tests: a real fork server forks them.

The tests of :class:`~blockwise.execution.local.DriverSlot` and of the worker
pool replace ``workers/block_worker.py`` by a small module of their own that a
real fork server imports and forks; these helpers set that up and look at
the processes afterwards.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from blockwise.execution import forkserver, local


@contextmanager
def stand_in_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, source: str
) -> Iterator[forkserver.ForkServer]:
    """A fork server that can import the stand-in ``module`` (``source``), which
    DriverSlot then starts with its config path and stage as the arguments."""
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / f"{module}.py").write_text(source)
    path = os.pathsep.join([str(tmp_path / "modules"), os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.setattr(local, "WORKER_MODULE", module)
    monkeypatch.setattr(local, "worker_arguments", lambda config, stage: [str(config), stage])
    monkeypatch.setattr(
        local,
        "worker_command",
        lambda config, stage: [sys.executable, "-m", module, str(config), stage],
    )
    server = forkserver.ForkServer()
    server.wait_ready()
    try:
        yield server
    finally:
        server.stop(wait_s=0.0)


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
