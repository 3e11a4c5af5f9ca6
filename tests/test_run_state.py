"""A run directory nothing can corrupt: changed configs and inputs, two drivers, reset."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
import zarr
from gala import assert_same_outputs, gala_data, nan_affinities, outputs

from blockwise.config import parse_config
from blockwise.driver_lock import DriverLock
from blockwise.errors import ConfigError, RunChangedError, RunLockedError
from blockwise.layout import RunLayout
from blockwise.runner import reset, run

BLOCKWISE = str(Path(sys.executable).with_name("blockwise"))


def assert_identical(a: Path, b: Path) -> None:
    assert_same_outputs(a, b)
    assert (a / "evaluation.json").read_text().replace(str(a), "") == (
        b / "evaluation.json"
    ).read_text().replace(str(b), "")


def in_process(data: dict[str, Any], **kwargs: Any) -> Any:
    result = run(parse_config(data), multiprocessing=False, progress=False, **kwargs)
    assert result.ok, result.summary()
    return result


def skipped(result: Any) -> dict[str, int]:
    return {s.name: s.skipped for s in result.stages}


def test_config_a_then_b_then_a_is_refused_until_asked_and_ends_as_fresh_a(
    tmp_path: Path, gala: Path
) -> None:
    a = gala_data(gala, tmp_path / "run")
    b = gala_data(gala, tmp_path / "run", extract_fragments={"boundary_threshold": 0.6})
    blocks = in_process(a).stages[0].total
    with pytest.raises(RunChangedError) as refused:
        run(parse_config(b), multiprocessing=False, progress=False)
    message = str(refused.value)
    assert "extract_fragments.boundary_threshold: 0.5 -> 0.6" in message
    assert f"extract_fragments: {blocks} block(s) done" in message
    assert "--rerun-changed" in message
    assert f"relabel: {blocks} block(s) done" in message  # downstream of the change
    assert message.count("boundary_threshold") == 1
    in_process(b, rerun_changed=True)
    with pytest.raises(RunChangedError, match=r"boundary_threshold: 0.6 -> 0.5"):
        run(parse_config(a), multiprocessing=False, progress=False)
    result = in_process(a, rerun_changed=True)
    assert all(s == 0 for s in skipped(result).values())
    in_process(gala_data(gala, tmp_path / "fresh"))
    assert_identical(tmp_path / "run", tmp_path / "fresh")


def test_a_finished_run_again_does_no_work(tmp_path: Path, gala: Path) -> None:
    data = gala_data(gala, tmp_path / "run")
    in_process(data)
    again = in_process(data)
    assert all(s.skipped == s.total and s.done == 0 for s in again.stages)


def test_one_changed_stage_reruns_it_and_downstream_not_upstream(
    tmp_path: Path, gala: Path
) -> None:
    in_process(gala_data(gala, tmp_path / "run"))
    changed = gala_data(gala, tmp_path / "run", segments={"thresholds": [0.3, 0.5, 0.8]})
    with pytest.raises(RunChangedError, match=r"segments.thresholds"):
        run(parse_config(changed), multiprocessing=False, progress=False)
    result = in_process(changed, rerun_changed=True)
    counts = skipped(result)
    total = {s.name: s.total for s in result.stages}
    # segments is an agglomerate section too (it decides whether edges carry statistics)
    assert counts["extract_fragments"] == total["extract_fragments"]
    assert counts["agglomerate"] == 0 and counts["relabel"] == 0 and counts["evaluate"] == 0
    in_process(gala_data(gala, tmp_path / "fresh", segments={"thresholds": [0.3, 0.5, 0.8]}))
    assert_identical(tmp_path / "run", tmp_path / "fresh")
    # the old threshold's segmentation is gone, not left stale beside the new ones
    assert "threshold_0.7000" not in outputs(tmp_path / "run")


def test_an_input_replaced_in_place_is_detected(tmp_path: Path, gala: Path) -> None:
    copy = tmp_path / "gala_copy.zarr"
    shutil.copytree(gala, copy)
    data = gala_data(copy, tmp_path / "run")
    in_process(data)
    affs = zarr.open_group(str(copy), mode="r+")["affs"]
    time.sleep(0.01)
    affs[:, :8, :8, :8] = 0
    with pytest.raises(RunChangedError, match=r"input:affinities: zarr:\w+ -> zarr:\w+"):
        run(parse_config(data), multiprocessing=False, progress=False)
    result = in_process(data, rerun_changed=True)
    assert skipped(result)["extract_fragments"] == 0


def test_another_block_shape_into_an_existing_run_dir_is_refused(
    tmp_path: Path, gala: Path
) -> None:
    in_process(gala_data(gala, tmp_path / "run"))
    before = outputs(tmp_path / "run")
    other = gala_data(gala, tmp_path / "run", extract_fragments={"block_shape_vx": [16, 32, 32]})
    with pytest.raises(RunChangedError, match=r"extract_fragments.block_shape_vx"):
        run(parse_config(other), multiprocessing=False, progress=False)
    after = outputs(tmp_path / "run")
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_a_second_driver_is_refused_naming_the_first(tmp_path: Path, gala: Path) -> None:
    data = gala_data(gala, tmp_path / "run")
    (tmp_path / "run").mkdir()
    with DriverLock(RunLayout(tmp_path / "run").lock_path):
        with pytest.raises(RunLockedError, match=rf"PID {os.getpid()} on host"):
            run(parse_config(data), multiprocessing=False, progress=False)
        assert not (tmp_path / "run" / "config.yaml").exists()


def test_a_driver_killed_with_sigkill_does_not_block_the_next(tmp_path: Path, gala: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pathlib import Path\n"
            "from blockwise.driver_lock import DriverLock\n"
            f"lock = DriverLock(Path({str(RunLayout(run_dir).lock_path)!r}))\n"
            "lock.acquire()\n"
            "print('locked', flush=True)\n"
            "time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    with pytest.raises(RunLockedError, match=rf"PID {holder.pid}"):
        run(parse_config(gala_data(gala, run_dir)), multiprocessing=False, progress=False)
    holder.kill()
    holder.wait()
    holder.stdout.close()
    in_process(gala_data(gala, run_dir))


def test_reset_clears_a_stage_and_downstream(tmp_path: Path, gala: Path) -> None:
    data = gala_data(gala, tmp_path / "run")
    in_process(data)
    cleared = reset(parse_config(data), "find_segments")
    assert cleared == ["find_segments", "relabel", "downsample", "evaluate"]
    assert not (tmp_path / "run" / "evaluation.json").exists()
    result = in_process(data)
    counts = skipped(result)
    assert counts["extract_fragments"] > 0 and counts["agglomerate"] > 0
    assert counts["relabel"] == 0
    with pytest.raises(ConfigError, match="not part of run"):
        reset(parse_config(data), "predict")


def test_a_run_dir_that_is_a_file_is_refused(tmp_path: Path, gala: Path) -> None:
    (tmp_path / "run").write_text("not a directory")
    with pytest.raises(ConfigError, match="is a file"):
        run(parse_config(gala_data(gala, tmp_path / "run")), multiprocessing=False)


def test_cli_refuses_zero_workers_and_non_utf8_configs(tmp_path: Path, gala: Path) -> None:
    path = tmp_path / "gala.yaml"
    path.write_text(yaml.safe_dump(gala_data(gala, tmp_path / "run")))
    proc = subprocess.run(
        [BLOCKWISE, "run", str(path), "--workers", "0"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "--workers 0" in proc.stderr and "execution.num_workers" in proc.stderr
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    proc = subprocess.run([BLOCKWISE, "run", str(latin)], capture_output=True, text=True)
    assert proc.returncode == 2 and "not a UTF-8 text file" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_a_deterministic_failure_is_not_retried_pointlessly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from blockwise.run_context import RunContext

    data = nan_affinities(tmp_path / "nan.zarr")
    reads: list[str] = []
    original = RunContext.read_affinities

    def counting(self: RunContext, roi: Any, **kwargs: Any) -> np.ndarray:
        reads.append(str(roi))
        return original(self, roi, **kwargs)

    monkeypatch.setattr(RunContext, "read_affinities", counting)
    config = parse_config(
        {
            "name": "nan",
            "run_dir": str(tmp_path / "run"),
            "inputs": {"affinities": {"file": str(data), "dataset": "affs"}},
            "output": {"chunk_shape_vx": [16, 16, 16]},
            "extract_fragments": {"block_shape_vx": [32, 32, 32], "context_vx": [2, 2, 2]},
            "execution": {"num_workers": 1, "max_retries": 3},
        }
    )
    result = run(config, multiprocessing=False, progress=False)
    assert not result.ok
    assert [f.block_index for f in result.failures] == [1]
    assert "NaN" in result.failures[0].error and "NaN" in result.failures[0].traceback
    bad = [r for r in reads if r.startswith("[0:256, 0:256, 240")]
    assert len(bad) == 1, reads  # read once; the retries failed at once without work


@pytest.mark.timeout(300)
def test_a_failing_block_reads_as_one_line_on_the_terminal(tmp_path: Path) -> None:
    # with worker processes and retries: the terminal shows the summary with one line
    # for the failed block and none of its tracebacks (daisy's scheduler printed one
    # per attempt); the traceback is in the run directory, once
    data = nan_affinities(tmp_path / "nan.zarr")
    config = {
        "name": "nan",
        "run_dir": str(tmp_path / "run"),
        "inputs": {"affinities": {"file": str(data), "dataset": "affs"}},
        "output": {"chunk_shape_vx": [16, 16, 16]},
        "extract_fragments": {"block_shape_vx": [32, 32, 32], "context_vx": [2, 2, 2]},
        "execution": {"num_workers": 2, "max_retries": 2},
    }
    path = tmp_path / "nan.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [BLOCKWISE, "run", str(path), "--no-progress"], capture_output=True, text=True, timeout=240
    )
    terminal = proc.stdout + proc.stderr
    assert proc.returncode == 1, terminal
    assert "Traceback" not in terminal and "WARN" not in terminal, terminal
    named = [line for line in terminal.splitlines() if "extract_fragments block 1 " in line]
    assert len(named) == 1 and "write ROI [0:256, 0:256, 256:512]" in named[0], terminal
    assert "NaN" in named[0], terminal
    # downstream blocks that need it are reported as blocked, not failed
    table = [line.split() for line in proc.stdout.splitlines()]
    rows = {cells[0]: cells for cells in table if len(cells) == 8}
    assert rows["extract_fragments"][1:6] == ["2", "1", "0", "1", "0"], proc.stdout
    assert rows["agglomerate"][1:6] == ["2", "0", "0", "0", "2"], proc.stdout
    record = json.loads(
        (tmp_path / "run" / "failures" / "extract_fragments" / "block_1.json").read_text()
    )
    assert "Traceback" in record["traceback"] and "NaN" in record["traceback"]


def test_plan_smoke_runs_one_block_per_stage_without_touching_the_run_dir(
    tmp_path: Path, gala: Path
) -> None:
    path = tmp_path / "gala.yaml"
    path.write_text(yaml.safe_dump(gala_data(gala, tmp_path / "run")))
    proc = subprocess.run(
        [BLOCKWISE, "plan", str(path), "--smoke"], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for stage in ("extract_fragments", "agglomerate", "hierarchy"):
        assert f"  {stage}: ok in " in proc.stdout, proc.stdout
    # the octree's higher levels and what follows need every leaf block
    assert "hierarchy levels >= 1 and ['find_segments', 'relabel', 'downsample', 'evaluate']" in (
        proc.stdout
    )
    assert not (tmp_path / "run").exists()


def test_plan_smoke_fails_fast_naming_the_block(tmp_path: Path) -> None:
    data = tmp_path / "nan.zarr"
    # 2 x 4 x 16 = 128 chunks: plan samples 64 of them (every second one), not chunk 1
    affs = np.random.default_rng(0).random((3, 32, 64, 256)).astype(np.float32)
    affs[:, 3, 3, 20] = np.nan  # in chunk (0, 0, 1), block 0
    root = zarr.open_group(str(data), mode="w")
    root.create_dataset("affs", data=affs, chunks=(3, 16, 16, 16)).attrs["resolution"] = [8, 8, 8]
    config = {
        "name": "nan",
        "run_dir": str(tmp_path / "run"),
        "inputs": {"affinities": {"file": str(data), "dataset": "affs"}},
        "output": {"chunk_shape_vx": [16, 16, 16]},
        "extract_fragments": {"block_shape_vx": [32, 32, 32], "context_vx": [2, 2, 2]},
    }
    path = tmp_path / "nan.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [BLOCKWISE, "plan", str(path), "--smoke"], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 2
    assert "smoke test: extract_fragments block 0" in proc.stderr and "NaN" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_in_process_runs_report_stage_seconds_and_throughput(tmp_path: Path, gala: Path) -> None:
    result = in_process(gala_data(gala, tmp_path / "run"))
    for stage in result.stages:
        assert stage.wall_s > 0, stage
        assert stage.mvox_per_s > 0, stage


@pytest.mark.parametrize("multiprocessing", [False, True], ids=["in_process", "local"])
def test_stage_seconds_are_the_span_of_their_blocks_and_zero_when_skipped(
    tmp_path: Path, gala: Path, multiprocessing: bool
) -> None:
    config = parse_config(gala_data(gala, tmp_path / "run"), "gala")
    first = run(config, multiprocessing=multiprocessing, progress=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for stage, row in zip(first.stages, summary["stages"], strict=True):
        spans = [b for b in summary["blocks"] if b["stage"] == stage.name]
        span = max(b["end_s"] for b in spans) - min(b["start_s"] for b in spans)
        # the wall time is the blocks' span (to the summary's rounding of the start)
        assert stage.wall_s == pytest.approx(span, abs=1e-3), stage
        assert row["wall_s"] == stage.wall_s and row["end_s"] - row["start_s"] == pytest.approx(
            span
        )
        assert stage.mvox_per_s == pytest.approx(stage.megavoxels / stage.wall_s)
    again = run(config, multiprocessing=multiprocessing, progress=False)
    for stage in again.stages:
        assert (stage.done, stage.skipped, stage.wall_s, stage.mvox_per_s) == (
            0,
            stage.total,
            0.0,
            0.0,
        )


@pytest.mark.parametrize("multiprocessing", [False, True], ids=["in_process", "local"])
def test_a_context_of_a_block_or_more_runs_like_any_other(
    tmp_path: Path, gala: Path, multiprocessing: bool
) -> None:
    # agglomerate reads a whole extract_fragments block around its own on z: daisy's
    # block ids are then shifted against the grid, and the index must follow
    data = gala_data(
        gala,
        tmp_path / "run",
        extract_fragments={"block_shape_vx": [16, 32, 32]},
        agglomerate={"context_vx": [16, 8, 8]},
        segments={"method": "global"},
    )
    result = run(parse_config(data, "gala"), multiprocessing=multiprocessing, progress=False)
    assert result.ok, result.summary()
    assert all(s.done == s.total and not s.failed for s in result.stages), result.summary()
