"""The evaluate stage is `blockwise evaluate`: same numbers, same worst objects, viewer-ready.

One in-process run of the gala CI config (synthesized affinities) is shared
by the tests of this module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
import zarr
from skimage.metrics import adapted_rand_error, variation_of_information

from blockwise.cli import main
from blockwise.config import parse_config
from blockwise.report import format_report
from blockwise.runner import run
from blockwise.viewer import run_layers, worst_selection

from datafiles import REPO, require_data

SCORE_KEYS = ("voi_split", "voi_merge", "arand", "num_voxels", "num_segments", "num_bodies")


@pytest.fixture(scope="module")
def gala_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[float]]:
    """A finished gala CI run: its run directory, its input container and its thresholds."""
    from blockwise.synthetic import synthesize_affinities_file

    tmp = tmp_path_factory.mktemp("gala_eval")
    data = tmp / "gala_synth.zarr"
    synthesize_affinities_file(require_data("gala_fib_train.h5"), "labels", data, seed=0)
    config: dict[str, Any] = yaml.safe_load((REPO / "configs" / "gala_ci.yaml").read_text())
    config["run_dir"] = str(tmp / "run")
    config["inputs"]["affinities"]["file"] = str(data)
    config["inputs"]["ground_truth"]["file"] = str(data)
    config["downsample"] = {"enabled": False}
    config["segments"]["method"] = "global"  # what the CI config's quantile scoring needs
    cfg = parse_config(config)
    result = run(cfg, multiprocessing=False, progress=False)
    assert result.ok, result.summary()
    return cfg.run_dir, data, cfg.segments.thresholds


def cli_evaluation(run_dir: Path, data: Path, threshold: float, out: Path) -> dict[str, Any]:
    code = main(
        [
            "evaluate",
            f"{run_dir / 'output.zarr'}:segmentation/threshold_{threshold:.4f}",
            f"{data}:labels",
            "--voxel-size",
            "10",
            "10",
            "10",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    report: dict[str, Any] = json.loads((out / "evaluation.json").read_text())
    return report


def test_stage_report_equals_blockwise_evaluate_and_skimage(
    gala_run: tuple[Path, Path, list[float]], tmp_path: Path
) -> None:
    run_dir, data, thresholds = gala_run
    report = json.loads((run_dir / "evaluation.json").read_text())
    assert report["run"] == "gala_ci" and report["scoring"]["kind"] == "mean"
    assert [r["threshold"] for r in report["results"]] == thresholds
    labels = zarr.open_group(str(data), mode="r")["labels"][...].astype(np.int64)
    output = zarr.open_group(str(run_dir / "output.zarr"), mode="r")
    for i, entry in enumerate(report["results"]):
        threshold = entry["threshold"]
        cli = cli_evaluation(run_dir, data, threshold, tmp_path / f"cli_{i}")
        for key in SCORE_KEYS:
            assert entry[key] == cli[key], key
        # the same worst objects, with the same sizes, centres and partners
        assert entry["split_errors"] == cli["split_errors"]
        assert entry["merge_errors"] == cli["merge_errors"]
        assert entry["roi_nm"] == cli["roi_nm"] and entry["ground_truth"] == cli["ground_truth"]
        assert entry["segmentation"] == f"output.zarr:segmentation/threshold_{threshold:.4f}"
        # and scikit-image on the whole arrays (ground-truth label 0 ignored)
        seg = output[f"segmentation/threshold_{threshold:.4f}"][...].astype(np.int64)
        split, merge = variation_of_information(labels, seg, ignore_labels=[0])
        are, _, _ = adapted_rand_error(labels, seg, ignore_labels=[0])
        assert entry["voi_split"] == pytest.approx(float(split), abs=1e-9)
        assert entry["voi_merge"] == pytest.approx(float(merge), abs=1e-9)
        assert entry["arand"] == pytest.approx(float(are), abs=1e-9)
    # some threshold splits and some merges: the worst lists are not trivially empty
    assert any(r["split_errors"] for r in report["results"])
    assert any(r["merge_errors"] for r in report["results"])
    assert (run_dir / "evaluation.png").stat().st_size > 1000
    text = format_report(run_dir / "evaluation.json")
    assert f"{report['results'][0]['voi_split']:.3f}" in text


def test_view_segments_worst_on_a_pipeline_run(gala_run: tuple[Path, Path, list[float]]) -> None:
    run_dir, _, thresholds = gala_run
    report = json.loads((run_dir / "evaluation.json").read_text())
    layers = run_layers(run_dir)
    selection = worst_selection(run_dir, layers)
    assert selection.position_nm is not None
    first = report["results"][0]
    name = f"threshold_{first['threshold']:.4f}"
    expected = {o["id"] for o in first["merge_errors"][:3]}
    for o in first["split_errors"][:3]:
        expected |= {p["id"] for p in o["partners"]}
    assert set(selection.segments[name]) == expected
    # every selected segment exists in its layer, every selected body in the ground truth
    volumes = {spec.name: spec.volume for spec in layers}
    for layer, ids in selection.segments.items():
        present = set(np.unique(volumes[layer].array[...]).tolist())
        assert ids and set(ids) <= present, layer
    assert set(selection.segments) >= {f"threshold_{t:.4f}" for t in thresholds} | {"ground_truth"}
