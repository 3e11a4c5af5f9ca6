"""RUN_DIR/summary.json written by the runner, and the report built from it, on real runs."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gala import gala_data, nan_affinities
from PIL import Image

from blockwise import summary as summary_module
from blockwise.config import parse_config
from blockwise.report_html import load_summary, write_report
from blockwise.runner import run
from blockwise.summary import BlockTimeLog, read_block_times, summary_path


def gala_config(gala: Path, run_dir: Path) -> Any:
    return parse_config(
        gala_data(gala, run_dir, segments={"method": "global"}, downsample={"levels": 1})
    )


def stage_rows(page: str) -> dict[str, list[str]]:
    """The cells of the report's stage table, by stage name."""
    table = page.split("<h2>Stages</h2>", 1)[1].split("<h2>", 1)[0]
    rows = {}
    for row in re.findall(r"<tr>(.*?)</tr>", table):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
        if cells:
            rows[cells[0]] = cells[1:]
    return rows


def inline_images(page: str) -> list[np.ndarray]:
    found = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB")) for b in found]


def test_gala_run_writes_a_summary_the_report_shows(tmp_path: Path, gala: Path) -> None:
    cfg = gala_config(gala, tmp_path / "run")
    result = run(cfg, multiprocessing=False, progress=False)
    assert result.ok, result.summary()
    summary = load_summary(summary_path(cfg.run_dir))
    assert summary["exit_status"] == "ok" and summary["exit_code"] == 0
    assert summary["run"] == "gala_ci" and summary["profile"] == "in_process"
    assert summary["wall_s"] == pytest.approx(result.wall_s, abs=0.5)
    assert summary["started_at"] < summary["ended_at"]
    names = [s["name"] for s in summary["stages"]]
    assert names == [s.name for s in result.stages]
    assert "downsample" in names and "evaluate" in names
    for entry, stage in zip(summary["stages"], result.stages, strict=True):
        for key in ("total", "done", "skipped", "failed", "blocked"):
            assert entry[key] == getattr(stage, key), (stage.name, key)
        assert entry["wall_s"] == pytest.approx(stage.wall_s)
        assert entry["mvox_per_s"] == pytest.approx(stage.mvox_per_s)
        assert entry["workers"] == 1  # in-process
    assert summary["failures"] == []

    page = write_report(cfg.run_dir).read_text()
    rows = stage_rows(page)
    assert list(rows) == names
    for stage in result.stages:
        cells = rows[stage.name]
        assert cells[:5] == [str(stage.total), str(stage.done), str(stage.skipped), "0", "0"]
        assert cells[5] == f"{stage.wall_s:.1f}" and cells[7] == f"{stage.mvox_per_s:.2f}"
        assert stage.done == stage.total > 0
    extract = result.stages[0]
    assert extract.name == "extract_fragments" and extract.total == 2 * 4 * 7  # 50 x 100 x 200
    assert float(rows["extract_fragments"][7]) > 0
    assert "exit code 0" in page and "<b>ok</b>" in page

    # a second invocation skips every block: the summary says so and times nothing
    again = run(cfg, multiprocessing=False, progress=False)
    assert again.ok
    second = load_summary(summary_path(cfg.run_dir))
    assert all(s["done"] == 0 and s["skipped"] == s["total"] for s in second["stages"])
    assert all(s["start_s"] is None and s["mvox_per_s"] == 0 for s in second["stages"])
    assert second["started_at"] > summary["ended_at"]


def test_recorded_block_times_become_the_per_worker_plot(tmp_path: Path, gala: Path) -> None:
    # every StageWorker records when each of its blocks ran (blockwise.summary.BlockTimeLog)
    cfg = gala_config(gala, tmp_path / "run")
    result = run(cfg, multiprocessing=False, progress=False)
    assert result.ok, result.summary()
    summary = json.loads(summary_path(cfg.run_dir).read_text())
    blocks = summary["blocks"]
    assert len(blocks) == sum(s.done for s in result.stages)
    for stage in summary["stages"]:
        own = sorted(b["block"] for b in blocks if b["stage"] == stage["name"])
        assert own == list(range(stage["total"])), stage["name"]
        assert stage["start_s"] == min(b["start_s"] for b in blocks if b["stage"] == stage["name"])
    assert all(0 <= b["start_s"] <= b["end_s"] <= summary["wall_s"] for b in blocks)
    assert len({b["worker"] for b in blocks}) == 1  # in-process: the driver
    page = write_report(cfg.run_dir).read_text()
    assert 'alt="blocks over time per worker"' in page
    plot = inline_images(page)[0]
    # coloured bars, not a blank canvas
    assert np.mean(np.ptp(plot.astype(np.int16), axis=2) > 60) > 0.01


