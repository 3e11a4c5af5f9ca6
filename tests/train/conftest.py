"""Fixtures for the training tests: a tiny config on the gala crop, synthetic volumes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from blockwise.config import validate_mapping
from blockwise.train.config import TrainConfig

from datafiles import require_data

# U-Net with 4 feature maps and one downsampling level: context 8 voxels per
# side, valid inputs 16 + 2n (input 24 -> output 8, 36 -> 20)
TINY_UNET: dict[str, Any] = {
    "num_fmaps": 4,
    "fmap_inc_factor": 2,
    "downsample_factors": [[2, 2, 2]],
}


def _tiny_mapping(raw: Path, labels: Path | None = None, **overrides: Any) -> dict[str, Any]:
    """A tiny training config mapping reading ``raw``/``labels`` (datasets raw, labels)."""
    mapping: dict[str, Any] = {
        "name": "tiny",
        "train_dir": "/nonexistent",
        "data": {
            "raw": {"file": str(raw), "dataset": "raw"},
            "labels": {"file": str(labels or raw), "dataset": "labels"},
            "voxel_size": [10, 10, 10],
        },
        "unet": TINY_UNET,
        "input_shape_vx": [24, 24, 24],
        "iterations": 4,
        "checkpoint_every": 2,
        "optimizer": {"lr": 1e-3},
        "augment": {"control_point_spacing_nm": [100, 100, 100], "jitter_sigma_nm": [10, 10, 10]},
        "seed": 3,
        "num_threads": 1,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(mapping.get(key), dict):
            mapping[key] = {**mapping[key], **value}
        else:
            mapping[key] = value
    return mapping


def _tiny_config(raw: Path, train_dir: Path, **overrides: Any) -> TrainConfig:
    return validate_mapping(_tiny_mapping(raw, train_dir=str(train_dir), **overrides), TrainConfig)


@pytest.fixture
def tiny_config() -> Callable[..., TrainConfig]:
    """``tiny_config(raw_file, train_dir, **overrides)``: a validated tiny config."""
    return _tiny_config


@pytest.fixture
def gala() -> Path:
    """The gala FIB-SEM crop (raw, labels 50 x 100 x 200)."""
    return require_data("gala_fib_train.h5")


def _write_h5(path: Path, **arrays: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        for name, data in arrays.items():
            f.create_dataset(name, data=data)
    return path


def _blob_volume(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=np.uint64)
    cells = [max(1, s // 6) for s in shape]
    z, y, x = np.indices(shape)
    ids = (z // cells[0]) * 10_000 + (y // cells[1]) * 100 + (x // cells[2]) + 1
    labels[...] = ids
    raw = rng.integers(140, 220, size=shape).astype(np.uint8)
    for axis in range(3):
        edge = np.diff(ids, axis=axis, prepend=-1) != 0
        raw[edge] = rng.integers(10, 60, size=int(edge.sum())).astype(np.uint8)
    return raw, labels


@pytest.fixture
def write_h5() -> Callable[..., Path]:
    """``write_h5(path, **arrays)``: an HDF5 file with the given datasets."""
    return _write_h5


@pytest.fixture
def blob_volume() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """``blob_volume(shape, seed)``: seeded raw (uint8) and labels (uint64) of a
    grid of boxes with dark one-voxel borders."""
    return _blob_volume


@pytest.fixture
def tiny_mapping() -> Callable[..., dict[str, Any]]:
    """``tiny_mapping(raw_file, labels_file=None, **overrides)``: a tiny config mapping."""
    return _tiny_mapping
