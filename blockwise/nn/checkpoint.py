"""U-Net checkpoints: one torch file holding the weights and what they mean.

A checkpoint is a ``torch.save``d dict::

    {"format": "blockwise-unet-1",
     "unet": UNetConfig as JSON-compatible values,
     "offsets": [[dz, dy, dx], ...],     # one per output channel, voxels
     "iteration": int,                   # training iterations done
     "model_state": {name: tensor},      # UNet.state_dict()
     "optimizer_state": dict | None,     # optimizer.state_dict(), to resume training
     "extra": dict}                      # free-form: loss, learning rate, ...

It holds only tensors and plain Python values, so it loads with torch's
``weights_only=True`` (no pickled code is ever run). Files are written to a
temporary file in the same folder and renamed into place, so a reader sees
either the old or the new checkpoint, never half a file. Prediction keys its
done markers by :func:`file_sha256`, so a replaced checkpoint invalidates them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from blockwise.config import UNetConfig, Vec3
from blockwise.errors import CheckpointError
from blockwise.nn.unet import UNet

logger = logging.getLogger(__name__)

FORMAT = "blockwise-unet-1"
_KEYS = ("format", "unet", "offsets", "iteration", "model_state", "optimizer_state", "extra")
_PLAIN = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        unet: the architecture the weights belong to.
        offsets: affinity offsets (z, y, x voxels), one per output channel.
        iteration: training iterations done when it was written.
        model_state: the U-Net's state dict (tensors on the CPU).
        optimizer_state: the optimizer's state dict, or None.
        extra: free-form values saved with it (empty if none).
    """

    unet: UNetConfig
    offsets: list[Vec3]
    iteration: int
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None
    extra: dict[str, Any]


def _check_plain(value: Any, where: str) -> None:
    """Raise CheckpointError unless ``value`` is made of tensors and plain values only."""
    # exact types: subclasses such as numpy.float64 (a float) pickle as their own
    # class, which weights_only loading refuses
    if type(value) in _PLAIN or isinstance(value, torch.Tensor):
        return
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            if type(key) not in (str, int):
                raise CheckpointError(
                    f"{where} has a key {key!r} of type {type(key).__name__}; checkpoints "
                    "hold str or int keys only, so they load with weights_only=True"
                )
            _check_plain(item, f"{where}[{key!r}]")
        return
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    raise CheckpointError(
        f"{where} is a {type(value).__name__}; checkpoints hold tensors, str, int, float, "
        "bool, None, lists, tuples and dicts only, so they load with weights_only=True "
        "(convert numpy values with .tolist() or torch.from_numpy)"
    )


def _offsets(offsets: Any, source: str) -> list[Vec3]:
    try:
        result = [tuple(int(v) for v in offset) for offset in offsets]
    except (TypeError, ValueError):
        result = []
    if not result or any(len(offset) != 3 for offset in result):
        raise CheckpointError(
            f"{source}: offsets must be a non-empty list of (z, y, x) integer triples, "
            f"got {offsets!r}"
        )
    return [(o[0], o[1], o[2]) for o in result]


