"""`blockwise run` as a user runs it: real driver and worker processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
import zarr
from gala import gala_data, nan_affinities

from blockwise.config import parse_config
from blockwise.runner import run

from datafiles import REPO, require_data

BLOCKWISE = str(Path(sys.executable).with_name("blockwise"))


gala_config = gala_data


def blockwise(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BLOCKWISE, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.slow
def test_run_with_two_workers_matches_in_process(tmp_path: Path, gala: Path) -> None:
    data = gala_config(gala, tmp_path / "cli")
    path = tmp_path / "gala.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = blockwise("run", str(path), "--workers", "2", "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Run summary" in proc.stdout and "VOI split" in proc.stdout
    cli_report = json.loads((tmp_path / "cli" / "evaluation.json").read_text())
    assert (tmp_path / "cli" / "evaluation.png").stat().st_size > 1000
    # worker processes really ran: one log per worker
    assert list((tmp_path / "cli" / "logs").rglob("*"))

    in_process = parse_config(gala_config(gala, tmp_path / "inproc"))
    result = run(in_process, multiprocessing=False, progress=False)
    assert result.ok, result.summary()
    report = json.loads((tmp_path / "inproc" / "evaluation.json").read_text())
    assert cli_report["results"] == report["results"]
    for t in in_process.segments.thresholds:
        name = f"segmentation/threshold_{t:.4f}"
        a = zarr.open_group(str(tmp_path / "cli" / "output.zarr"), mode="r")[name][:]
        b = zarr.open_group(str(tmp_path / "inproc" / "output.zarr"), mode="r")[name][:]
        assert np.array_equal(a, b)


def test_unknown_key_exits_2_naming_it(tmp_path: Path, gala: Path) -> None:
    data = gala_config(gala, tmp_path / "run")
    data["agglomerate"]["scoreing"] = "mean"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = blockwise("run", str(path), "--no-progress", timeout=120)
    assert proc.returncode == 2
    assert "unknown key `agglomerate.scoreing`" in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_failed_block_exits_nonzero_listing_it(tmp_path: Path) -> None:
    data = nan_affinities(tmp_path / "nan.zarr")
    config = {
        "name": "nan",
        "run_dir": str(tmp_path / "run"),
        "inputs": {"affinities": {"file": str(data), "dataset": "affs"}},
        "output": {"chunk_shape_vx": [16, 16, 16]},
        "extract_fragments": {"block_shape_vx": [32, 32, 32], "context_vx": [2, 2, 2]},
        "execution": {"num_workers": 2, "max_retries": 1},
    }
    path = tmp_path / "nan.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = blockwise("run", str(path), "--no-progress")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 block(s) failed" in proc.stdout
    assert "extract_fragments block 1 write ROI [0:256, 0:256, 256:512]" in proc.stdout
    record = json.loads(
        (tmp_path / "run" / "failures" / "extract_fragments" / "block_1.json").read_text()
    )
    assert "NaN" in record["traceback"]
    # status: the failed block, and the downstream blocks that could not run for it
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    blocked = {row["name"]: row["blocked"] for row in summary["stages"]}
    assert blocked["agglomerate"] > 0
    status = blockwise("status", str(path), timeout=120)
    assert status.returncode == 0, status.stderr
    rows = {line.split()[0]: line.split()[1:] for line in status.stdout.splitlines()[2:9]}
    assert rows["extract_fragments"][2] == "1"  # failed
    for name, count in blocked.items():
        if name in rows and count:
            assert int(rows[name][3]) == count, (name, status.stdout)  # blocked
    assert "blocked: not run in the last run, as a block they need failed upstream" in status.stdout


def test_status_and_a_store_of_another_run(tmp_path: Path, gala: Path) -> None:
    data = gala_config(gala, tmp_path / "run")
    path = tmp_path / "gala.yaml"
    path.write_text(yaml.safe_dump(data))
    before = blockwise("status", str(path), timeout=120)
    assert before.returncode == 0 and "not started" in before.stdout
    result = run(parse_config(data), multiprocessing=False, progress=False)
    assert result.ok, result.summary()
    status = blockwise("status", str(path), timeout=120)
    assert status.returncode == 0, status.stderr
    blocks = result.stages[0].total
    assert f"extract_fragments {blocks:>8}{blocks:>8}".replace(" ", "") in status.stdout.replace(
        " ", ""
    )
    store = parse_config(data).store_uri
    assert f"graph store {store}:" in status.stdout and " nodes, " in status.stdout

    # another run pointed at the same store is refused, and nothing is changed
    other = dict(data, name="someone_else")
    other_path = tmp_path / "other.yaml"
    other_path.write_text(yaml.safe_dump(other))
    refused = blockwise("run", str(other_path), "--no-progress", "--in-process", timeout=300)
    assert refused.returncode == 2
    assert "holds the graph of run 'gala_ci'" in refused.stderr
    assert "--adopt-store" in refused.stderr
    adopted = blockwise(
        "run", str(other_path), "--no-progress", "--in-process", "--adopt-store", timeout=300
    )
    assert adopted.returncode == 0, adopted.stdout + adopted.stderr


def test_plan_describes_the_demo_without_writing(tmp_path: Path) -> None:
    require_data("fib25_baseline_affs.h5")
    data = yaml.safe_load((REPO / "configs" / "fib25_demo.yaml").read_text())
    data["run_dir"] = str(tmp_path / "run")
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = blockwise("plan", str(path), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "extract_fragments: 8 blocks ([2, 2, 2]) of [128, 128, 128] vx" in proc.stdout
    assert "fits uint64: ok" in proc.stdout
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_driver_killed_mid_run_resumes_to_identical_output(tmp_path: Path, gala: Path) -> None:
    import os
    import signal
    import time

    data = gala_config(gala, tmp_path / "killed")
    path = tmp_path / "gala.yaml"
    path.write_text(yaml.safe_dump(data))
    driver = subprocess.Popen(
        [BLOCKWISE, "run", str(path), "--workers", "2", "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    fragments = tmp_path / "killed" / "output.zarr" / "fragments"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(fragments.glob("*.*.*"))) < 40:
        time.sleep(0.05)
    assert driver.poll() is None, "the run ended before it could be killed"
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and its workers, at once
    driver.wait()
    assert not (tmp_path / "killed" / "evaluation.json").exists()

    resumed = blockwise("run", str(path), "--workers", "2", "--no-progress")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    skipped = [line for line in resumed.stdout.splitlines() if line.startswith("extract_fragments")]
    assert skipped and int(skipped[0].split()[3]) > 0, resumed.stdout  # some blocks were kept

    reference = parse_config(gala_config(gala, tmp_path / "undisturbed"))
    assert run(reference, multiprocessing=False, progress=False).ok
    for t in reference.segments.thresholds:
        name = f"segmentation/threshold_{t:.4f}"
        a = zarr.open_group(str(tmp_path / "killed" / "output.zarr"), mode="r")[name][:]
        b = zarr.open_group(str(tmp_path / "undisturbed" / "output.zarr"), mode="r")[name][:]
        assert np.array_equal(a, b)
    killed = json.loads((tmp_path / "killed" / "evaluation.json").read_text())["results"]
    undisturbed = json.loads((tmp_path / "undisturbed" / "evaluation.json").read_text())["results"]
    assert killed == undisturbed


def test_the_fork_server_starts_before_the_config_is_checked_for_local_runs_only(
    tmp_path: Path,
) -> None:
    import argparse

    from blockwise.cli import _early_fork_server

    def args(text: str | None, in_process: bool = False) -> argparse.Namespace:
        path = tmp_path / "run.yaml"
        if text is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(text)
        return argparse.Namespace(config=str(path), in_process=in_process)

    for text in ("name: a\n", "execution: {profile: local}\n", "execution: {num_workers: 2}\n"):
        server = _early_fork_server(args(text))
        assert server is not None, text
        try:
            assert server.process.poll() is None
        finally:
            server.stop(wait_s=0.0)
        assert server.process.poll() is not None
    # another profile, no run in worker processes, or a file the check will refuse
    for case in (
        args("execution: {profile: slurm}\n"),
        args("name: a\n", in_process=True),
        args(None),
        args("- a list\n"),
        args("name: [unclosed\n"),
    ):
        assert _early_fork_server(case) is None


def test_a_config_refused_after_the_fork_server_started_stops_the_server(
    tmp_path: Path, gala: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # in this (living) process the server would outlive the refusal unless stopped
    import blockwise.execution as execution
    from blockwise.cli import main

    started = []

    def start(**kwargs: Any) -> object:
        server = start_local_fork_server(**kwargs)
        started.append(server)
        return server

    start_local_fork_server = execution.start_local_fork_server
    monkeypatch.setattr(execution, "start_local_fork_server", start)
    data = gala_config(gala, tmp_path / "run")
    data["extract_fragments"]["no_such_key"] = 1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["run", str(path)]) == 2
    assert len(started) == 1 and started[0] is not None
    assert started[0].process.wait(timeout=10) is not None
    assert not (tmp_path / "run").exists()


ENTRY = """
import atexit, sys, threading, time
from blockwise.cli import entry
import blockwise.cli as cli