def test_failed_run_writes_a_failed_summary(tmp_path: Path) -> None:
    data = nan_affinities(tmp_path / "nan.zarr")
    cfg = parse_config(
        {
            "name": "nan",
            "run_dir": str(tmp_path / "run"),
            "inputs": {"affinities": {"file": str(data), "dataset": "affs"}},
            "output": {"chunk_shape_vx": [16, 16, 16]},
            "extract_fragments": {"block_shape_vx": [32, 32, 32], "context_vx": [2, 2, 2]},
            "segments": {"method": "global"},
            "execution": {"max_retries": 0},
        }
    )
    result = run(cfg, multiprocessing=False, progress=False)
    assert not result.ok
    summary = load_summary(summary_path(cfg.run_dir))
    assert summary["exit_status"] == "failed" and summary["exit_code"] == 1
    assert summary["failures"][0]["stage"] == "extract_fragments"
    assert summary["failures"][0]["block"] == 1 and "NaN" in summary["failures"][0]["error"]
    extract = summary["stages"][0]
    assert extract["failed"] == 1 and extract["done"] == 1 and extract["blocked"] == 0
    # the agglomerate block that reads the failed fragments block never ran: blocked, not failed
    agglomerate = summary["stages"][1]
    assert agglomerate["name"] == "agglomerate" and agglomerate["failed"] == 0
    assert agglomerate["blocked"] == agglomerate["total"] - agglomerate["done"] > 0
    page = write_report(cfg.run_dir).read_text()
    assert "<b>failed</b>" in page and "exit code 1" in page


def test_block_time_log_reads_back_and_skips_torn_lines(tmp_path: Path) -> None:
    log = BlockTimeLog(tmp_path, "relabel", worker="node7:123")
    log.record(4, 100.0, 101.5)
    log.record(2, 99.0, 99.5)
    log.close()
    with log.path.open("a") as f:
        f.write('{"stage": "relabel", "block": 9, "start": 1')  # a worker killed mid-line
    other = BlockTimeLog(tmp_path, "relabel", worker="node8:9")
    other.record(1, 50.0, 51.0)
    other.close()
    assert log.path != other.path and log.path.name == "node7-123.jsonl"
    records = read_block_times(tmp_path, since=60.0)
    assert [(r["block"], r["worker"]) for r in records] == [(2, "node7:123"), (4, "node7:123")]
    assert records[1] == {
        "stage": "relabel",
        "block": 4,
        "worker": "node7:123",
        "start": 100.0,
        "end": 101.5,
    }
    assert len(read_block_times(tmp_path)) == 3
    assert read_block_times(tmp_path / "nothing") == []


def test_block_time_log_writes_its_lines_together_and_on_close(tmp_path: Path) -> None:
    log = BlockTimeLog(tmp_path, "relabel", worker="node7:123")
    log.FLUSH_S = 3600.0  # no second write within this test: only the first and the close
    log.record(3, 10.25, 11.0)  # the first record is written at once
    assert len(log.path.read_text().splitlines()) == 1
    times = [(i, 1e9 + i / 3, 1e9 + i / 3 + 0.125) for i in range(4, 40)]
    for block, start, end in times:
        log.record(block, start, end)
    assert len(log.path.read_text().splitlines()) == 1  # noted, not yet written
    log.close()
    records = read_block_times(tmp_path)
    assert [(r["block"], r["start"], r["end"]) for r in records] == [(3, 10.25, 11.0), *times]
    assert {r["worker"] for r in records} == {"node7:123"}
    log.record(40, 2e9, 2e9 + 1)  # a record after close opens the file again
    log.close()
    assert [r["block"] for r in read_block_times(tmp_path)][-1] == 40


def test_block_time_log_writes_its_first_line_at_once_on_a_young_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a machine up for less than FLUSH_S: its monotonic clock is still near zero
    monkeypatch.setattr(summary_module.time, "monotonic", lambda: 0.25)
    log = BlockTimeLog(tmp_path, "relabel", worker="w:1")
    log.record(3, 10.25, 11.0)
    assert len(log.path.read_text().splitlines()) == 1
    log.close()


def test_block_time_log_logs_a_failed_write_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = BlockTimeLog(tmp_path, "relabel", worker="w:1")
    (tmp_path / "timings").write_text("in the way")  # the log's folder cannot be made
    log.record(1, 100.0, 101.0)  # logged, not raised: a timing never fails a block
    assert "cannot record the times of 1 relabel block(s)" in caplog.text
    (tmp_path / "timings").unlink()
    log.record(2, 102.0, 103.0)
    log.flush()

    class Torn:
        """A file on a disk that fills up within a write: half a line lands."""

        def __init__(self, file: Any) -> None:
            self.file = file

        def write(self, text: str) -> int:
            self.file.write(text[: len(text) // 2])
            self.file.flush()
            raise OSError(28, "No space left on device")

        def flush(self) -> None:
            self.file.flush()

        def close(self) -> None:
            self.file.close()

    log._file = Torn(log._file)
    log.record(3, 104.0, 105.0)
    log.flush()
    assert "cannot record the times of 1 relabel block(s)" in caplog.messages[-1]
    log.record(4, 106.0, 107.0)  # space again: a new line, after the torn one
    log.close()
    assert [r["block"] for r in read_block_times(tmp_path)] == [2, 4]
