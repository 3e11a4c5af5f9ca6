"""``segments.method: hierarchical`` through ``blockwise run`` on real FIB-25 affinities.

The reference is one task over the whole region graph of the run's own
fragments: the compiled mean-merge kernel as a single root task (shown equal
to the slow greedy reference in tests/hierarchy), with the same edge
statistics measured over the whole volume at once and the same forced
(cut-basin) pairs. The octree of daisy tasks must give identical tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from test_pipeline import config, write_crop

from blockwise.config import parse_config
from blockwise.contacts import contact_statistics, quantise_affinities
from blockwise.errors import ConfigError
from blockwise.hierarchical import leaf_residual, run_task, segment_tables
from blockwise.kernels.mean_merge import ClusterEdges, fragment_edge_keys, merge_bound
from blockwise.lut import load_table
from blockwise.run_context import RunContext
from blockwise.runner import run
from blockwise.stitching import CUT_MERGE_SCORE, is_pair

LONG_RANGE = [(-3, 0, 0), (0, -3, 0), (0, 0, -3)]


@pytest.fixture(scope="module")
def crop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_crop(
        tmp_path_factory.mktemp("data") / "crop.zarr", slice(125, 189), slice(0, 96), slice(32, 112)
    )


def whole_graph_tables(cfg: Any, crop: Path, offsets: list[Any]) -> list[np.ndarray]:
    """Tables of one task over the whole graph of the run's fragments."""
    ctx = RunContext(cfg)
    fragments = ctx.fragments.read(ctx.data_roi)
    affs = quantise_affinities(zarr.open_group(str(crop), mode="r")["affs"][:])
    stats = contact_statistics(fragments, affs[: len(offsets)], offsets)
    stored = ctx.store.read_edges()
    cut = stored.merge_score == CUT_MERGE_SCORE
    forced = is_pair(stats.u, stats.v, (stored.u[cut], stored.v[cut]))
    ids = ctx.store.node_ids()
    ctx.close()
    assert np.array_equal(ids, np.unique(fragments[fragments != 0]))
    tau_hi, tau_lo = fragment_edge_keys(stats.u, stats.v)
    edges = ClusterEdges(stats.u, stats.v, stats.s, stats.n, tau_hi, tau_lo)
    bound = merge_bound(max(cfg.segments.thresholds))
    result = run_task(
        0, [leaf_residual(ids, np.zeros(ids.size, np.uint8))], edges, bound, forced=forced
    )
    assert result.residual.ids.size == 0
    return segment_tables(ids, result.records, cfg.segments.thresholds)


def pipeline_tables(cfg: Any) -> list[np.ndarray]:
    ctx = RunContext(cfg)
    tables = [load_table(ctx.lut_path(t), t).segment_ids for t in cfg.segments.thresholds]
    ctx.close()
    return tables


def test_hierarchical_run_equals_one_task_over_the_whole_graph(tmp_path: Path, crop: Path) -> None:
    cfg = config(tmp_path, crop, extract_fragments={"block_shape_vx": [16, 32, 16]})
    assert cfg.segments.method == "hierarchical"  # the default
    result = run(cfg, multiprocessing=False, progress=False)
    assert result.ok, result.summary()
    names = [s.name for s in result.stages]
    assert names[2:6] == [f"hierarchy_level_{level}" for level in range(4)]  # grid 4x3x5
    expected = whole_graph_tables(cfg, crop, cfg.inputs.offsets)
    got = pipeline_tables(cfg)
    for threshold, a, b in zip(cfg.segments.thresholds, got, expected, strict=True):
        assert np.array_equal(a, b), f"tables differ at threshold {threshold}"
    # some basins were cut by block faces and merged first; merging does something
    ctx = RunContext(cfg)
    edges = ctx.store.read_edges()
    assert np.any(edges.merge_score == CUT_MERGE_SCORE)
    assert len(np.unique(got[-1])) < len(np.unique(got[0])) < ctx.store.count_nodes()
    ctx.close()


