"""The whole post-processing pipeline on each graph-store backend, and a server outage."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from gala import gala_data

from blockwise.config import parse_config
from blockwise.runner import run

from .conftest import SecantusServer


def gala_config(gala: Path, run_dir: Path, store_uri: str | None = None, **store: Any) -> Any:
    data = gala_data(gala, run_dir)
    data["store"] = {"uri": store_uri, **store}
    return parse_config(data)


def outputs(run_dir: Path, thresholds: list[float]) -> dict[str, Any]:
    root = zarr.open_group(str(run_dir / "output.zarr"), mode="r")
    arrays = {"fragments": root["fragments"][:]}
    for t in thresholds:
        name = f"segmentation/threshold_{t:.4f}"
        arrays[name] = root[name][:]
    report = json.loads((run_dir / "evaluation.json").read_text())
    return {"arrays": arrays, "results": report["results"]}


def assert_same_outputs(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["arrays"].keys() == b["arrays"].keys()
    for name, array in a["arrays"].items():
        assert np.array_equal(array, b["arrays"][name]), name
    assert a["results"] == b["results"]


@pytest.fixture(scope="module")
def reference(gala: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An undisturbed run on the SQLite default store."""
    cfg = gala_config(gala, tmp_path_factory.mktemp("reference") / "run")
    result = run(cfg, multiprocessing=False, progress=False)
    assert result.ok, result.summary()
    return outputs(cfg.run_dir, cfg.segments.thresholds)


def test_mongodb_gives_the_same_segmentation_as_sqlite(
    gala: Path, reference: dict[str, Any], mongo_uri: str, tmp_path: Path
) -> None:
    cfg = gala_config(gala, tmp_path / "run", mongo_uri)
    result = run(cfg, multiprocessing=False, progress=False)
    assert result.ok, result.summary()
    assert_same_outputs(outputs(cfg.run_dir, cfg.segments.thresholds), reference)


def fragment_chunks_written(run_dir: Path) -> int:
    return sum(1 for p in (run_dir / "output.zarr" / "fragments").glob("*.*.*"))


def stop_after_blocks(server: SecantusServer, run_dir: Path, blocks: int) -> None:
    deadline = time.monotonic() + 120
    while fragment_chunks_written(run_dir) < blocks and time.monotonic() < deadline:
        time.sleep(0.05)
    server.stop()


@pytest.mark.slow
def test_outage_mid_run_is_retried_and_the_output_is_unchanged(
    gala: Path,
    reference: dict[str, Any],
    mongo_server: SecantusServer,
    mongo_uri: str,
    tmp_path: Path,
) -> None:
    cfg = gala_config(gala, tmp_path / "run", mongo_uri, retry_attempts=8)
    stopper = threading.Thread(target=stop_after_blocks, args=(mongo_server, cfg.run_dir, 8))
    stopper.start()

    def restart_later() -> None:
        stopper.join()
        time.sleep(2.0)
        mongo_server.start()

    restarter = threading.Thread(target=restart_later)
    restarter.start()
    result = run(cfg, multiprocessing=False, progress=False)
    restarter.join()
    assert result.ok, result.summary()
    assert_same_outputs(outputs(cfg.run_dir, cfg.segments.thresholds), reference)


@pytest.mark.slow
def test_server_that_stays_down_fails_blocks_clearly_and_a_rerun_completes(
    gala: Path,
    reference: dict[str, Any],
    mongo_server: SecantusServer,
    mongo_uri: str,
    tmp_path: Path,
) -> None:
    cfg = gala_config(
        gala,
        tmp_path / "run",
        mongo_uri,
        retry_attempts=2,
        retry_first_backoff_s=0.1,
        server_timeout_s=0.3,
    )
    cfg = cfg.model_copy(update={"execution": cfg.execution.model_copy(update={"max_retries": 0})})
    stopper = threading.Thread(target=stop_after_blocks, args=(mongo_server, cfg.run_dir, 8))
    stopper.start()
    # the server stops once 8 fragment blocks are written, long after the driver
    # prepared the run: every later block that needs the store fails, the run ends
    result = run(cfg, multiprocessing=False, progress=False)
    stopper.join()
    assert not result.ok
    assert result.failures, result.summary()
    assert all("StoreError" in f.error for f in result.failures), result.summary()
    assert all("127.0.0.1" in f.error for f in result.failures)
    assert any(f.stage == "extract_fragments" for f in result.failures)
    mongo_server.start()
    again = run(cfg, multiprocessing=False, progress=False)
    assert again.ok, again.summary()
    assert_same_outputs(outputs(cfg.run_dir, cfg.segments.thresholds), reference)