def save_checkpoint(
    path: str | Path,
    model: UNet,
    unet: UNetConfig,
    offsets: list[tuple[int, int, int]],
    iteration: int,
    optimizer_state: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint atomically (temporary file in the same folder, then rename).

    Args:
        path: the checkpoint file to write (replaced if it exists).
        model: the network; its state dict is saved (moved to the CPU).
        unet: its architecture.
        offsets: affinity offsets (z, y, x voxels), one per output channel.
        iteration: training iterations done.
        optimizer_state: ``optimizer.state_dict()``, to resume training.
        extra: free-form plain values (loss, learning rate, ...).

    Raises:
        CheckpointError: if the model's outputs do not match the offsets, the
            architecture does not match the model, or ``optimizer_state`` /
            ``extra`` hold values other than tensors and plain Python values.
    """
    path = Path(path)
    offsets = _offsets(offsets, str(path))
    if model.num_outputs != len(offsets):
        raise CheckpointError(
            f"{path}: the model has {model.num_outputs} output channels but {len(offsets)} "
            "offsets were given; there must be one offset per output channel"
        )
    if model.config != unet:
        raise CheckpointError(
            f"{path}: the architecture given differs from the model's: "
            f"{_differences(unet, model.config, 'given', 'model')}"
        )
    if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
        raise CheckpointError(f"{path}: iteration must be an int >= 0, got {iteration!r}")
    _check_plain(optimizer_state, "optimizer_state")
    _check_plain(extra, "extra")
    payload = {
        "format": FORMAT,
        "unet": unet.model_dump(mode="json"),
        "offsets": [list(offset) for offset in offsets],
        "iteration": iteration,
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer_state": optimizer_state,
        "extra": dict(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    logger.info("wrote checkpoint %s (iteration %d)", path, iteration)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises:
        CheckpointError: if the file is missing, not a torch file, not a
            blockwise checkpoint (or of another format version), or holds an
            invalid architecture or offsets.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        raise CheckpointError(
            f"{path} is not a blockwise checkpoint (torch.load failed: {e}); "
            "point at a file written by `blockwise train`"
        ) from e
    if not isinstance(payload, dict) or "format" not in payload:
        raise CheckpointError(
            f"{path} is a torch file but not a blockwise checkpoint (expected a dict with "
            f"'format': {FORMAT!r}, got {type(payload).__name__}"
            + (f" with keys {sorted(map(str, payload))[:8]}" if isinstance(payload, dict) else "")
            + ")"
        )
    if payload["format"] != FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {payload['format']!r}; this version of blockwise "
            f"reads {FORMAT!r}"
        )
    missing = [key for key in _KEYS if key not in payload]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks the keys {missing}")
    try:
        unet = UNetConfig.model_validate(payload["unet"])
    except ValidationError as e:
        raise CheckpointError(f"{path}: the stored architecture is invalid: {e}") from e
    state = payload["model_state"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: model_state is not a dict of tensors")
    iteration = payload["iteration"]
    if not isinstance(iteration, int):
        raise CheckpointError(f"{path}: iteration is {iteration!r}, expected an int")
    return Checkpoint(
        unet=unet,
        offsets=_offsets(payload["offsets"], str(path)),
        iteration=iteration,
        model_state=state,
        optimizer_state=payload["optimizer_state"],
        extra=dict(payload["extra"] or {}),
    )


def _differences(a: UNetConfig, b: UNetConfig, name_a: str, name_b: str) -> str:
    dump_a, dump_b = a.model_dump(mode="json"), b.model_dump(mode="json")
    return "; ".join(
        f"{key}: {name_a} {dump_a.get(key)!r}, {name_b} {dump_b.get(key)!r}"
        for key in sorted(set(dump_a) | set(dump_b))
        if dump_a.get(key) != dump_b.get(key)
    )


def model_from_checkpoint(
    path: str | Path,
    expected_unet: UNetConfig | None = None,
    expected_offsets: list[tuple[int, int, int]] | None = None,
    device: str | torch.device = "cpu",
) -> UNet:
    """Build the U-Net stored in a checkpoint, checked against the run config.

    Args:
        path: the checkpoint file.
        expected_unet: the architecture the config names; must equal the checkpoint's.
        expected_offsets: the affinity offsets the config names; must equal the checkpoint's.
        device: where to put the model.

    Returns:
        The model with the checkpoint's weights, in eval mode, on ``device``.

    Raises:
        CheckpointError: if the file is missing or not a checkpoint, the
            architecture or offsets differ from the expected ones (naming each
            differing key with both values), or the weights do not fit the
            architecture (naming the first mismatching tensor and both shapes).
    """
    path = Path(path)
    checkpoint = load_checkpoint(path)
    if expected_unet is not None and expected_unet != checkpoint.unet:
        raise CheckpointError(
            f"{path}: the config's U-Net architecture differs from the checkpoint's: "
            f"{_differences(expected_unet, checkpoint.unet, 'config', 'checkpoint')}; "
            "copy the checkpoint's architecture into the config or use a matching checkpoint"
        )
    if expected_offsets is not None:
        expected = _offsets(expected_offsets, "the config's offsets")
        if expected != checkpoint.offsets:
            raise CheckpointError(
                f"{path}: the config's affinity offsets {[list(o) for o in expected]} differ "
                f"from the checkpoint's {[list(o) for o in checkpoint.offsets]}; the network "
                "predicts the offsets it was trained on"
            )
    model = UNet(checkpoint.unet, len(checkpoint.offsets))
    wanted = model.state_dict()
    stored = checkpoint.model_state
    for name, tensor in wanted.items():
        if name not in stored:
            raise CheckpointError(
                f"{path}: the weights lack tensor {name!r} (shape {list(tensor.shape)}) of the "
                "stored architecture"
            )
        if tuple(stored[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{path}: tensor {name!r} has shape {list(stored[name].shape)} in the checkpoint "
                f"but {list(tensor.shape)} in the stored architecture; the file is inconsistent"
            )
    unexpected = [name for name in stored if name not in wanted]
    if unexpected:
        raise CheckpointError(
            f"{path}: the weights hold tensors the stored architecture does not have: "
            f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
    model.load_state_dict(stored, strict=True)
    model.eval()
    return model.to(device)


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """SHA-256 of a file's content (hex), read in chunks of ``chunk_bytes``.

    Raises:
        CheckpointError: if the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