def test_hierarchical_with_two_workers_equals_in_process(tmp_path: Path, crop: Path) -> None:
    first = config(tmp_path / "a", crop, execution={"num_workers": 2})
    second = config(tmp_path / "b", crop, execution={"num_workers": 2})
    assert run(first, multiprocessing=False, progress=False).ok
    result = run(second, multiprocessing=True, progress=False)
    assert result.ok, result.summary()
    for t in first.segments.thresholds:
        a, b = RunContext(first), RunContext(second)
        assert np.array_equal(
            a.segmentation(t).read(a.data_roi), b.segmentation(t).read(b.data_roi)
        )
        a.close()
        b.close()
    tasks_a = sorted((first.run_dir / "hierarchy" / "tasks").rglob("*.npz"))
    tasks_b = sorted((second.run_dir / "hierarchy" / "tasks").rglob("*.npz"))
    assert [p.relative_to(first.run_dir) for p in tasks_a] == [
        p.relative_to(second.run_dir) for p in tasks_b
    ]
    for pa, pb in zip(tasks_a, tasks_b, strict=True):
        assert pa.read_bytes() == pb.read_bytes(), pa.name


def test_long_range_edges_add_to_the_statistics(tmp_path: Path, crop: Path) -> None:
    # six channels: the nearest-neighbour ones and long-range ones along each axis
    source = zarr.open_group(str(crop), mode="r")
    affs = source["affs"][:]
    rng = np.random.default_rng(0)
    long_range = rng.integers(0, 256, affs.shape, dtype=np.uint8)
    data = tmp_path / "six.zarr"
    root = zarr.open_group(str(data), mode="w")
    six = root.create_dataset(
        "affs", data=np.concatenate([affs, long_range]), chunks=(6, 32, 32, 32)
    )
    six.attrs["resolution"] = [10, 10, 10]
    labels = root.create_dataset("labels", data=source["labels"][:], chunks=(32, 32, 32))
    labels.attrs["resolution"] = [10, 10, 10]
    offsets = [[-1, 0, 0], [0, -1, 0], [0, 0, -1], *[list(o) for o in LONG_RANGE]]
    cfg = config(
        tmp_path,
        data,
        inputs={"offsets": offsets},
        agglomerate={"long_range_edges": True},
        evaluate={"enabled": False},
    )
    assert run(cfg, multiprocessing=False, progress=False).ok
    expected = whole_graph_tables(cfg, data, offsets)
    got = pipeline_tables(cfg)
    for a, b in zip(got, expected, strict=True):
        assert np.array_equal(a, b)
    # the long-range statistics change the result (the test can fail)
    nearest = whole_graph_tables(cfg, data, offsets[:3])
    assert any(not np.array_equal(a, b) for a, b in zip(got, nearest, strict=True))


def base(tmp_path: Path, crop: Path, **sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "t",
        "run_dir": str(tmp_path / "run"),
        "inputs": {"affinities": {"file": str(crop), "dataset": "affs"}},
    }
    data.update(sections)
    return data


def test_quantile_scoring_is_refused_for_hierarchical(tmp_path: Path, crop: Path) -> None:
    with pytest.raises(ConfigError, match="quantile of a merged contact"):
        parse_config(base(tmp_path, crop, agglomerate={"scoring": {"kind": "quantile"}}))
    # the global method still takes it
    parse_config(
        base(
            tmp_path,
            crop,
            agglomerate={"scoring": {"kind": "quantile"}},
            segments={"method": "global"},
        )
    )


def test_long_range_offsets_are_used_or_refused(tmp_path: Path, crop: Path) -> None:
    offsets = [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [-3, 0, 0]]
    inputs = {"affinities": {"file": str(crop), "dataset": "affs"}, "offsets": offsets}
    with pytest.raises(ConfigError, match="long_range_edges: true"):
        parse_config(base(tmp_path, crop, inputs=inputs))
    with pytest.raises(ConfigError, match="long_range_edges: true"):
        parse_config(
            base(
                tmp_path,
                crop,
                inputs=inputs,
                segments={"method": "global"},
                agglomerate={"long_range_edges": True},
            )
        )
    with pytest.raises(ConfigError, match="must reach the longest offset"):
        parse_config(
            base(
                tmp_path,
                crop,
                inputs=inputs,
                agglomerate={"long_range_edges": True, "context_vx": [2, 2, 2]},
            )
        )
    parse_config(base(tmp_path, crop, inputs=inputs, agglomerate={"long_range_edges": True}))
