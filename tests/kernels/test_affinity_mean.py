"""mean_affinity against numpy's float32 mean of affs / 255, byte for byte."""

from __future__ import annotations

import importlib.machinery
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from numpy.typing import NDArray

from blockwise.kernels import _affinity_mean
from blockwise.kernels.affinity_mean import mean_affinity

REPO = Path(__file__).resolve().parents[2]


def float_path(affs: NDArray[np.uint8]) -> NDArray[np.float32]:
    """What extract_fragments computed before: a float32 copy, then numpy's mean."""
    as_float = affs.astype(np.float32)
    np.divide(as_float, np.float32(255.0), out=as_float)
    return as_float.mean(axis=0, dtype=np.float32)


def test_compiled_kernel_is_loaded() -> None:
    assert _affinity_mean.__file__ is not None
    assert _affinity_mean.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


@pytest.mark.parametrize("channels", [1, 2, 3, 4, 6, 9, 12])
def test_bytes_equal_numpy_on_every_value_combination_and_random_volumes(channels: int) -> None:
    rng = np.random.default_rng(channels)
    affs = rng.integers(0, 256, size=(channels, 17, 23, 29), dtype=np.uint8)
    # every pair of values in the first two channels somewhere
    if channels >= 2:
        pairs = np.stack(np.meshgrid(np.arange(256), np.arange(256), indexing="ij"))
        affs = np.concatenate(
            [
                affs.reshape(channels, -1),
                np.concatenate(
                    [pairs.reshape(2, -1), rng.integers(0, 256, (channels - 2, 256 * 256))]
                ).astype(np.uint8),
            ],
            axis=1,
        ).reshape(channels, 1, 1, -1)
    expected = float_path(affs)
    got = mean_affinity(affs)
    assert got.dtype == np.float32 and got.shape == affs.shape[1:]
    assert got.tobytes() == expected.tobytes()


def test_strided_views_and_empty_volumes() -> None:
    rng = np.random.default_rng(7)
    big = rng.integers(0, 256, size=(5, 12, 14, 16), dtype=np.uint8)
    for view in (big[:3, 2:9, 1:13:2, ::3], big[::2], big[1:4, :, ::-1]):
        assert mean_affinity(view).tobytes() == float_path(view).tobytes()
    for shape in ((3, 0, 4, 5), (3, 2, 0, 1)):
        empty = np.zeros(shape, np.uint8)
        assert mean_affinity(empty).shape == shape[1:]


@pytest.mark.parametrize(
    ("affs", "message"),
    [
        (np.zeros((3, 4, 5, 6), np.float32), "4D uint8 numpy array, received 4D float32"),
        (np.zeros((4, 5, 6), np.uint8), "received 3D uint8"),
        (np.zeros((0, 4, 5, 6), np.uint8), r"at least one channel, received shape \(0, 4, 5, 6\)"),
        ([[1, 2]], "received list"),
    ],
)
def test_bad_input_is_refused_with_what_was_expected(affs: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mean_affinity(affs)  # type: ignore[arg-type]


def test_fib25_affinities() -> None:
    folder = Path(os.environ.get("BLOCKWISE_DATA", REPO.parent / "shared" / "data"))
    path = folder / "fib25_baseline_affs.h5"
    if not path.exists():
        message = f"{path} is missing (set BLOCKWISE_DATA to the shared data folder)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    with h5py.File(path, "r") as f:
        affs = f["affs"][:, :100, :, :]
    assert mean_affinity(affs).tobytes() == float_path(affs).tobytes()
