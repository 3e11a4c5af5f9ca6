"""The post-processing pipeline, in process: whole equals parts, invariants, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import zarr
from funlib.geometry import Roi

from blockwise.config import parse_config
from blockwise.errors import ConfigError, InputError
from blockwise.fragments import fragments_from_affinities
from blockwise.kernels.region_merging import Scoring, merge_regions, segment
from blockwise.lut import load_table
from blockwise.run_context import RunContext
from blockwise.runner import run
from blockwise.stitching import CUT_MERGE_SCORE

from datafiles import require_data


def write_crop(path: Path, z: slice, y: slice, x: slice) -> Path:
    """A zarr container holding a crop of the FIB-25 affinities and labels."""
    affs_file = require_data("fib25_baseline_affs.h5")
    labels_file = require_data("fib25_training_sample2.h5")
    root = zarr.open_group(str(path), mode="w")
    with h5py.File(affs_file, "r") as f:
        affs = f["affs"][:, z, y, x]
    with h5py.File(labels_file, "r") as f:
        labels = f["labels"][z, y, x]
    for name, data, chunks in (
        ("affs", affs, (3, 32, 32, 32)),
        ("labels", labels, (32, 32, 32)),
    ):
        array = root.create_dataset(name, data=data, chunks=chunks)
        array.attrs["resolution"] = [10, 10, 10]
    return path


def config(tmp_path: Path, data: Path, **sections: Any) -> Any:
    base: dict[str, Any] = {
        "name": "test",
        "run_dir": str(tmp_path / "run"),
        "inputs": {
            "affinities": {"file": str(data), "dataset": "affs"},
            "ground_truth": {"file": str(data), "dataset": "labels"},
        },
        "output": {"chunk_shape_vx": [16, 16, 16]},
        "extract_fragments": {"block_shape_vx": [32, 32, 32], "context_vx": [8, 8, 8]},
        "agglomerate": {"context_vx": [8, 8, 8]},
        "segments": {"thresholds": [0.3, 0.5, 0.7]},
        "execution": {"num_workers": 1},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return parse_config(base)


@pytest.fixture(scope="module")
def crop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_crop(
        tmp_path_factory.mktemp("data") / "crop.zarr", slice(125, 189), slice(0, 96), slice(32, 112)
    )


def read_affs(data: Path) -> np.ndarray:
    return zarr.open_group(str(data), mode="r")["affs"][:].astype(np.float32) / np.float32(255)


def test_one_block_equals_the_whole_array_kernels(tmp_path: Path, crop: Path) -> None:
    cfg = config(
        tmp_path,
        crop,
        extract_fragments={"block_shape_vx": [64, 96, 80], "context_vx": [4, 4, 4]},
        agglomerate={"context_vx": [4, 4, 4]},
        output={"chunk_shape_vx": [16, 16, 16]},
        segments={"method": "global"},
    )
    result = run(cfg, multiprocessing=False, progress=False)
    assert result.ok, result.summary()
    ctx = RunContext(cfg)
    affs = read_affs(crop)
    params = cfg.extract_fragments
    whole, n = fragments_from_affinities(
        affs,
        (10, 10, 10),
        boundary_threshold=params.boundary_threshold,
        min_seed_distance_nm=params.min_seed_distance_nm,
        seeds_per_section=params.seeds_per_section,
        min_fragment_size_vx=params.min_fragment_size_vx,
    )
    fragments = ctx.fragments.read(ctx.data_roi)
    assert np.array_equal(fragments, whole)  # block 0: ids offset by 0
    assert ctx.store.count_nodes() == n
    graph = merge_regions(affs[:3], whole, cfg.merge_until, Scoring())
    edges = ctx.store.read_edges()
    assert np.array_equal(edges.u, graph.u) and np.array_equal(edges.v, graph.v)
    assert np.array_equal(edges.score, graph.score)
    # blocks only measure: nothing is merged by score inside a block (one block: no cut basins)
    assert np.isnan(edges.merge_score).all()
    for threshold in cfg.segments.thresholds:
        expected = segment(whole, graph, threshold)
        assert np.array_equal(ctx.segmentation(threshold).read(ctx.data_roi), expected)
    ctx.close()


def block_of_voxels(ctx: RunContext) -> np.ndarray:
    """For every voxel, the index of the block whose write ROI holds it."""
    shape = tuple(ctx.data_roi.shape / ctx.voxel_size)
    owner = np.zeros(shape, dtype=np.int64)
    for index, roi in enumerate(ctx.grid.write_rois()):
        begin = (roi.begin - ctx.data_roi.begin) / ctx.voxel_size
        end = (roi.end - ctx.data_roi.begin) / ctx.voxel_size
        owner[tuple(slice(b, e) for b, e in zip(begin, end, strict=True))] = index
    return owner


@pytest.mark.parametrize("method", ["hierarchical", "global"])
def test_blockwise_invariants_and_resume(tmp_path: Path, crop: Path, method: str) -> None:
    cfg = config(tmp_path, crop, segments={"method": method})
    first = run(cfg, multiprocessing=False, progress=False)
    assert first.ok, first.summary()
    ctx = RunContext(cfg)
    fragments = ctx.fragments.read(ctx.data_roi)
    # every voxel labelled (no mask)
    assert np.all(fragments != 0)
    # fragments are unique across blocks and never cross a write ROI
    owner = block_of_voxels(ctx)
    assert np.array_equal(ctx.fragment_ids.block_of_id(fragments), owner)
    nodes = ctx.store.read_nodes()
    assert np.array_equal(nodes.id, np.unique(fragments))
    # node centres lie in their block's write ROI
    for node_id, center in zip(nodes.id[::37], nodes.center_nm[::37], strict=True):
        roi = ctx.grid.write_roi(int(ctx.fragment_ids.block_of_id(np.array([node_id]))[0]))
        assert all(b <= c < e for b, c, e in zip(roi.begin, center, roi.end, strict=True))
    # every edge once, u < v, owned by u's block
    edges = ctx.store.read_edges()
    pairs = set(zip(edges.u.tolist(), edges.v.tolist(), strict=True))
    assert len(pairs) == len(edges)
    assert np.all(edges.u < edges.v)
    assert np.all(np.isnan(edges.merge_score) | (edges.merge_score < cfg.merge_until))
    # halves of basins cut by block faces are marked, and only across blocks
    cut = edges.merge_score == CUT_MERGE_SCORE
    assert np.any(cut)
    assert np.all(
        ctx.fragment_ids.block_of_id(edges.u[cut]) != ctx.fragment_ids.block_of_id(edges.v[cut])
    )
    # tables: one per threshold, coarser at higher thresholds
    counts = [load_table(ctx.lut_path(t), t).num_segments for t in cfg.segments.thresholds]
    assert counts == sorted(counts, reverse=True)
    before = {t: ctx.segmentation(t).read(ctx.data_roi) for t in cfg.segments.thresholds}
    report = json.loads((cfg.run_dir / "evaluation.json").read_text())
    ctx.close()

    # the same command again skips every block and changes nothing
    second = run(cfg, multiprocessing=False, progress=False)
    assert second.ok
    assert all(s.done == 0 and s.skipped == s.total for s in second.stages), second.summary()
    ctx = RunContext(cfg)
    for t, seg in before.items():
        assert np.array_equal(ctx.segmentation(t).read(ctx.data_roi), seg)
    assert json.loads((cfg.run_dir / "evaluation.json").read_text()) == report
    ctx.close()


def test_failing_block_is_reported_and_the_rest_finishes(tmp_path: Path) -> None:
    data = tmp_path / "nan.zarr"
    rng = np.random.default_rng(0)
    affs = rng.random((3, 32, 64, 64)).astype(np.float32)
    affs[:, 20, 40, 40] = np.nan  # poisons exactly one block: z 16..32, y 32..64, x 32..64
    root = zarr.open_group(str(data), mode="w")
    root.create_dataset("affs", data=affs, chunks=(3, 16, 16, 16)).attrs["resolution"] = [4, 4, 4]
    cfg = parse_config(
        {
            "name": "nan",
            "run_dir": str(tmp_path / "run"),
            "inputs": {"affinities": {"file": str(data), "dataset": "affs"}},
            "output": {"chunk_shape_vx": [16, 16, 16]},
            "extract_fragments": {"block_shape_vx": [16, 32, 32], "context_vx": [0, 0, 0]},
            "agglomerate": {"context_vx": [0, 0, 0]},
            "execution": {"max_retries": 0},
        }
    )
    result = run(cfg, multiprocessing=False, progress=False)
    assert not result.ok
    extract = result.stages[0]
    assert extract.failed == 1 and extract.done == extract.total - 1
    assert [(f.stage, f.block_index) for f in result.failures] == [("extract_fragments", 7)]
    summary = result.summary()
    assert "extract_fragments block 7" in summary and "[64:128, 128:256, 128:256]" in summary
    assert "NaN" in summary


def bad_config(tmp_path: Path, data: Path, **sections: Any) -> Any:
    return config(tmp_path, data, **sections)


def assert_refused(cfg: Any, error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        run(cfg, multiprocessing=False, progress=False)
    assert not cfg.run_dir.exists(), "a refused run must write nothing"


def test_bad_inputs_refused_before_anything_is_written(tmp_path: Path, crop: Path) -> None:
    # affinity channel count not matching the offsets
    cfg = config(tmp_path, crop)
    four = cfg.inputs.model_copy(
        update={"offsets": [(-1, 0, 0), (0, -1, 0), (0, 0, -1), (-3, 0, 0)]}
    )
    assert_refused(
        cfg.model_copy(update={"inputs": four}),
        InputError,
        r"3 channels but the config lists 4 offsets",
    )
    # missing file and missing dataset
    missing = parse_config(
        {
            "name": "m",
            "run_dir": str(tmp_path / "run"),
            "inputs": {"affinities": {"file": str(tmp_path / "no.h5"), "dataset": "affs"}},
        }
    )
    assert_refused(missing, InputError, r"no.h5 does not exist")
    wrong_ds = config(tmp_path, crop)
    wrong_ds = wrong_ds.model_copy(
        update={
            "inputs": wrong_ds.inputs.model_copy(
                update={
                    "affinities": wrong_ds.inputs.affinities.model_copy(
                        update={"dataset": "predictions"}
                    )
                }
            )
        }
    )
    assert_refused(wrong_ds, InputError, r"has no dataset 'predictions'")
    # wrong dtype, empty volume, smaller than one block
    root = zarr.open_group(str(tmp_path / "odd.zarr"), mode="w")
    root.create_dataset("int16", data=np.zeros((3, 40, 40, 40), np.int16)).attrs["resolution"] = [
        1,
        1,
        1,
    ]
    root.create_dataset("empty", shape=(3, 0, 40, 40), dtype=np.uint8).attrs["resolution"] = [
        1,
        1,
        1,
    ]
    root.create_dataset("small", data=np.zeros((3, 20, 40, 40), np.uint8)).attrs["resolution"] = [
        1,
        1,
        1,
    ]
    for dataset, error, pattern in (
        ("int16", InputError, r"dtype int16; expected uint8"),
        ("empty", InputError, r"is empty"),
        ("small", InputError, r"smaller than one block"),
    ):
        cfg = parse_config(
            {
                "name": "odd",
                "run_dir": str(tmp_path / "run"),
                "inputs": {"affinities": {"file": str(tmp_path / "odd.zarr"), "dataset": dataset}},
                "output": {"chunk_shape_vx": [16, 16, 16]},
                "extract_fragments": {"block_shape_vx": [32, 32, 32]},
            }
        )
        assert_refused(cfg, error, pattern)
    # a ground truth that does not cover the evaluated region
    cfg = config(
        tmp_path, crop, evaluate={"roi": {"offset_nm": [5000, 0, 0], "shape_nm": [10, 10, 10]}}
    )
    assert_refused(cfg, ConfigError, r"does not overlap")


def test_hdf5_cremi_layout(tmp_path: Path) -> None:
    path = tmp_path / "sample.hdf"
    rng = np.random.default_rng(1)
    with h5py.File(path, "w") as f:
        affs = f.create_dataset(
            "volumes/predictions/affinities", data=rng.random((3, 8, 64, 64)).astype(np.float32)
        )
        affs.attrs["resolution"] = [40.0, 4.0, 4.0]
        labels = f.create_dataset(
            "volumes/labels/neuron_ids", data=rng.integers(1, 5, (8, 64, 64)).astype(np.uint64)
        )
        labels.attrs["resolution"] = [40.0, 4.0, 4.0]
    cfg = parse_config(
        {
            "name": "cremi",
            "run_dir": str(tmp_path / "run"),
            "inputs": {
                "affinities": {"file": str(path), "dataset": "volumes/predictions/affinities"},
                "ground_truth": {"file": str(path), "dataset": "volumes/labels/neuron_ids"},
            },
            "output": {"chunk_shape_vx": [4, 32, 32]},
            "extract_fragments": {
                "block_shape_vx": [4, 32, 32],
                "context_vx": [1, 4, 4],
                "seeds_per_section": True,
            },
            "agglomerate": {"context_vx": [1, 8, 8]},
        }
    )
    result = run(cfg, multiprocessing=False, progress=False)
    assert result.ok, result.summary()
    ctx = RunContext(cfg)
    assert ctx.voxel_size == (40, 4, 4)
    assert ctx.data_roi == Roi((0, 0, 0), (320, 256, 256))
    assert np.all(ctx.fragments.read(ctx.data_roi) != 0)
    ctx.close()