finished = []
def late_writer():
    time.sleep(0.2)
    finished.append(True)
    sys.stdout.write("thread done\\n")
threading.Thread(target=late_writer).start()  # not a daemon: the exit waits for it
atexit.register(lambda: sys.stdout.write("atexit ran\\n"))
cli.main = lambda argv=None: (sys.stdout.write("unflushed " + sys.argv[1]), int(sys.argv[2]))[1]
entry()
"""


@pytest.mark.parametrize("code", [0, 3])
def test_the_console_script_exits_with_mains_code_after_threads_atexit_and_flush(
    code: int,
) -> None:
    # entry() skips the interpreter's teardown (os._exit); nothing a normal exit
    # would have done for the user may be lost: buffered output, atexit handlers,
    # non-daemon threads, the exit status
    proc = subprocess.run(
        [sys.executable, "-c", ENTRY, "output", str(code)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == code, proc.stderr
    assert proc.stdout.startswith("unflushed output")
    assert "thread done\n" in proc.stdout and proc.stdout.endswith("atexit ran\n")


def test_the_console_script_is_entry_and_caps_openblas_threads_unless_set() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"blockwise": "blockwise.cli:entry"}
    probe = (
        "import os, sys; import blockwise.cli as cli; "
        "cli.main = lambda argv=None: print(os.environ['OPENBLAS_NUM_THREADS']) or 0; cli.entry()"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True
    ).stdout
    assert out == "1\n"
    env["OPENBLAS_NUM_THREADS"] = "4"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True
    ).stdout
    assert out == "4\n"


def test_the_console_script_under_a_profiler_exits_normally(tmp_path: Path) -> None:
    # cProfile writes its file after the script returns: os._exit would lose it
    script = tmp_path / "script.py"
    script.write_text("import blockwise.cli as cli\ncli.main = lambda argv=None: 0\ncli.entry()\n")
    out = tmp_path / "profile.out"
    subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(out), str(script)], check=True, timeout=60
    )
    assert out.stat().st_size > 0
