"""Bad input to `blockwise train`: a clear error naming what was expected and what
came, and nothing written (the training directory is not even created)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from blockwise.cli import main
from blockwise.config import load, validate_mapping
from blockwise.errors import CheckpointError, ConfigError, InputError
from blockwise.nn.checkpoint import save_checkpoint
from blockwise.nn.unet import build_unet
from blockwise.train.config import TrainConfig
from blockwise.train.trainer import checkpoint_path, train


def test_training_volume_smaller_than_network_input(
    gala: Path, tmp_path: Path, tiny_config: Any
) -> None:
    config = tiny_config(
        gala, tmp_path / "run", data={"roi": {"offset_nm": [0, 0, 0], "shape_nm": [200, 500, 500]}}
    )
    with pytest.raises(
        InputError,
        match=r"\[20, 50, 50\] voxels .* smaller than the network "
        r"input \[24, 24, 24\]",
    ):
        train(config, progress=False)
    assert not (tmp_path / "run").exists()


def test_labels_and_raw_of_different_shapes(
    tmp_path: Path, tiny_config: Any, write_h5: Any
) -> None:
    path = write_h5(
        tmp_path / "v.h5",
        raw=np.zeros((30, 40, 40), np.uint8),
        labels=np.ones((30, 40, 41), np.uint64),
    )
    config = tiny_config(path, tmp_path / "run")
    with pytest.raises(
        InputError,
        match=r"labels .* have shape \(30, 40, 41\) but raw .* has "
        r"shape \(30, 40, 40\)",
    ):
        train(config, progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "raw,message",
    [
        (np.zeros((2, 30, 40, 40), np.uint8), r"has 4 dimensions .* expected a 3D"),
        (np.zeros((30, 40, 40), np.float32), r"has dtype float32; expected uint8"),
    ],
    ids=["4d", "float32"],
)
def test_raw_of_wrong_dimensions_or_dtype(
    tmp_path: Path, tiny_config: Any, write_h5: Any, raw: np.ndarray, message: str
) -> None:
    path = write_h5(tmp_path / "v.h5", raw=raw, labels=np.ones(raw.shape[-3:], np.uint64))
    with pytest.raises(InputError, match=message):
        train(tiny_config(path, tmp_path / "run"), progress=False)
    assert not (tmp_path / "run").exists()


def test_labels_not_integers(tmp_path: Path, tiny_config: Any, write_h5: Any) -> None:
    path = write_h5(
        tmp_path / "v.h5",
        raw=np.zeros((30, 40, 40), np.uint8),
        labels=np.ones((30, 40, 40), np.float64),
    )
    with pytest.raises(InputError, match=r"dtype float64; expected a 3D .* integer ids"):
        train(tiny_config(path, tmp_path / "run"), progress=False)


def test_missing_file_and_missing_dataset(gala: Path, tmp_path: Path, tiny_config: Any) -> None:
    config = tiny_config(tmp_path / "nope.h5", tmp_path / "run")
    with pytest.raises(InputError, match=r"nope.h5 does not exist"):
        train(config, progress=False)
    config = tiny_config(
        gala, tmp_path / "run", data={"labels": {"file": str(gala), "dataset": "volumes/gt"}}
    )
    with pytest.raises(
        InputError, match=r"has no dataset 'volumes/gt'; it has \['labels', 'raw'\]"
    ):
        train(config, progress=False)
    assert not (tmp_path / "run").exists()


def test_missing_data_through_the_cli_exits_2(
    tmp_path: Path, tiny_mapping: Any, caplog: pytest.LogCaptureFixture
) -> None:
    mapping = tiny_mapping(tmp_path / "nope.h5", train_dir=str(tmp_path / "run"))
    config = tmp_path / "t.yaml"
    config.write_text(yaml.safe_dump(mapping))
    assert main(["train", str(config), "--no-progress"]) == 2
    assert "nope.h5 does not exist" in caplog.text


def test_checkpoint_with_another_architecture_or_offsets(
    gala: Path, tmp_path: Path, tiny_config: Any
) -> None:
    config = tiny_config(gala, tmp_path / "run")
    other = config.unet.model_copy(update={"num_fmaps": 3})
    model = build_unet(other, 3)
    save_checkpoint(checkpoint_path(tmp_path / "run", 2), model, other, list(config.offsets), 2)
    with pytest.raises(CheckpointError, match=r"num_fmaps: config 4, checkpoint 3"):
        train(config, progress=False)

    offsets = [(-1, 0, 0), (0, -1, 0), (0, 0, -1), (0, 0, -3)]
    model = build_unet(config.unet, 4)
    save_checkpoint(checkpoint_path(tmp_path / "run", 4), model, config.unet, offsets, 4)
    with pytest.raises(
        CheckpointError,
        match=r"offsets .*differ from the checkpoint's .*"
        r"\[0, 0, -3\]",
    ):
        train(config, progress=False)
    # nothing was added to the training directory
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == [
        "checkpoints",
        "iteration_00000002.pt",
        "iteration_00000004.pt",
    ]


def test_validation_roi_outside_the_training_region(
    gala: Path, tmp_path: Path, tiny_config: Any
) -> None:
    config = tiny_config(
        gala,
        tmp_path / "run",
        validation={"roi": {"offset_nm": [0, 0, 0], "shape_nm": [300, 300, 300]}},
    )
    with pytest.raises(
        InputError,
        match=r"grown by the network context \[8, 8, 8\] .* not "
        r"inside the training region",
    ):
        train(config, progress=False)
    assert not (tmp_path / "run").exists()


def test_invalid_input_shape_names_the_valid_ones(
    gala: Path, tmp_path: Path, tiny_config: Any
) -> None:
    config = tiny_config(gala, tmp_path / "run", input_shape_vx=[25, 24, 24])
    with pytest.raises(ConfigError, match=r"not a valid input .* nearest"):
        train(config, progress=False)


@pytest.mark.parametrize(
    "override,message",
    [
        ({"offsets": [[0, -1, 0], [-1, 0, 0], [0, 0, -1]]}, r"first three offsets must be"),
        ({"loss": {"kind": "mse_then_malis"}}, r"needs malis_from_iteration"),
        ({"loss": {"kind": "mse", "malis_from_iteration": 3}}, r"only used with kind"),
        ({"seed": -1}, r"key `seed`"),
        ({"augment": {"mirorr": True}}, r"unknown key `augment.mirorr`"),
    ],
)
def test_config_errors_name_the_key(
    gala: Path, tiny_mapping: Any, override: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_mapping(tiny_mapping(gala, **override), TrainConfig)


def test_offsets_match_the_network_outputs(gala: Path, tmp_path: Path, tiny_config: Any) -> None:
    offsets = [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [-2, 0, 0], [0, -5, 0]]
    config = tiny_config(gala, tmp_path / "run", offsets=offsets)
    train(config, iterations=1, progress=False)
    from blockwise.nn.checkpoint import model_from_checkpoint

    model = model_from_checkpoint(checkpoint_path(tmp_path / "run", 1))
    assert model(torch.zeros(1, 1, 24, 24, 24)).shape == (1, 5, 8, 8, 8)


def test_shipped_training_configs_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLOCKWISE_DATA", "/data")
    repo = Path(__file__).resolve().parents[2]
    for name in ("train_fib25.yaml", "train_gala_tiny.yaml"):
        config = load(repo / "configs" / name, TrainConfig)
        assert config.offsets[:3] == [(-1, 0, 0), (0, -1, 0), (0, 0, -1)]
