"""`blockwise train`: checkpoints, resume, the losses, the log, validation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gunpowder as gp
import pytest
import torch
import yaml

from blockwise.cli import main
from blockwise.nn.architecture import output_shape
from blockwise.nn.checkpoint import load_checkpoint
from blockwise.nn.unet import build_unet
from blockwise.train.data import load_training_volume
from blockwise.train.pipeline import batch_arrays, build_pipeline, make_request
from blockwise.train.trainer import (
    checkpoint_path,
    list_checkpoints,
    loss_function,
    train,
    train_step,
)


def write_config(path: Path, mapping: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(mapping))
    return path


def read_log(train_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (train_dir / "train_log.jsonl").read_text().splitlines()]


def test_cli_train_writes_checkpoint_then_resumes(
    gala: Path, tmp_path: Path, tiny_mapping: Any
) -> None:
    train_dir = tmp_path / "run"
    config = write_config(tmp_path / "t.yaml", tiny_mapping(gala, train_dir=str(train_dir)))
    assert main(["train", str(config), "--iterations", "3", "--no-progress"]) == 0
    assert [i for i, _ in list_checkpoints(train_dir)] == [2, 3]
    first = load_checkpoint(checkpoint_path(train_dir, 3))
    assert first.iteration == 3
    assert first.offsets == [(-1, 0, 0), (0, -1, 0), (0, 0, -1)]
    assert (train_dir / "loss_curve.png").stat().st_size > 1000
    log = read_log(train_dir)
    assert [r["iteration"] for r in log] == [1, 2, 3]
    assert all(r["kind"] == "mse" and r["lr"] == 1e-3 and r["seconds"] > 0 for r in log)

    # a second run with more iterations continues from the checkpoint
    assert main(["train", str(config), "--iterations", "5", "--no-progress"]) == 0
    resumed = load_checkpoint(checkpoint_path(train_dir, 5))
    assert resumed.iteration == 5
    # Adam's step count went on from 3 (its state was restored, not restarted)
    assert resumed.optimizer_state is not None
    steps = {int(s["step"]) for s in resumed.optimizer_state["state"].values()}
    assert steps == {5}
    assert [r["iteration"] for r in read_log(train_dir)] == [1, 2, 3, 4, 5]
    # nothing left to do: no new checkpoint, exit 0
    assert main(["train", str(config), "--iterations", "4", "--no-progress"]) == 0
    assert [i for i, _ in list_checkpoints(train_dir)] == [3, 4, 5]  # keep_checkpoints 3


def test_a_resumed_run_trains_at_the_configured_learning_rate(
    gala: Path, tmp_path: Path, tiny_config: Any
) -> None:
    # fine-tuning at a lower rate: Adam's restored state must not bring the old rate back
    run = tmp_path / "run"
    train(tiny_config(gala, run, optimizer={"lr": 1e-3}), iterations=2, progress=False)
    train(tiny_config(gala, run, optimizer={"lr": 1e-4}), iterations=4, progress=False)
    assert [r["lr"] for r in read_log(run)] == [1e-3, 1e-3, 1e-4, 1e-4]
    resumed = load_checkpoint(checkpoint_path(run, 4))
    assert resumed.optimizer_state is not None
    assert [g["lr"] for g in resumed.optimizer_state["param_groups"]] == [1e-4]
    # the moments went on: Adam's step count continued from 2
    assert {int(s["step"]) for s in resumed.optimizer_state["state"].values()} == {4}


@pytest.mark.slow
def test_resume_gives_the_same_weights_as_one_run(
    gala: Path, tmp_path: Path, tiny_config: Any
) -> None:
    straight = tiny_config(gala, tmp_path / "a")
    train(straight, iterations=4, progress=False)
    split = tiny_config(gala, tmp_path / "b")
    train(split, iterations=2, progress=False)
    train(split, iterations=4, progress=False)
    a = load_checkpoint(checkpoint_path(tmp_path / "a", 4)).model_state
    b = load_checkpoint(checkpoint_path(tmp_path / "b", 4)).model_state
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_killed_run_log_is_cut_back_to_the_checkpoint(
    gala: Path, tmp_path: Path, tiny_config: Any
) -> None:
    config = tiny_config(gala, tmp_path / "run", checkpoint_every=2)
    train(config, iterations=3, progress=False)
    # simulate a run killed after iteration 3 was logged but before its checkpoint
    checkpoint_path(tmp_path / "run", 3).unlink()
    train(config, iterations=4, progress=False)
    assert [r["iteration"] for r in read_log(tmp_path / "run")] == [1, 2, 3, 4]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mse", "malis"])
def test_loss_goes_down_on_one_fixed_batch(
    gala: Path, tmp_path: Path, tiny_config: Any, kind: str
) -> None:
    config = tiny_config(gala, tmp_path / "t", input_shape_vx=[36, 36, 36])
    volume = load_training_volume(config.data)
    out = output_shape(config.unet, config.input_shape_vx)
    pipeline, keys = build_pipeline(config, volume, None)
    with gp.build(pipeline):
        # the first seeded batch with a fair share of boundary edges
        for seed in range(50):
            batch = batch_arrays(
                pipeline.request_batch(
                    make_request(keys, config.input_shape_vx, out, volume.voxel_size, seed)
                ),
                keys,
            )
            if 0.2 < batch.affinities.mean() < 0.9:
                break
    assert 0.2 < batch.affinities.mean() < 0.9, "no batch with both classes"
    torch.manual_seed(0)
    model = build_unet(config.unet, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss = loss_function(kind, list(config.offsets))
    losses = [train_step(model, optimizer, loss, batch) for _ in range(50)]
    assert min(losses[-5:]) < 0.6 * losses[0], losses


def test_mse_then_malis_switches_at_the_iteration(
    gala: Path, tmp_path: Path, tiny_config: Any
) -> None:
    config = tiny_config(
        gala, tmp_path / "run", loss={"kind": "mse_then_malis", "malis_from_iteration": 2}
    )
    train(config, iterations=4, progress=False)
    log = read_log(tmp_path / "run")
    assert [(r["iteration"], r["kind"]) for r in log] == [
        (1, "mse"),
        (2, "mse"),
        (3, "malis"),
        (4, "malis"),
    ]
    assert all(0.0 <= r["loss"] <= 1.0 for r in log)


def test_malis_training_runs_with_a_long_range_offset(
    gala: Path, tmp_path: Path, tiny_config: Any
) -> None:
    offsets = [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [0, -3, 0]]
    config = tiny_config(gala, tmp_path / "run", loss={"kind": "malis"}, offsets=offsets)
    result = train(config, iterations=2, progress=False)
    assert result.end_iteration == 2 and result.last_loss is not None
    assert load_checkpoint(checkpoint_path(tmp_path / "run", 2)).offsets == [
        tuple(o) for o in offsets
    ]


def test_validation_is_logged(gala: Path, tmp_path: Path, tiny_config: Any) -> None:
    config = tiny_config(
        gala,
        tmp_path / "run",
        validation={
            "roi": {"offset_nm": [100, 200, 1200], "shape_nm": [300, 300, 300]},
            "every": 2,
        },
    )
    train(config, iterations=2, progress=False)
    record = [r for r in read_log(tmp_path / "run") if r["kind"] == "validation"]
    assert len(record) == 1 and record[0]["iteration"] == 2
    for key in ("loss", "voi_split", "voi_merge", "arand"):
        assert record[0][key] >= 0.0
