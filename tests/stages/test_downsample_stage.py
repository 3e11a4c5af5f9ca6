"""The downsample stage: block-wise pyramids equal whole-volume ones, NGFF metadata, lifecycle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from funlib.geometry import Coordinate
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader

from blockwise.config import parse_config
from blockwise.downsample import downsample_mean
from blockwise.errors import ConfigError
from blockwise.ngff import level_transform, read_multiscales
from blockwise.plan import describe_plan
from blockwise.run_context import RunContext
from blockwise.runner import reset, run
from blockwise.stages import active_stages, get_stage
from blockwise.stages.downsample import MULTISCALE_GROUP, NAME, block_shape_vx, num_levels

VOXEL_SIZE = (10, 8, 8)
THRESHOLDS = [0.4, 0.6]


def slow_mode(labels: np.ndarray, factor: tuple[int, int, int]) -> np.ndarray:
    """The most frequent label of each box (ties: the smallest), one box at a time."""
    out_shape = tuple(s // f for s, f in zip(labels.shape, factor, strict=True))
    out = np.zeros(out_shape, labels.dtype)
    for index in np.ndindex(*out_shape):
        box = labels[tuple(slice(i * f, (i + 1) * f) for i, f in zip(index, factor, strict=True))]
        values, counts = np.unique(box, return_counts=True)
        out[index] = values[np.argmax(counts)]  # unique sorts: the first maximum is the smallest
    return out


def write_affinities(path: Path, shape: tuple[int, int, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root = zarr.open_group(str(path), mode="w")
    affs = root.create_dataset("affs", data=rng.random((3, *shape)).astype(np.float32))
    affs.attrs["resolution"] = list(VOXEL_SIZE)
    affs.attrs["offset"] = [100, 80, 160]
    return path


def base_config(tmp_path: Path, affs: Path, **sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "downsample_test",
        "run_dir": str(tmp_path / "run"),
        "inputs": {"affinities": {"file": str(affs), "dataset": "affs"}},
        "output": {"chunk_shape_vx": [8, 8, 8]},
        "extract_fragments": {"block_shape_vx": [16, 16, 16], "context_vx": [2, 2, 2]},
        "agglomerate": {"context_vx": [2, 2, 2]},
        "segments": {"thresholds": THRESHOLDS},
        "downsample": {"levels": 2},
        "execution": {"num_workers": 1},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return data


def fill_outputs(ctx: RunContext, seed: int) -> dict[str, np.ndarray]:
    """Random labels with many ties in every output the stage reads."""
    rng = np.random.default_rng(seed)
    shape = tuple(ctx.data_roi.shape / ctx.voxel_size)
    written = {}
    for name, volume in [("fragments", ctx.fragments)] + [
        (ctx.layout.segmentation_dataset(t), ctx.segmentation(t)) for t in THRESHOLDS
    ]:
        labels = rng.integers(0, 4, size=shape).astype(np.uint64) * np.uint64(2**40)
        volume.write(ctx.data_roi, labels)
        written[name] = labels
    return written


def run_stage_blocks(ctx: RunContext) -> int:
    """Every block of the downsample stage, in a shuffled order, without a scheduler."""
    stage = get_stage(NAME)
    tiling = stage.tiling(ctx)
    assert tiling.grid is not None
    rois = list(tiling.grid.write_rois())
    order = np.random.default_rng(1).permutation(len(rois))
    with stage.setup(ctx) as process:
        for i in order:
            process(tiling.block(NAME, rois[i], rois[i]))
    return len(rois)


@pytest.mark.parametrize("shape", [(37, 70, 90), (32, 64, 64)])
def test_blockwise_pyramid_equals_whole_volume_mode(tmp_path: Path, shape) -> None:
    affs = write_affinities(tmp_path / "affs.zarr", shape)
    cfg = parse_config(base_config(tmp_path, affs))
    ctx = RunContext(cfg)
    written = fill_outputs(ctx, seed=sum(shape))
    assert block_shape_vx(ctx) == Coordinate(32, 32, 32)  # chunk 8 x 2**2
    assert run_stage_blocks(ctx) > 1
    root = zarr.open_group(str(ctx.output_path), mode="r")
    for name, labels in written.items():
        expected = labels
        for k in range(3):
            level = root[f"{MULTISCALE_GROUP}/{name}/s{k}"]
            assert np.array_equal(level[...], expected), (name, k)
            assert level.chunks == (8, 8, 8)
            assert level._dimension_separator == "/"
            expected = slow_mode(expected, (2, 2, 2))
        levels = read_multiscales(root[f"{MULTISCALE_GROUP}/{name}"])
        assert len(levels) == 3
        for k, level in enumerate(levels):
            scale, translation = level_transform(k, VOXEL_SIZE, (100, 80, 160), (2, 2, 2))
            assert list(level.scale) == scale and list(level.translation) == translation
            assert level.offset == (100.0, 80.0, 160.0)


def test_predicted_affinities_get_a_mean_pyramid_read_by_ome_zarr(tmp_path: Path) -> None:
    raw = tmp_path / "raw.zarr"
    root = zarr.open_group(str(raw), mode="w")
    root.create_dataset("raw", data=np.zeros((36, 40, 48), np.uint8)).attrs["resolution"] = [
        10,
        8,
        8,
    ]
    data = base_config(tmp_path, raw, downsample={"levels": 1, "factor": [1, 2, 2]})
    data["inputs"] = {"raw": {"file": str(raw), "dataset": "raw"}}
    data["predict"] = {
        "checkpoint": str(tmp_path / "never_opened.pt"),
        "unet": {"num_fmaps": 3, "fmap_inc_factor": 2, "downsample_factors": [[2, 2, 2]]},
        "input_shape_vx": [28, 28, 28],
        "device": "cpu",
    }
    ctx = RunContext(parse_config(data))
    affs = np.random.default_rng(3).integers(0, 256, (3, *ctx.data_roi.shape / ctx.voxel_size))
    ctx.predicted_affinities.write(ctx.data_roi, affs.astype(np.uint8))
    fill_outputs(ctx, seed=0)
    run_stage_blocks(ctx)
    path = ctx.output_path / MULTISCALE_GROUP / "affinities"
    image = next(iter(Reader(parse_url(str(path)))()))
    scales = [t[0]["scale"] for t in image.metadata["coordinateTransformations"]]
    assert scales == [[1.0, 10.0, 8.0, 8.0], [1.0, 10.0, 16.0, 16.0]]
    assert np.array_equal(np.asarray(image.data[0]), affs)
    assert np.array_equal(
        np.asarray(image.data[1]), downsample_mean(affs.astype(np.uint8), (1, 2, 2))
    )


def test_levels_that_do_not_fit_are_a_config_error_before_any_write(tmp_path: Path) -> None:
    affs = write_affinities(tmp_path / "affs.zarr", (64, 64, 64))
    cfg = parse_config(base_config(tmp_path, affs, downsample={"levels": 7}))
    with pytest.raises(ConfigError, match=r"downsample.levels 7: .*level 7 would be \(0, 0, 0\)"):
        run(cfg, multiprocessing=False, progress=False)
    assert not (tmp_path / "run").exists()
    # 64^3 chunks x 2**4 = 1024^3 voxels per block: refused, naming the bound
    data = base_config(
        tmp_path, affs, downsample={"levels": 4}, output={"chunk_shape_vx": [64] * 3}
    )
    data["extract_fragments"]["block_shape_vx"] = [64, 64, 64]
    with pytest.raises(ConfigError, match=r"needs blocks of 1073741824 voxels.*at most 3 levels"):
        run(parse_config(data), multiprocessing=False, progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match=r"factor \[1, 1, 1\] downsamples nothing"):
        parse_config(base_config(tmp_path, affs, downsample={"factor": [1, 1, 1]}))


def test_default_levels_stop_before_a_level_smaller_than_a_chunk(tmp_path: Path) -> None:
    affs = write_affinities(tmp_path / "affs.zarr", (32, 64, 64))
    data = base_config(tmp_path, affs)
    del data["downsample"]
    ctx = RunContext(parse_config(data))
    # 32 -> 16 -> 8 -> 4 (< one chunk of 8): two coarser levels
    assert num_levels(ctx) == 3
    data["downsample"] = {"enabled": False}
    assert NAME not in [s.name for s in active_stages(parse_config(data))]


def test_pipeline_run_plan_and_reset(tmp_path: Path) -> None:
    affs = write_affinities(tmp_path / "affs.zarr", (32, 48, 64), seed=5)
    cfg = parse_config(base_config(tmp_path, affs))
    names = [s.name for s in active_stages(cfg)]
    assert names[names.index("relabel") + 1] == NAME
    assert f"{NAME}" in describe_plan(cfg)
    result = run(cfg, multiprocessing=False, progress=False)
    assert result.ok, result.summary()
    summary = next(s for s in result.stages if s.name == NAME)
    assert summary.total == summary.done == 4  # 32 x 48 x 64 in blocks of 32^3: 1 x 2 x 2
    root = zarr.open_group(str(cfg.run_dir / "output.zarr"), mode="r")
    for name in ["fragments", *(f"segmentation/threshold_{t:.4f}" for t in THRESHOLDS)]:
        expected = root[name][...]
        for k in range(3):
            assert np.array_equal(root[f"{MULTISCALE_GROUP}/{name}/s{k}"][...], expected)
            expected = slow_mode(expected, (2, 2, 2))
    assert reset(cfg, NAME) == [NAME]
    assert MULTISCALE_GROUP not in zarr.open_group(str(cfg.run_dir / "output.zarr"), mode="r")
    assert "fragments" in zarr.open_group(str(cfg.run_dir / "output.zarr"), mode="r")
    again = run(cfg, multiprocessing=False, progress=False)
    assert next(s for s in again.stages if s.name == NAME).done == 4
    assert next(s for s in again.stages if s.name == "relabel").done == 0


@pytest.mark.slow
def test_two_worker_processes_write_the_whole_volume_pyramid(tmp_path: Path) -> None:
    affs = write_affinities(tmp_path / "affs.zarr", (32, 64, 96), seed=7)
    data = base_config(tmp_path, affs, downsample={"levels": 1})
    data["execution"] = {"num_workers": 2}
    cfg = parse_config(data)
    result = run(cfg, multiprocessing=True, progress=False)
    assert result.ok, result.summary()
    stage = next(s for s in result.stages if s.name == NAME)
    assert stage.done == stage.total == 2 * 4 * 6  # 32 x 64 x 96 in blocks of 16 (8 x 2)
    root = zarr.open_group(str(cfg.run_dir / "output.zarr"), mode="r")
    for name in ["fragments", *(f"segmentation/threshold_{t:.4f}" for t in THRESHOLDS)]:
        full = root[name][...]
        assert np.array_equal(root[f"{MULTISCALE_GROUP}/{name}/s0"][...], full)
        coarse = root[f"{MULTISCALE_GROUP}/{name}/s1"][...]
        assert np.array_equal(coarse, slow_mode(full, (2, 2, 2)))
