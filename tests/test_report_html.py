"""The static run report: every part of a run directory rendered, images inlined, no server,
and the page rendered with its figures by a real headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from PIL import Image

from blockwise.cli import main
from blockwise.config import DatasetConfig
from blockwise.errors import InputError
from blockwise.evaluation import evaluate_volumes, write_evaluation
from blockwise.report import format_report
from blockwise.report_html import load_summary, read_loss_log, render_report, write_report
from blockwise.volume import open_volume

from headless_chromium import screenshot_page


def make_full_run(run_dir: Path) -> Path:
    """A run directory with every part a report shows, written by hand."""
    run_dir.mkdir(parents=True)
    checkpoint = run_dir.parent / "train" / "checkpoint_2000.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"not read")
    (checkpoint.parent / "training_log.jsonl").write_text(
        "".join(
            json.dumps({"iteration": i, "loss": 0.3 * np.exp(-i / 600) + 0.02}) + "\n"
            for i in range(0, 2000, 10)
        )
        + "\n"
    )
    config = {
        "name": "report_test",
        "run_dir": str(run_dir),
        "inputs": {"raw": {"file": "/data/raw.h5", "dataset": "raw"}, "voxel_size": [10, 10, 10]},
        "predict": {"checkpoint": str(checkpoint)},
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    rng = np.random.default_rng(0)
    blocks = []
    for worker in range(3):
        t = 0.0
        for block in range(6):
            duration = float(rng.uniform(0.5, 2.0))
            stage = "extract_fragments" if block < 4 else "agglomerate"
            blocks.append(
                {
                    "stage": stage,
                    "block": worker * 6 + block,
                    "worker": f"worker-{worker}",
                    "start_s": t,
                    "end_s": t + duration,
                }
            )
            t += duration
    summary = {
        "stages": [
            {
                "name": "extract_fragments",
                "total": 12,
                "done": 11,
                "skipped": 0,
                "failed": 1,
                "wall_s": 20.0,
                "megavoxels": 15.6,
            },
            {
                "name": "agglomerate",
                "total": 6,
                "done": 6,
                "skipped": 0,
                "failed": 0,
                "wall_s": 8.0,
                "megavoxels": 15.6,
            },
        ],
        "blocks": blocks,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    store = run_dir / "v.zarr"
    gt = rng.integers(1, 6, size=(16, 16, 16)).astype(np.uint64)
    seg = gt * 2 + (rng.random(gt.shape) < 0.3)
    seg[gt == 1] = 4  # bodies 1 and 2 merged
    for name, data in (("gt", gt), ("seg", seg)):
        a = zarr.open_group(str(store), mode="a").create_dataset(name, data=data)
        a.attrs["resolution"] = [10, 10, 10]
    result = evaluate_volumes(
        open_volume(DatasetConfig(file=store, dataset="seg")),
        open_volume(DatasetConfig(file=store, dataset="gt")),
    )
    write_evaluation(result, run_dir / "evaluation.json", run_dir / "evaluation.png")
    run_report = {
        "run": "report_test",
        "ground_truth": result.ground_truth,
        "roi_nm": result.to_json()["roi_nm"],
        "results": [{"threshold": 0.5, **result.to_json()}],
    }
    (run_dir / "evaluation.json").write_text(json.dumps(run_report))
    (run_dir / "failures").mkdir()
    (run_dir / "failures" / "extract_fragments-3.json").write_text(
        json.dumps({"block": 3, "roi": "[0:64, 0:64, 0:64]", "traceback": "ValueError: <boom>"})
    )
    (run_dir / "logs" / "extract_fragments").mkdir(parents=True)
    (run_dir / "logs" / "extract_fragments" / "worker-0.log").write_text("started\nblock 3 done\n")
    return run_dir


def inline_images(page: str) -> list[np.ndarray]:
    found = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB")) for b in found]


def test_report_shows_every_part(tmp_path: Path) -> None:
    run_dir = make_full_run(tmp_path / "run")
    path = write_report(run_dir)
    assert path == run_dir / "report.html"
    page = path.read_text()
    # one static file: no external resources of any kind
    assert not re.search(r"(src|href)=\"(?!data:)", page)
    images = inline_images(page)
    assert len(images) == 3  # blocks over time, evaluation plot, loss curve
    for pixels in images:
        assert pixels.shape[0] > 100 and pixels.std() > 10
        assert np.mean(np.ptp(pixels.astype(np.int16), axis=2) > 60) > 0.002  # coloured marks
    for text in (
        "blockwise run report_test",
        "extract_fragments",
        "agglomerate",
        "1.95",  # MVox/s = 15.6 / 8.0
        "threshold 0.5",
        "worst split bodies",
        "worst merging segments",
        "failed blocks: 1",
        "extract_fragments-3.json",
        "ValueError: &lt;boom&gt;",  # escaped
        "worker logs: 1",
        "block 3 done",
        "200 points",
        "/data/raw.h5:raw",
    ):
        assert text in page, text
    # the existing text report still reads the same evaluation.json
    assert "threshold" in format_report(run_dir / "evaluation.json")


def test_report_of_a_fresh_run_dir(tmp_path: Path) -> None:
    page = render_report(tmp_path)
    for text in ("no config.yaml", "no summary.json", "not evaluated", "no checkpoint referenced"):
        assert text in page
    assert "failed blocks: 0" in page
    with pytest.raises(InputError, match="does not exist"):
        render_report(tmp_path / "missing")


def test_bad_summary_and_log_are_named(tmp_path: Path) -> None:
    (tmp_path / "summary.json").write_text(json.dumps({"stages": [{"name": "x", "total": 1}]}))
    with pytest.raises(InputError, match=r"summary.json: stages\[0\] lacks \['done'"):
        load_summary(tmp_path / "summary.json")
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(InputError, match=r"cannot read .*summary.json"):
        render_report(tmp_path)
    (tmp_path / "log.jsonl").write_text('{"iteration": 1, "loss": 0.5}\nnope\n')
    with pytest.raises(InputError, match=r"log.jsonl:2 is not JSON"):
        read_loss_log(tmp_path / "log.jsonl")


def test_cli_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir = make_full_run(tmp_path / "run")
    assert main(["report", str(run_dir / "config.yaml")]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir / "report.html")


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    path = write_report(make_full_run(tmp_path / "run"))
    pixels = screenshot_page(
        path.as_uri(), tmp_path / "report.png", (1100, 2400), tmp_path / "profile"
    )
    assert pixels.shape == (2400, 1100, 3)
    # not blank: text and tables over much of the page, and the coloured figures
    assert np.mean(pixels.min(axis=2) < 200) > 0.02
    coloured = np.ptp(pixels.astype(np.int16), axis=2) > 60
    assert coloured.mean() > 0.01
    # the figures are spread down the page (three of them), not one block
    rows = np.flatnonzero(coloured.any(axis=1))
    assert rows.max() - rows.min() > 800
