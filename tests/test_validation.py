"""Silent acceptance made errors: each is refused before any work, naming what is wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import zarr

from blockwise.cli import main
from blockwise.config import DatasetConfig, parse_config
from blockwise.errors import ConfigError, InputError
from blockwise.plan import describe_plan
from blockwise.runner import run
from blockwise.volume import open_volume

SHAPE = (32, 64, 64)


def write_zarr(
    path: Path, name: str, data: np.ndarray, chunks: tuple[int, ...], **attrs: Any
) -> Path:
    """One array in a zarr container, with attributes."""
    root = zarr.open_group(str(path), mode="a")
    array = root.create_dataset(name, data=data, chunks=chunks, overwrite=True)
    array.attrs.update(attrs)
    return path


def random_affs(seed: int = 0, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).random((channels, *SHAPE)).astype(np.float32)


def config(tmp_path: Path, data: Path, **sections: Any) -> Any:
    base: dict[str, Any] = {
        "name": "validation",
        "run_dir": str(tmp_path / "run"),
        "inputs": {"affinities": {"file": str(data), "dataset": "affs"}},
        "output": {"chunk_shape_vx": [16, 16, 16]},
        "extract_fragments": {"block_shape_vx": [16, 32, 32], "context_vx": [2, 2, 2]},
        "agglomerate": {"context_vx": [2, 2, 2]},
        "execution": {"num_workers": 1},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_config(base)


def assert_refused(cfg: Any, error: type[Exception], pattern: str) -> None:
    """``run`` and ``plan`` both refuse, and nothing is written."""
    with pytest.raises(error, match=pattern):
        describe_plan(cfg)
    with pytest.raises(error, match=pattern):
        run(cfg, multiprocessing=False, progress=False)
    assert not cfg.run_dir.exists(), "a refused run must write nothing"


@pytest.fixture
def affs_file(tmp_path: Path) -> Path:
    return write_zarr(
        tmp_path / "in.zarr", "affs", random_affs(), (3, 16, 16, 16), resolution=[8, 8, 8]
    )


def test_config_voxel_size_contradicting_the_file_is_refused(
    tmp_path: Path, affs_file: Path
) -> None:
    cfg = config(tmp_path, affs_file, inputs={"voxel_size": [4, 8, 8]})
    assert_refused(
        cfg,
        InputError,
        r"in.zarr:affs states voxel size \[8, 8, 8\] nm \(attribute 'resolution'\) but the config "
        r"says \[4, 8, 8\]",
    )
    # agreeing with the file, or a file that states none, is fine
    agreeing = config(tmp_path, affs_file, inputs={"voxel_size": [8, 8, 8]})
    assert "data ROI" in describe_plan(agreeing)
    silent = write_zarr(tmp_path / "bare.zarr", "affs", random_affs(), (3, 16, 16, 16))
    assert open_volume(DatasetConfig(file=silent, dataset="affs"), (4, 8, 8)).voxel_size == (
        4,
        8,
        8,
    )


def test_affinity_offsets_contradicting_the_file_are_refused(tmp_path: Path) -> None:
    # a file whose channels are x, y, z (the reverse of the config's z, y, x)
    xyz = [[0, 0, -1], [0, -1, 0], [-1, 0, 0]]
    data = write_zarr(
        tmp_path / "in.zarr",
        "affs",
        random_affs(),
        (3, 16, 16, 16),
        resolution=[8, 8, 8],
        offsets=xyz,
    )
    cfg = config(tmp_path, data)
    assert_refused(
        cfg,
        InputError,
        r"state offsets \[\[0, 0, -1\], \[0, -1, 0\], \[-1, 0, 0\]\] \(attribute 'offsets'\) but "
        r"the config's inputs.offsets are \[\[-1, 0, 0\], \[0, -1, 0\], \[0, 0, -1\]\]",
    )
    zyx = write_zarr(
        tmp_path / "zyx.zarr",
        "affs",
        random_affs(),
        (3, 16, 16, 16),
        resolution=[8, 8, 8],
        neighborhood=[[-1, 0, 0], [0, -1, 0], [0, 0, -1]],
    )
    assert "data ROI" in describe_plan(config(tmp_path, zyx))


def test_an_evaluation_roi_off_the_voxel_grid_is_refused(tmp_path: Path) -> None:
    labels = np.random.default_rng(1).integers(1, 5, SHAPE).astype(np.uint64)
    data = write_zarr(
        tmp_path / "in.zarr", "affs", random_affs(), (3, 16, 16, 16), resolution=[8, 8, 8]
    )
    write_zarr(data, "labels", labels, (16, 16, 16), resolution=[8, 8, 8])
    cfg = config(
        tmp_path,
        data,
        inputs={"ground_truth": {"file": str(data), "dataset": "labels"}},
        evaluate={"roi": {"offset_nm": [4, 0, 0], "shape_nm": [100, 256, 256]}},
    )
    assert_refused(
        cfg,
        ConfigError,
        r"evaluate.roi .* is not aligned to the voxels .* Use offset_nm \[0, 0, 0\] and "
        r"shape_nm \[104, 256, 256\]",
    )
    aligned = config(
        tmp_path,
        data,
        inputs={"ground_truth": {"file": str(data), "dataset": "labels"}},
        evaluate={"roi": {"offset_nm": [8, 0, 0], "shape_nm": [96, 256, 256]}},
    )
    assert "evaluate: 1 block" in describe_plan(aligned)


def test_two_thresholds_naming_one_dataset_are_refused(tmp_path: Path, affs_file: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"thresholds 0.3 and 0.30001 both write .*threshold_0.3000"
    ):
        config(tmp_path, affs_file, segments={"thresholds": [0.3, 0.30001, 0.5]})
    assert config(
        tmp_path, affs_file, segments={"thresholds": [0.3, 0.3001]}
    ).segments.thresholds == [
        0.3,
        0.3001,
    ]


def test_an_all_zero_mask_or_affinity_volume_is_refused(tmp_path: Path) -> None:
    data = write_zarr(
        tmp_path / "in.zarr", "affs", random_affs(), (3, 16, 16, 16), resolution=[8, 8, 8]
    )
    write_zarr(data, "zero_mask", np.zeros(SHAPE, np.uint8), (16, 16, 16), resolution=[8, 8, 8])
    write_zarr(
        data, "zero_affs", np.zeros((3, *SHAPE), np.float32), (3, 16, 16, 16), resolution=[8, 8, 8]
    )
    masked = config(tmp_path, data, inputs={"mask": {"file": str(data), "dataset": "zero_mask"}})
    assert_refused(masked, InputError, r"inputs.mask .*zero_mask is zero everywhere")
    zero = config(
        tmp_path, data, inputs={"affinities": {"file": str(data), "dataset": "zero_affs"}}
    )
    assert_refused(zero, InputError, r"inputs.affinities .*zero_affs is zero everywhere")
    # a contiguous HDF5 mask is scanned in pieces, with the same result
    h5_mask = tmp_path / "mask.h5"
    with h5py.File(h5_mask, "w") as f:
        f.create_dataset("mask", data=np.zeros(SHAPE, np.uint8)).attrs["resolution"] = [8, 8, 8]
    hdf5 = config(tmp_path, data, inputs={"mask": {"file": str(h5_mask), "dataset": "mask"}})
    assert_refused(hdf5, InputError, r"inputs.mask .*mask.h5:mask is zero everywhere")
    # one non-zero voxel in the last chunk is enough (the scan does not stop early wrongly)
    mask = np.zeros(SHAPE, np.uint8)
    mask[-1, -1, -1] = 1
    write_zarr(data, "one_voxel", mask, (16, 16, 16), resolution=[8, 8, 8])
    one = config(tmp_path, data, inputs={"mask": {"file": str(data), "dataset": "one_voxel"}})
    assert "data ROI" in describe_plan(one)


def test_synth_affinities_keeps_an_existing_array_without_overwrite(tmp_path: Path) -> None:
    labels = tmp_path / "labels.h5"
    with h5py.File(labels, "w") as f:
        f.create_dataset("labels", data=np.random.default_rng(2).integers(1, 4, (8, 16, 16)))
    out = tmp_path / "synth.zarr"
    assert main(["synth-affinities", str(labels), str(out), "--seed", "1"]) == 0
    before = zarr.open_group(str(out), mode="r")["affs"][:]
    assert main(["synth-affinities", str(labels), str(out), "--seed", "2"]) == 2
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["affs"][:], before)
    assert main(["synth-affinities", str(labels), str(out), "--seed", "2", "--overwrite"]) == 0
    assert not np.array_equal(zarr.open_group(str(out), mode="r")["affs"][:], before)


def test_synth_affinities_refusal_names_the_arrays(tmp_path: Path) -> None:
    from blockwise.synthetic import synthesize_affinities_file

    labels = tmp_path / "labels.h5"
    with h5py.File(labels, "w") as f:
        f.create_dataset("labels", data=np.ones((4, 8, 8), np.uint32))
    out = tmp_path / "synth.zarr"
    synthesize_affinities_file(labels, "labels", out, seed=0)
    with pytest.raises(InputError, match=r"already holds \['affs', 'labels'\]; pass --overwrite"):
        synthesize_affinities_file(labels, "labels", out, seed=0)


@pytest.mark.parametrize(
    ("value", "pattern"),
    [(np.nan, r"hold 1 NaN or inf value\(s\)"), (1.5, r"must lie in \[0, 1\].* to 1.5")],
)
def test_plan_samples_affinities_for_nan_and_range(
    tmp_path: Path, value: float, pattern: str
) -> None:
    affs = random_affs()
    affs[1, 20, 50, 40] = value  # chunk (0, 1, 3, 2) of a (3, 16, 16, 16) grid
    data = write_zarr(tmp_path / "in.zarr", "affs", affs, (3, 16, 16, 16), resolution=[8, 8, 8])
    cfg = config(tmp_path, data)
    with pytest.raises(InputError, match=pattern) as refused:
        describe_plan(cfg)
    assert str(data / "affs" / "0.1.3.2") in str(refused.value)
    assert not cfg.run_dir.exists()
    clean = write_zarr(
        tmp_path / "clean.zarr", "affs", random_affs(), (3, 16, 16, 16), resolution=[8, 8, 8]
    )
    text = describe_plan(config(tmp_path, clean))
    assert "32 sampled chunk(s) finite and in [0, 1] (of 32)" in text


def test_plan_sampling_spreads_over_a_large_grid(tmp_path: Path) -> None:
    from blockwise.run_context import RunContext
    from blockwise.volume import sample_chunk_rois

    data = write_zarr(
        tmp_path / "in.zarr", "affs", random_affs(), (3, 4, 8, 8), resolution=[8, 8, 8]
    )
    ctx = RunContext(config(tmp_path, data))
    rois = sample_chunk_rois(ctx.affinities, ctx.data_roi, 10)
    assert len(rois) == 10 and len({str(r) for r in rois}) == 10
    # first and last chunks of the 8 x 8 x 8 grid are among them
    assert rois[0].begin == (0, 0, 0) and rois[-1].end == ctx.data_roi.end
