"""Checkpoints: round trip, weights_only loading, atomic writes, clear mismatch errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from blockwise.config import UNetConfig
from blockwise.errors import CheckpointError
from blockwise.nn.architecture import valid_input_shape
from blockwise.nn.checkpoint import (
    FORMAT,
    file_sha256,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from blockwise.nn.unet import UNet, build_unet

UNET = UNetConfig(num_fmaps=2, fmap_inc_factor=2, downsample_factors=[(1, 2, 2)])
OFFSETS = [(-1, 0, 0), (0, -1, 0), (0, 0, -1)]


def trained_model(seed: int = 0) -> tuple[UNet, torch.optim.Optimizer]:
    """A model and an Adam optimizer after one step, so both have non-trivial state."""
    torch.manual_seed(seed)
    model = build_unet(UNET, len(OFFSETS))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    raw = torch.rand(1, 1, *valid_input_shape(UNET, (2, 4, 4)))
    model(raw).mean().backward()
    optimizer.step()
    return model, optimizer


def test_round_trip_restores_weights_offsets_iteration_and_optimizer(tmp_path: Path) -> None:
    model, optimizer = trained_model()
    path = tmp_path / "run" / "checkpoint.pt"
    save_checkpoint(
        path,
        model,
        UNET,
        OFFSETS,
        iteration=1234,
        optimizer_state=optimizer.state_dict(),
        extra={"loss": 0.25, "lr": 1e-3, "history": [1, 2, 3], "note": None},
    )
    checkpoint = load_checkpoint(path)
    assert checkpoint.unet == UNET
    assert checkpoint.offsets == OFFSETS
    assert checkpoint.iteration == 1234
    assert checkpoint.extra == {"loss": 0.25, "lr": 1e-3, "history": [1, 2, 3], "note": None}
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(checkpoint.model_state[name], tensor, atol=0, rtol=0)

    # the optimizer resumes from the saved state
    assert checkpoint.optimizer_state is not None
    resumed = torch.optim.Adam(build_unet(UNET, 3).parameters(), lr=1e-3)
    resumed.load_state_dict(checkpoint.optimizer_state)
    assert resumed.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]

    restored = model_from_checkpoint(path, expected_unet=UNET, expected_offsets=OFFSETS)
    assert not restored.training
    raw = torch.rand(1, 1, *valid_input_shape(UNET, (2, 4, 4)))
    with torch.no_grad():
        torch.testing.assert_close(restored(raw), model.eval()(raw), atol=0, rtol=0)
    # only the checkpoint is left in the folder: the temporary file was renamed
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]


def test_the_file_is_plain_data_that_loads_with_weights_only(tmp_path: Path) -> None:
    model, optimizer = trained_model()
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model, UNET, OFFSETS, 7, optimizer_state=optimizer.state_dict())
    payload = torch.load(path, weights_only=True)
    assert sorted(payload) == sorted(
        ["format", "unet", "offsets", "iteration", "model_state", "optimizer_state", "extra"]
    )
    assert payload["format"] == FORMAT == "blockwise-unet-1"
    assert payload["unet"] == UNET.model_dump(mode="json")
    assert payload["offsets"] == [list(o) for o in OFFSETS]
    assert payload["extra"] == {}


def test_extra_values_that_would_need_pickle_are_refused_before_writing(tmp_path: Path) -> None:
    model, _ = trained_model()
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model, UNET, OFFSETS, 1)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=r"extra\['curve'\] is a ndarray"):
        save_checkpoint(path, model, UNET, OFFSETS, 2, extra={"curve": np.zeros(3)})
    with pytest.raises(CheckpointError, match=r"optimizer_state\['x'\]\[0\] is a \w*Path"):
        save_checkpoint(path, model, UNET, OFFSETS, 2, optimizer_state={"x": [Path("a")]})
    # a numpy float is a float subclass but pickles as numpy's class
    with pytest.raises(CheckpointError, match=r"extra\['loss'\] is a float64"):
        save_checkpoint(path, model, UNET, OFFSETS, 2, extra={"loss": np.float64(0.5)})
    with pytest.raises(CheckpointError, match=r"has a key 3.0 of type float"):
        save_checkpoint(path, model, UNET, OFFSETS, 2, extra={3.0: 1})
    assert path.read_bytes() == before


def test_save_checks_outputs_architecture_and_iteration(tmp_path: Path) -> None:
    model, _ = trained_model()
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(CheckpointError, match="3 output channels but 2 offsets"):
        save_checkpoint(path, model, UNET, OFFSETS[:2], 1)
    other = UNET.model_copy(update={"num_fmaps": 3})
    with pytest.raises(CheckpointError, match="num_fmaps: given 3, model 2"):
        save_checkpoint(path, model, other, OFFSETS, 1)
    with pytest.raises(CheckpointError, match="iteration must be an int >= 0"):
        save_checkpoint(path, model, UNET, OFFSETS, -1)
    assert not path.exists()


def test_a_failed_write_leaves_the_old_checkpoint_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = trained_model()
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model, UNET, OFFSETS, 1)
    before = path.read_bytes()

    def crash(payload: object, file: object) -> None:
        file.write(b"half a checkpoint")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, UNET, OFFSETS, 2)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_missing_and_foreign_files_are_not_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        model_from_checkpoint(tmp_path / "nope.pt")

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a torch file" * 10)
    with pytest.raises(CheckpointError, match=r"garbage.pt is not a blockwise checkpoint"):
        load_checkpoint(garbage)

    bare = tmp_path / "state_dict.pt"
    torch.save(build_unet(UNET, 3).state_dict(), bare)
    with pytest.raises(CheckpointError, match="a torch file but not a blockwise checkpoint"):
        load_checkpoint(bare)

    future = tmp_path / "future.pt"
    torch.save({"format": "blockwise-unet-2"}, future)
    with pytest.raises(CheckpointError, match="format 'blockwise-unet-2'"):
        load_checkpoint(future)

    pickled = tmp_path / "pickled.pt"
    torch.save({"format": FORMAT, "extra": Path("x")}, pickled)
    with pytest.raises(CheckpointError, match="not a blockwise checkpoint"):
        load_checkpoint(pickled)


def test_architecture_mismatch_names_each_key_with_both_values(tmp_path: Path) -> None:
    model, _ = trained_model()
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model, UNET, OFFSETS, 1)
    config = UNET.model_copy(update={"num_fmaps": 4, "num_conv_passes": 3})
    with pytest.raises(CheckpointError) as e:
        model_from_checkpoint(path, expected_unet=config)
    message = str(e.value)
    assert "num_conv_passes: config 3, checkpoint 2" in message
    assert "num_fmaps: config 4, checkpoint 2" in message
    assert "fmap_inc_factor" not in message


def test_offset_mismatch_names_both_lists(tmp_path: Path) -> None:
    model, _ = trained_model()
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model, UNET, OFFSETS, 1)
    longer = [*OFFSETS, (0, 0, -3)]
    with pytest.raises(CheckpointError, match=r"\[0, 0, -3\]\] differ from the checkpoint's"):
        model_from_checkpoint(path, expected_offsets=longer)


def test_weights_that_do_not_fit_name_the_first_tensor_and_both_shapes(tmp_path: Path) -> None:
    model, _ = trained_model()
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model, UNET, OFFSETS, 1)
    payload = torch.load(path, weights_only=True)
    # the stored architecture claims 3 feature maps, the weights have 2
    payload["unet"]["num_fmaps"] = 3
    torch.save(payload, path)
    with pytest.raises(
        CheckpointError,
        match=r"tensor 'down.0.0.weight' has shape \[2, 1, 3, 3, 3\] in the "
        r"checkpoint but \[3, 1, 3, 3, 3\]",
    ):
        model_from_checkpoint(path)

    payload["unet"]["num_fmaps"] = 2
    del payload["model_state"]["head.bias"]
    payload["model_state"]["spare.weight"] = torch.zeros(1)
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"lack tensor 'head.bias' \(shape \[3\]\)"):
        model_from_checkpoint(path)


def test_file_sha256_is_the_content_hash_and_follows_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    model, _ = trained_model(seed=0)
    save_checkpoint(path, model, UNET, OFFSETS, 1)
    first = file_sha256(path)
    assert first == hashlib.sha256(path.read_bytes()).hexdigest()
    assert file_sha256(path, chunk_bytes=7) == first  # streamed in small pieces
    model2, _ = trained_model(seed=1)
    save_checkpoint(path, model2, UNET, OFFSETS, 1)
    assert file_sha256(path) != first
    with pytest.raises(CheckpointError, match="does not exist"):
        file_sha256(tmp_path / "nope.pt")
