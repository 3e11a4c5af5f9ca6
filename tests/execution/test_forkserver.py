"""The fork server that starts local workers: what a forked worker gets, and how it ends.

A real server process (``python -m blockwise.execution.forkserver``) forks a
small worker module written by the test; the module records what it was given.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from blockwise.execution import forkserver

from datafiles import REPO
from stand_in_workers import alive

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the fork server is Linux-only"
)

WORKER = textwrap.dedent(
    """
    import json, os, signal, sys, time

    def main(argv):
        out, code, sleep = argv[0], int(argv[1]), float(argv[2])
        # written aside and renamed: a test that sees the file reads all of it
        with open(out + ".tmp", "w") as f:
            json.dump({
                "argv": argv,
                "variable": os.environ.get("FORKED_TEST_VARIABLE"),
                "cwd": os.getcwd(),
                "sigint_ignored": signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
                "cmdline": open("/proc/self/cmdline", "rb").read().decode().replace("\\0", " "),
                "pid": os.getpid(),
            }, f)
        os.replace(out + ".tmp", out)
        print("worker stdout line", flush=True)
        time.sleep(sleep)
        return code
    """
)


def wait_for(condition, timeout: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def fork(out: Path, code: int, sleep_s: float) -> forkserver.ForkedWorker:
    """Ask the server for the test worker: it records to ``out``, sleeps, exits ``code``."""
    return forkserver.ForkedWorker(
        os.environ[forkserver.ADDRESS_VARIABLE],
        "forked_test_worker",
        [str(out), str(code), str(sleep_s)],
        ["w"],
        dict(os.environ),
    )


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[forkserver.ForkServer]:
    """A fork server that can import the test's worker module ``forked_test_worker``."""
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "forked_test_worker.py").write_text(WORKER)
    path = os.pathsep.join([str(tmp_path / "modules"), os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", path)
    server = forkserver.ForkServer()
    server.wait_ready()
    yield server
    server.stop(wait_s=0.0)


def test_a_server_that_cannot_start_is_reported_by_wait_ready(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the constructor does not wait for the server; wait_ready says it exited,
    # stops it and takes its address back
    monkeypatch.setattr(sys, "executable", "/bin/false")
    server = forkserver.ForkServer()
    assert os.environ[forkserver.ADDRESS_VARIABLE].startswith(server.address)
    with pytest.raises(forkserver.ForkServerError, match="exited with 1"):
        server.wait_ready()
    assert forkserver.ADDRESS_VARIABLE not in os.environ


def test_the_local_profile_runs_without_a_server_that_cannot_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gala: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import yaml

    from blockwise.config import parse_config
    from blockwise.execution import open_profile
    from blockwise.execution.local import LocalProfile
    from blockwise.run_context import RunContext

    data = yaml.safe_load((REPO / "configs" / "gala_ci.yaml").read_text())
    data["run_dir"] = str(tmp_path / "run")
    data["inputs"]["affinities"]["file"] = str(gala)
    data["inputs"].pop("ground_truth", None)
    data.pop("evaluate", None)
    monkeypatch.setattr(sys, "executable", "/bin/false")
    server = forkserver.ForkServer()
    profile = open_profile(RunContext(parse_config(data)), fork_server=server)
    try:
        assert isinstance(profile, LocalProfile)
        assert profile.fork_server is None
        assert "every worker starts a new interpreter" in caplog.text
        assert forkserver.ADDRESS_VARIABLE not in os.environ
    finally:
        profile.teardown()


def test_a_forked_worker_gets_its_arguments_environment_title_and_exit_status(
    server: forkserver.ForkServer, tmp_path: Path
) -> None:
    address = os.environ[forkserver.ADDRESS_VARIABLE]
    out = tmp_path / "record.json"
    env = {**os.environ, "FORKED_TEST_VARIABLE": "given"}
    title = ["python", "-m", "forked_test_worker", str(out)]
    worker = forkserver.ForkedWorker(
        address, "forked_test_worker", [str(out), "3", "0"], title, env
    )
    assert worker.wait(timeout=60) == 3
    record = json.loads(out.read_text())
    assert record["argv"] == [str(out), "3", "0"]
    assert record["variable"] == "given"
    assert record["cwd"] == os.getcwd()
    assert record["sigint_ignored"]
    assert record["cmdline"].strip() == " ".join(title)
    assert record["pid"] == worker.pid


def test_a_killed_worker_reports_the_signal_and_waiting_times_out_before(
    server: forkserver.ForkServer, tmp_path: Path
) -> None:
    out = tmp_path / "record.json"
    worker = fork(out, 0, 60)
    assert wait_for(out.is_file, 60)
    with pytest.raises(subprocess.TimeoutExpired):
        worker.wait(timeout=0.2)
    worker.kill()
    assert worker.wait(timeout=20) == -signal.SIGKILL
    assert not alive(worker.pid)


def test_a_worker_ends_with_the_process_that_asked_for_it(
    server: forkserver.ForkServer, tmp_path: Path
) -> None:
    """As a worker program dies with its slot process (a driver killed by SIGKILL)."""
    out = tmp_path / "record.json"
    asker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys, time\n"
            "from blockwise.execution.forkserver import ForkedWorker, ADDRESS_VARIABLE\n"
            "w = ForkedWorker(os.environ[ADDRESS_VARIABLE], 'forked_test_worker',\n"
            f"             [{str(out)!r}, '0', '60'], ['w'], dict(os.environ))\n"
            "time.sleep(60)\n",
        ]
    )
    try:
        assert wait_for(out.is_file, 60)
        pid = json.loads(out.read_text())["pid"]
        assert alive(pid)
    finally:
        asker.kill()
        asker.wait()
    assert wait_for(lambda: not alive(pid), 10), "the worker outlived the process that asked"


def test_stopping_the_server_waits_for_running_workers_then_removes_the_address(
    server: forkserver.ForkServer, tmp_path: Path
) -> None:
    address = os.environ[forkserver.ADDRESS_VARIABLE]
    out = tmp_path / "record.json"
    worker = fork(out, 0, 1)
    start = time.monotonic()
    server.stop()
    assert time.monotonic() - start >= 0.5  # the worker's last second was waited for
    assert worker.wait(timeout=5) == 0
    assert forkserver.ADDRESS_VARIABLE not in os.environ
    with pytest.raises(forkserver.ForkServerError, match="did not start a worker"):
        forkserver.ForkedWorker(address, "forked_test_worker", ["x"], ["w"], dict(os.environ))


def test_a_server_that_cannot_answer_is_given_up_after_the_request_timeout(
    server: forkserver.ForkServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stopped server must not hold a worker slot (the slot then starts an interpreter)."""
    monkeypatch.setattr(forkserver, "REQUEST_TIMEOUT_S", 1.0)
    address = os.environ[forkserver.ADDRESS_VARIABLE]
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(forkserver.ForkServerError, match="did not start a worker"):
            forkserver.ForkedWorker(address, "forked_test_worker", ["x"], ["w"], dict(os.environ))
        assert time.monotonic() - start < 10
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


def printed_by(code: str) -> str:
    """What a new interpreter running ``code`` prints (it must exit 0)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_preload_covers_what_reading_an_hdf5_input_imports(tmp_path: Path) -> None:
    # a forked worker inherits the server's modules: reading an HDF5 input there must
    # import nothing more, and h5py's platform query (``uname -p``, a fork of a
    # large process) must already be answered
    import h5py
    import numpy as np

    path = tmp_path / "affs.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("affs", data=np.zeros((3, 8, 8, 8), dtype=np.uint8))
        f["affs"].attrs["resolution"] = [4, 4, 4]
    code = textwrap.dedent(
        f"""
        import subprocess, sys
        from blockwise.execution.forkserver import _preload
        _preload()
        before = set(sys.modules)
        def refuse(*args, **kwargs):
            raise AssertionError(f"a subprocess after the preload: {{args}}")
        subprocess.Popen.__init__ = refuse
        import platform
        platform.uname().processor
        from blockwise.config import DatasetConfig
        from blockwise.volume import open_volume
        volume = open_volume(DatasetConfig(file={str(path)!r}, dataset="affs"))
        assert volume.array[:, :2, :2, :2].sum() == 0
        print(sorted(set(sys.modules) - before))
        """
    )
    assert printed_by(code) == "[]"


def test_the_preload_covers_what_a_flood_imports_and_neither_imports_scipy() -> None:
    # a forked worker must find what a flood imports loaded already; and neither
    # needs scipy (0.15-0.25 s of import before the first block), whose results the
    # kernels give: seeds per section, small fragments and mask components included
    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        from blockwise.execution.forkserver import _preload
        _preload()
        rng = np.random.default_rng(0)  # the test's data: numpy.random is not the flood's
        affs = rng.random((3, 12, 12, 12)).astype(np.float32)
        mask = rng.random((12, 12, 12)) > 0.1
        before = set(sys.modules)
        from blockwise.fragments import fragments_from_affinities
        for per_section in (False, True):
            fragments_from_affinities(
                affs, (10, 10, 10), min_fragment_size_vx=5, mask=mask,
                seeds_per_section=per_section,
            )
        print(sorted(set(sys.modules) - before), [m for m in sys.modules if "scipy" in m])
        """
    )
    assert printed_by(code) == "[] []"


def test_the_driver_does_not_import_scipy() -> None:
    # the driver imports every stage module for its description; scipy.ndimage
    # would cost it a quarter of a second before the first block
    code = textwrap.dedent(
        """
        import importlib, sys
        import blockwise.cli, blockwise.runner
        from blockwise.stages import STAGE_MODULES
        for module in STAGE_MODULES.values():
            importlib.import_module(module)
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("scipy", "torch", "skimage")))
        """
    )
    assert printed_by(code) == "[]"
