"""Block-wise equals whole-volume, on the real FIB-25 affinities (eval half, z >= 125)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from blockwise.config import parse_config
from blockwise.metrics import Contingency, scores
from blockwise.run_context import RunContext
from blockwise.runner import run

from datafiles import require_data

# z >= 125 of the 250^3 cube at 10 nm
EVAL_ROI = {"offset_nm": [1250, 0, 0], "shape_nm": [1250, 2500, 2500]}
THRESHOLDS = [0.3, 0.5, 0.6, 0.7]


def fib25_config(run_dir: Path, block: list[int], chunk: list[int], context: int) -> Any:
    affs = require_data("fib25_baseline_affs.h5")
    labels = require_data("fib25_training_sample2.h5")
    return parse_config(
        {
            "name": run_dir.name,
            "run_dir": str(run_dir),
            "inputs": {
                "affinities": {"file": str(affs), "dataset": "affs"},
                "ground_truth": {"file": str(labels), "dataset": "labels"},
                "roi": EVAL_ROI,
            },
            "output": {"chunk_shape_vx": chunk},
            "extract_fragments": {
                "block_shape_vx": block,
                "context_vx": [context] * 3,
                "min_seed_distance_nm": 100,
                "min_fragment_size_vx": 50,
            },
            "agglomerate": {"context_vx": [context] * 3},
            "segments": {"thresholds": THRESHOLDS},
        }
    )


@pytest.mark.slow
def test_blockwise_64_close_to_whole_volume(tmp_path: Path, record_property: Any) -> None:
    whole_cfg = fib25_config(tmp_path / "whole", [125, 250, 250], [25, 50, 50], 0)
    # cut basins are found in each block's extract flood: its context decides how far
    # a basin is followed across a face (16 voxels: 0.154 / 0.062 / 0.052 / 0.182)
    parts_cfg = fib25_config(tmp_path / "parts", [64, 64, 64], [32, 32, 32], 32)
    whole = run(whole_cfg, multiprocessing=False, progress=False)
    assert whole.ok, whole.summary()
    assert whole.stages[0].total == 1
    parts = run(parts_cfg, multiprocessing=False, progress=False)
    assert parts.ok, parts.summary()
    assert parts.stages[0].total == 2 * 4 * 4

    whole_ctx, parts_ctx = RunContext(whole_cfg), RunContext(parts_cfg)
    differences = {}
    for t in THRESHOLDS:
        a = whole_ctx.segmentation(t).read(whole_ctx.data_roi)
        b = parts_ctx.segmentation(t).read(parts_ctx.data_roi)
        c = Contingency()
        c.add(a, b)
        s = scores(c)
        differences[t] = s.voi_split + s.voi_merge
    whole_ctx.close()
    parts_ctx.close()
    record_property("voi_blockwise_vs_whole", differences)
    # measured: 0.109 / 0.003 / 0.003 / 0.003 at 0.3 / 0.5 / 0.6 / 0.7
    print("VOI(sum) between 64^3 block-wise and whole-volume segmentations:", differences)
    assert differences[0.3] <= 0.12, differences
    assert max(differences[t] for t in THRESHOLDS[1:]) <= 0.01, differences

    # and both score alike against the ground truth
    w = json.loads((whole_cfg.run_dir / "evaluation.json").read_text())["results"]
    p = json.loads((parts_cfg.run_dir / "evaluation.json").read_text())["results"]
    for rw, rp in zip(w, p, strict=True):
        assert abs((rw["voi_split"] + rw["voi_merge"]) - (rp["voi_split"] + rp["voi_merge"])) <= 0.1


def test_cut_pairs_are_halves_of_one_basin_across_a_block_face() -> None:
    from blockwise.stitching import cut_pairs, is_pair

    basins = np.zeros((4, 6, 20), dtype=np.uint64)
    basins[..., :10] = 1
    basins[..., 10:] = 2
    fragments = np.zeros_like(basins)
    fragments[..., :5] = 1  # block 0: x 0..5
    fragments[..., 5:10] = 101  # block 1: x 5..15
    fragments[..., 10:15] = 102
    fragments[..., 15:] = 201  # block 2: x 15..20
    fragments[0, 0, 4] = 7  # a sliver of another fragment; it belongs to basin 1 too

    def block_of_id(ids: np.ndarray) -> np.ndarray:
        return (np.asarray(ids) // 100).astype(np.int64)

    u, v = cut_pairs(fragments, basins, block_of_id)
    assert sorted(zip(u.tolist(), v.tolist(), strict=True)) == [(1, 101), (7, 101), (102, 201)]
    # 101 and 102 touch but lie in one block: a real boundary, never a cut
    edges_u = np.array([1, 7, 101, 102], dtype=np.uint64)
    edges_v = np.array([101, 101, 102, 201], dtype=np.uint64)
    assert is_pair(edges_u, edges_v, (u, v)).tolist() == [True, True, False, True]


def _dominant_by_counting(
    fragments: np.ndarray, basins: np.ndarray, wanted: np.ndarray
) -> np.ndarray:
    """Slow reference: count every (fragment, basin) overlap voxel by voxel in a dict."""
    from blockwise.stitching import MIN_COVERAGE

    overlap: dict[tuple[int, int], int] = {}
    sizes: dict[int, int] = {}
    keep = set(wanted.tolist())
    for f, b in zip(fragments.ravel().tolist(), basins.ravel().tolist(), strict=True):
        if f in keep:
            overlap[f, b] = overlap.get((f, b), 0) + 1
            sizes[f] = sizes.get(f, 0) + 1
    dominant = np.zeros(len(wanted), dtype=np.uint64)
    for k, f in enumerate(wanted.tolist()):
        counts = {b: c for (g, b), c in overlap.items() if g == f}
        if counts:
            b, c = max(counts.items(), key=lambda item: item[1])
            if c > MIN_COVERAGE * sizes[f]:
                dominant[k] = b
    return dominant


def test_dominant_basins_outside_a_box_equal_counting_voxel_by_voxel() -> None:
    from blockwise.stitching import dominant_basins

    rng = np.random.default_rng(12)
    for trial in range(40):
        shape = tuple(rng.integers(3, 14, size=3).tolist())
        # runs along x (as in real fragments), large ids, background, wanted ids absent
        fragments = np.repeat(rng.integers(0, 6, size=(*shape[:2], 1)), shape[2], axis=2)
        fragments[rng.random(shape) < 0.3] = rng.integers(0, 6)
        fragments = fragments.astype(np.uint64)
        fragments[fragments > 0] += np.uint64(2**40 + 1000 * trial)
        basins = np.where(
            rng.random(shape) < 0.7, fragments % np.uint64(4), rng.integers(0, 5, size=shape)
        ).astype(np.uint64)
        box = tuple(
            slice(int(a), int(a) + int(rng.integers(0, n - a + 1)))
            for a, n in zip((rng.integers(0, n + 1) for n in shape), shape, strict=True)
        )
        if trial % 4 == 1:  # open and negative bounds, as numpy reads them
            box = (slice(None, box[0].stop), slice(-shape[1] + box[1].start, None), box[2])
        if trial % 4 == 2:  # views that are not contiguous
            fragments, basins = fragments[:, ::-1], basins[:, ::-1]
        outside = np.ones(shape, dtype=bool)
        outside[box] = False
        present = np.unique(fragments[fragments != 0])
        extra = np.array([1, 2**41 + 5], dtype=np.uint64)  # ids found nowhere
        wanted = np.unique(np.concatenate([present[::2], extra]))
        expected = _dominant_by_counting(fragments[outside], basins[outside], wanted)
        got = dominant_basins(fragments, basins, wanted, box)
        assert np.array_equal(got, expected), (trial, box)


def test_dominant_basins_refuses_what_the_kernel_cannot_take() -> None:
    from blockwise.stitching import dominant_basins

    f = np.ones((2, 3, 4), np.uint64)
    box = (slice(0, 1), slice(0, 1), slice(0, 1))
    with pytest.raises(ValueError, match="one shape"):
        dominant_basins(f, f[:1], np.array([1], np.uint64), box)
    with pytest.raises(ValueError, match="uint64"):
        dominant_basins(f, f.astype(np.int64), np.array([1], np.uint64), box)
    with pytest.raises(ValueError, match="strictly increasing"):
        dominant_basins(f, f, np.array([2, 1], np.uint64), box)
    with pytest.raises(ValueError, match="background"):
        dominant_basins(f, f, np.array([0, 1], np.uint64), box)
    with pytest.raises(ValueError, match="three slices without a step"):
        dominant_basins(f, f, np.array([1], np.uint64), (slice(0, 2, 2), *box[1:]))
    with pytest.raises(ValueError, match="three slices without a step"):
        dominant_basins(f, f, np.array([1], np.uint64), box[:2])


@pytest.mark.parametrize("table_limit", [1 << 24, 16])
def test_dominant_basin_equals_counting_voxel_by_voxel(
    table_limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the dense bincount table and the np.unique fallback (a tiny limit) alike
    from blockwise import stitching

    monkeypatch.setattr(stitching, "PAIR_TABLE_LIMIT", table_limit)
    rng = np.random.default_rng(11)
    for trial in range(30):
        shape = tuple(rng.integers(3, 12, size=3).tolist())
        # blocky fragments with large ids, some background; basins that mostly agree
        fragments = rng.integers(0, 8, size=shape).astype(np.uint64)
        fragments[fragments > 0] += np.uint64(2**40 + 1000 * trial)
        basins = np.where(
            rng.random(shape) < 0.7, fragments % np.uint64(5), rng.integers(0, 6, size=shape)
        ).astype(np.uint64)
        present = np.unique(fragments[fragments != 0])
        if present.size == 0:
            continue
        wanted = np.sort(rng.choice(present, size=max(1, present.size // 2), replace=False))
        expected = _dominant_by_counting(fragments, basins, wanted)
        assert np.array_equal(stitching._dominant(fragments, basins, wanted), expected), trial
