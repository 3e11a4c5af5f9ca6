"""The predict stage: padding, tiling on the network's lattice, whole = parts, bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
import zarr
from funlib.geometry import Coordinate, Roi

from blockwise.config import UNetConfig, parse_config
from blockwise.errors import CheckpointError, ConfigError, InputError
from blockwise.nn.architecture import context_vx, normalize_raw, output_shape
from blockwise.nn.checkpoint import save_checkpoint
from blockwise.nn.unet import build_unet
from blockwise.run_context import RunContext
from blockwise.runner import prepare, run
from blockwise.stages import get_stage, stage_hash
from blockwise.stages.predict import read_padded, setup, tile_rois
from blockwise.volume import Volume

from datafiles import REPO, require_data

TINY = UNetConfig(num_fmaps=3, fmap_inc_factor=2, downsample_factors=[(2, 2, 2)])
OFFSETS = [(-1, 0, 0), (0, -1, 0), (0, 0, -1)]
CUDA = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    ),
]


def write_checkpoint(path: Path, unet: UNetConfig = TINY, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = build_unet(unet, len(OFFSETS))
    save_checkpoint(path, model, unet, OFFSETS, iteration=0)
    return path


def write_raw(path: Path, shape: tuple[int, int, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root = zarr.open_group(str(path), mode="w")
    raw = root.create_dataset("raw", data=rng.integers(0, 256, shape, dtype=np.uint8))
    raw.attrs["resolution"] = [10, 10, 10]
    return path


def predict_config(tmp_path: Path, raw: Path, checkpoint: Path, **predict: Any) -> Any:
    input_shape = predict.pop("input_shape_vx", [28, 28, 28])
    return parse_config(
        {
            "name": "predict_test",
            "run_dir": str(tmp_path / "run"),
            "inputs": {"raw": {"file": str(raw), "dataset": "raw"}},
            "predict": {
                "checkpoint": str(checkpoint),
                "unet": TINY.model_dump(mode="json"),
                "input_shape_vx": input_shape,
                "device": "cpu",
                "threads_per_worker": 1,
                **predict,
            },
            "output": {"chunk_shape_vx": [8, 8, 8]},
            "extract_fragments": {"block_shape_vx": [16, 16, 16], "context_vx": [2, 2, 2]},
            "agglomerate": {"context_vx": [2, 2, 2]},
            "segments": {"thresholds": [0.5]},
            "execution": {"num_workers": 2},
        }
    )


def volume_of(array: np.ndarray) -> Volume:
    vs = Coordinate(1, 1, 1)
    return Volume(
        Path("mem"), "a", vs, Roi((0, 0, 0), array.shape), None, np.dtype(array.dtype), array
    )


@pytest.mark.parametrize("mode", ["reflect", "zero"])
def test_read_padded_equals_numpy_pad(mode: str) -> None:
    rng = np.random.default_rng(1)
    array = rng.integers(0, 256, (5, 6, 7), dtype=np.uint8)
    volume = volume_of(array)
    pad = 4  # more than the smallest extent: reflection must wrap more than once
    padded = np.pad(array, pad, mode="reflect" if mode == "reflect" else "constant")
    for begin, shape in [
        ((-4, -4, -4), (13, 14, 15)),
        ((-2, 3, 1), (4, 6, 9)),
        ((1, 1, 1), (3, 3, 3)),
    ]:
        roi = Roi(begin, shape)
        expected = padded[
            tuple(slice(b + pad, b + pad + s) for b, s in zip(begin, shape, strict=True))
        ]
        assert np.array_equal(read_padded(volume, roi, mode), expected)


def test_read_padded_none_refuses_to_leave_the_volume() -> None:
    volume = volume_of(np.zeros((4, 4, 4), dtype=np.uint8))
    with pytest.raises(ConfigError, match="padding is none"):
        read_padded(volume, Roi((-1, 0, 0), (2, 2, 2)), "none")


def test_tiles_sit_on_the_lattice_of_the_data_origin() -> None:
    data = Roi((10, 0, 0), (100, 100, 100))
    tiles = tile_rois(Roi((50, 40, 0), (40, 40, 30)), data, Coordinate(20, 20, 20))
    assert len(tiles) == 2 * 2 * 2
    assert all((t.begin - data.begin) % 20 == Coordinate(0, 0, 0) for t in tiles)
    with pytest.raises(ValueError, match="lattice"):
        tile_rois(Roi((55, 40, 0), (40, 40, 30)), data, Coordinate(20, 20, 20))


def whole_volume_prediction(ctx: RunContext, padding: str) -> np.ndarray:
    """The network run once over the whole data ROI (its output shape is valid)."""
    assert ctx.raw is not None and ctx.network is not None
    context = ctx.network.context_vx * ctx.voxel_size
    raw = read_padded(ctx.raw, ctx.data_roi.grow(context, context), padding)
    model = build_unet(TINY, 3)
    model.load_state_dict(torch.load(ctx.config.predict.checkpoint)["model_state"])
    model.eval()
    with torch.inference_mode():
        out = model(torch.from_numpy(normalize_raw(raw))[None, None])
    return out[0].numpy()


@pytest.mark.parametrize("device", CUDA)
@pytest.mark.parametrize("padding", ["reflect", "zero"])
def test_blockwise_prediction_equals_one_piece(tmp_path: Path, padding: str, device: str) -> None:
    # output of a 28^3 input is 4^3 * k; the data (36, 40, 44) is not a whole number of
    # blocks, so border blocks are cut and their last tiles reach beyond the volume
    out = output_shape(TINY, (28, 28, 28))
    context = context_vx(TINY)
    whole_input = tuple(s + 2 * c for s, c in zip((36, 40, 44), context, strict=True))
    assert output_shape(TINY, whole_input) == (36, 40, 44)
    raw = write_raw(tmp_path / "raw.zarr", (36, 40, 44))
    cfg = predict_config(
        tmp_path,
        raw,
        write_checkpoint(tmp_path / "net.pt"),
        padding=padding,
        tiles_per_block=[2, 1, 2],
        batch_size=3,
        device=device,
    )
    ctx, stages = prepare(cfg)
    stage, tiling = stages[0]
    assert stage.name == "predict"
    assert Coordinate(tiling.block_shape_vx) == Coordinate(out) * Coordinate(2, 1, 2)
    grid = tiling.grid
    assert grid is not None
    with setup(ctx) as predict_block:
        for write_roi in grid.write_rois():
            context_nm = tiling.context_nm
            predict_block(
                tiling.block("predict", write_roi.grow(context_nm, context_nm), write_roi)
            )
    blockwise = ctx.predicted_affinities.array[:].astype(np.float64) / 255
    whole = whole_volume_prediction(ctx, padding)
    # uint8 quantisation (half a step) plus float tolerance
    assert np.max(np.abs(blockwise - whole)) <= 0.5 / 255 + 1e-4
    assert ctx.predicted_affinities.array.chunks == (3, *out)


@pytest.mark.slow
def test_pipeline_from_raw_two_workers_equals_in_process(tmp_path: Path) -> None:
    gala = require_data("gala_fib_train.h5")
    raw = tmp_path / "gala.zarr"
    with h5py.File(gala, "r") as f:
        root = zarr.open_group(str(raw), mode="w")
        for name in ("raw", "labels"):
            array = root.create_dataset(name, data=f[name][:], chunks=(16, 32, 32))
            array.attrs["resolution"] = [10, 10, 10]
    checkpoint = write_checkpoint(tmp_path / "net.pt")
    results = {}
    for mode in ("workers", "in_process"):
        data = predict_config(tmp_path / mode, raw, checkpoint, padding="reflect").model_dump(
            mode="json"
        )
        data["inputs"]["ground_truth"] = {"file": str(raw), "dataset": "labels"}
        data["extract_fragments"]["block_shape_vx"] = [16, 32, 32]
        cfg = parse_config(data)
        result = run(cfg, multiprocessing=mode == "workers", progress=False)
        assert result.ok, result.summary()
        assert next(s.name for s in result.stages) == "predict"
        root = zarr.open_group(str(cfg.run_dir / "output.zarr"), mode="r")
        results[mode] = {
            name: root[name][:]
            for name in ("affinities", "fragments", "segmentation/threshold_0.5000")
        }
    for name, array in results["workers"].items():
        assert np.array_equal(array, results["in_process"][name]), name
    assert results["workers"]["affinities"].shape == (3, 50, 100, 200)


def test_a_changed_checkpoint_invalidates_predict_and_downstream(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw.zarr", (36, 40, 44))
    checkpoint = write_checkpoint(tmp_path / "net.pt", seed=0)
    cfg = predict_config(tmp_path, raw, checkpoint)
    before = {s: stage_hash(cfg, s) for s in ("predict", "extract_fragments", "relabel")}
    write_checkpoint(checkpoint, seed=1)
    after = {s: stage_hash(cfg, s) for s in before}
    assert all(before[s] != after[s] for s in before)


def test_cuda_without_a_gpu_is_an_error_not_a_cpu_run(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    raw = write_raw(tmp_path / "raw.zarr", (36, 40, 44))
    cfg = predict_config(tmp_path, raw, write_checkpoint(tmp_path / "net.pt"), device="cuda")
    with pytest.raises(ConfigError, match=r"no CUDA device.*predict.device: cpu"):
        run(cfg, progress=False)
    assert not cfg.run_dir.exists()


def test_checkpoint_of_another_architecture_is_refused(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw.zarr", (36, 40, 44))
    other = UNetConfig(num_fmaps=4, fmap_inc_factor=2, downsample_factors=[(2, 2, 2)])
    cfg = predict_config(tmp_path, raw, write_checkpoint(tmp_path / "net.pt", unet=other))
    with pytest.raises(CheckpointError, match="num_fmaps"):
        run(cfg, progress=False)
    assert not cfg.run_dir.exists()


def test_offsets_that_do_not_match_the_checkpoint_are_refused(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw.zarr", (36, 40, 44))
    cfg = predict_config(tmp_path, raw, write_checkpoint(tmp_path / "net.pt"))
    data = cfg.model_dump(mode="json")
    data["inputs"]["offsets"] = [*OFFSETS, [-3, 0, 0]]
    data["agglomerate"].update(long_range_edges=True, context_vx=[4, 4, 4])  # used, not ignored
    with pytest.raises(CheckpointError, match="offsets"):
        run(parse_config(data), progress=False)
    assert not cfg.run_dir.exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (np.zeros((2, 36, 40, 44), dtype=np.uint8), "expected 3 dimensions"),
        (np.zeros((36, 40, 44), dtype=np.float32), "expected uint8"),
    ],
)
def test_raw_of_the_wrong_shape_or_dtype_is_refused(
    tmp_path: Path, data: np.ndarray, message: str
) -> None:
    raw = tmp_path / "raw.zarr"
    array = zarr.open_group(str(raw), mode="w").create_dataset("raw", data=data)
    array.attrs["resolution"] = [10, 10, 10]
    cfg = predict_config(tmp_path, raw, write_checkpoint(tmp_path / "net.pt"))
    with pytest.raises(InputError, match=message):
        run(cfg, progress=False)
    assert not cfg.run_dir.exists()


def test_invalid_network_input_shape_is_a_config_error(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw.zarr", (36, 40, 44))
    cfg = predict_config(
        tmp_path, raw, write_checkpoint(tmp_path / "net.pt"), input_shape_vx=[29, 28, 28]
    )
    with pytest.raises(ConfigError):
        run(cfg, progress=False)
    assert not cfg.run_dir.exists()


def test_a_run_from_affinities_never_imports_torch() -> None:
    code = (
        "import sys, yaml\n"
        "from blockwise.config import parse_config\n"
        "from blockwise.stages import active_stages, get_stage\n"
        f"data = yaml.safe_load(open({str(REPO / 'configs' / 'gala_ci.yaml')!r}))\n"
        "cfg = parse_config(data)\n"
        "names = [s.name for s in active_stages(cfg)]\n"
        "assert names[0] == 'extract_fragments', names\n"
        "for name in names: get_stage(name)\n"
        "import blockwise.runner, blockwise.tasks, blockwise_workers.block_worker\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert get_stage("predict").name == "predict"
