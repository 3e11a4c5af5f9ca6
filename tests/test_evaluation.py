"""Block-wise evaluation: scores equal skimage's, blocks equal the whole volume, worst objects
equal a slow reference, bad inputs are refused with clear messages, and the CLI verb works."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from funlib.geometry import Coordinate, Roi
from PIL import Image
from skimage.metrics import adapted_rand_error, variation_of_information

from blockwise.cli import main
from blockwise.config import DatasetConfig
from blockwise.errors import InputError
from blockwise.evaluation import (
    OverlapTable,
    dense_ids,
    evaluate_volumes,
    parse_dataset_arg,
    run_evaluation_report,
    write_evaluation,
    write_run_evaluation,
)
from blockwise.report import format_report
from blockwise.volume import Volume, open_volume

from datafiles import require_data


def zarr_volume(
    path: Path, name: str, data: np.ndarray, voxel_size=(10, 10, 10), offset=(0, 0, 0)
) -> Volume:
    root = zarr.open_group(str(path), mode="a")
    array = root.create_dataset(name, data=data, chunks=(8, 8, 8), overwrite=True)
    array.attrs["resolution"] = list(voxel_size)
    array.attrs["offset"] = list(offset)
    return open_volume(DatasetConfig(file=path, dataset=name))


def random_pair(seed: int, shape=(14, 19, 23)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 9, size=shape).astype(np.uint64)
    gt[rng.random(shape) < 0.3] = gt.ravel()[0]
    seg = (gt * 3 + rng.integers(0, 3, size=shape)).astype(np.uint64)
    seg[rng.random(shape) < 0.1] = rng.integers(0, 50)
    if seed % 2:
        seg = seg + np.uint64(2**63)  # ids above 2**63 must work
    return gt, seg


def skimage_scores(gt: np.ndarray, seg: np.ndarray) -> tuple[float, float, float]:
    seg = (seg - seg.min()).astype(np.int64)
    split, merge = variation_of_information(gt.astype(np.int64), seg, ignore_labels=[0])
    are, _, _ = adapted_rand_error(gt.astype(np.int64), seg, ignore_labels=[0])
    return float(split), float(merge), float(are)


def reference_objects(gt: np.ndarray, seg: np.ndarray, voxel_size, offset) -> tuple[dict, dict]:
    """Per-object VOI terms, sizes and centres by plain loops over voxels."""
    pairs: dict[tuple[int, int], int] = defaultdict(int)
    coords: dict[str, dict[int, list]] = {"gt": defaultdict(list), "seg": defaultdict(list)}
    for index in np.ndindex(gt.shape):
        g, s = int(gt[index]), int(seg[index])
        if g == 0:
            continue
        pairs[(g, s)] += 1
        coords["gt"][g].append(index)
        coords["seg"][s].append(index)
    total = sum(pairs.values())
    gt_size: dict[int, int] = defaultdict(int)
    seg_size: dict[int, int] = defaultdict(int)
    for (g, s), n in pairs.items():
        gt_size[g] += n
        seg_size[s] += n
    split: dict[int, float] = defaultdict(float)
    merge: dict[int, float] = defaultdict(float)
    for (g, s), n in pairs.items():
        split[g] -= n / total * math.log2(n / gt_size[g])
        merge[s] -= n / total * math.log2(n / seg_size[s])

    def describe(kind: str, bits: dict[int, float], sizes: dict[int, int]) -> dict:
        out = {}
        for label, b in bits.items():
            centre_vx = np.mean(np.array(coords[kind][label], dtype=np.float64), axis=0)
            centre = np.asarray(offset) + (centre_vx + 0.5) * np.asarray(voxel_size)
            out[label] = (b, sizes[label], tuple(centre))
        return out

    return describe("gt", split, gt_size), describe("seg", merge, seg_size)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("block", [(5, 7, 9), (14, 19, 23), (64, 64, 64)])
def test_scores_equal_skimage(tmp_path: Path, seed: int, block: tuple[int, int, int]) -> None:
    gt, seg = random_pair(seed)
    store = tmp_path / "v.zarr"
    result = evaluate_volumes(
        zarr_volume(store, "seg", seg, offset=(30, 40, 50)),
        zarr_volume(store, "gt", gt, offset=(30, 40, 50)),
        block_shape_vx=block,
    )
    split, merge, are = skimage_scores(gt, seg)
    assert result.scores.voi_split == pytest.approx(split, abs=1e-9)
    assert result.scores.voi_merge == pytest.approx(merge, abs=1e-9)
    assert result.scores.arand == pytest.approx(are, abs=1e-9)
    assert result.scores.num_voxels == np.count_nonzero(gt)
    assert result.num_bodies == len(set(np.unique(gt).tolist()) - {0})


@pytest.mark.parametrize("seed", range(3))
def test_worst_objects_equal_slow_reference(tmp_path: Path, seed: int) -> None:
    gt, seg = random_pair(seed, shape=(9, 11, 13))
    vs, offset = (4, 5, 6), (8, 10, 12)
    store = tmp_path / "v.zarr"
    result = evaluate_volumes(
        zarr_volume(store, "seg", seg, vs, offset),
        zarr_volume(store, "gt", gt, vs, offset),
        block_shape_vx=(4, 4, 4),
        top_k=100,
    )
    split_ref, merge_ref = reference_objects(gt, seg, vs, offset)
    for objects, reference in ((result.split_errors, split_ref), (result.merge_errors, merge_ref)):
        expected = sorted(
            ((label, b) for label, (b, _, _) in reference.items() if b > 0),
            key=lambda item: (-item[1], item[0]),
        )
        assert [o.id for o in objects] == [label for label, _ in expected]
        for o in objects:
            bits, size, centre = reference[o.id]
            assert o.bits == pytest.approx(bits, abs=1e-12)
            assert o.size_vx == size
            assert o.centre_nm == pytest.approx(centre, abs=1e-9)
            assert sum(v for _, v in o.partners) <= size
    # the per-object terms add up to the totals
    assert sum(o.bits for o in result.split_errors) == pytest.approx(result.scores.voi_split)
    assert sum(o.bits for o in result.merge_errors) == pytest.approx(result.scores.voi_merge)


def test_blockwise_equals_whole_volume(tmp_path: Path) -> None:
    gt, seg = random_pair(7, shape=(20, 24, 28))
    store = tmp_path / "v.zarr"
    s, g = zarr_volume(store, "seg", seg), zarr_volume(store, "gt", gt)
    whole = evaluate_volumes(s, g, block_shape_vx=(20, 24, 28))
    for block in [(1, 24, 28), (3, 5, 7), (8, 8, 8)]:
        parts = evaluate_volumes(s, g, block_shape_vx=block)
        assert parts.scores.voi_split == pytest.approx(whole.scores.voi_split, abs=1e-12)
        assert parts.scores.voi_merge == pytest.approx(whole.scores.voi_merge, abs=1e-12)
        assert parts.scores.arand == pytest.approx(whole.scores.arand, abs=1e-12)
        assert parts.split_errors == whole.split_errors
        assert parts.merge_errors == whole.merge_errors


@pytest.mark.parametrize("shape", [(6, 6, 6), (40, 40, 40)])
def test_overlap_table_counts_only_overlapping_pairs(shape: tuple[int, int, int]) -> None:
    """Pairs are the overlapping ones only, even when ids are huge and all different
    (the larger shape takes the sorted path instead of the direct histogram)."""
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 2**62, size=shape, dtype=np.uint64)
    gt[0, 0, :2] = 0
    seg = gt + np.uint64(1)
    seg[1, 1, :3] = 7
    table = OverlapTable()
    table.add(gt, seg, origin_vx=(2, 3, 4))
    g, s, count, coord_sums = table.table()
    expected = Counter(
        (int(a), int(b)) for a, b in zip(gt.ravel(), seg.ravel(), strict=True) if a != 0
    )
    assert dict(zip(zip(g.tolist(), s.tolist(), strict=True), count.tolist(), strict=True)) == (
        expected
    )
    assert g.size == len(expected)
    z, y, x = np.nonzero((gt == g[0]) & (seg == s[0]))
    assert coord_sums[0] == pytest.approx([(z + 2).sum(), (y + 3).sum(), (x + 4).sum()])


def test_overlap_table_with_shared_ground_truth_ids_counts_the_same() -> None:
    """evaluate_many numbers a block's ground truth once for every segmentation:
    the tables are the ones each segmentation gets on its own; ids of another
    block are refused."""
    rng = np.random.default_rng(1)
    gt = np.repeat(rng.integers(0, 9, size=(12, 12, 3), dtype=np.uint64), 4, axis=2)
    ids = dense_ids(gt.ravel())
    for seed in range(3):
        seg = rng.integers(0, 5, size=gt.shape, dtype=np.uint64) + np.uint64(seed * 10)
        alone, shared = OverlapTable(), OverlapTable()
        alone.add(gt, seg, origin_vx=(1, 2, 3))
        shared.add(gt, seg, origin_vx=(1, 2, 3), ground_truth_ids=ids)
        for a, b in zip(alone.table(), shared.table(), strict=True):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="ground_truth_ids index 8 voxels, the block has 1728"):
        OverlapTable().add(gt, gt, ground_truth_ids=dense_ids(gt.ravel()[:8]))


def test_roi_subregion_equals_cropped_skimage(tmp_path: Path) -> None:
    gt, seg = random_pair(3, shape=(16, 16, 16))
    store = tmp_path / "v.zarr"
    roi = Roi((20, 30, 40), (80, 70, 60))  # voxels 2:10, 3:10, 4:10
    result = evaluate_volumes(
        zarr_volume(store, "seg", seg), zarr_volume(store, "gt", gt), roi, (3, 3, 3)
    )
    crop = (slice(2, 10), slice(3, 10), slice(4, 10))
    split, merge, are = skimage_scores(gt[crop], seg[crop])
    assert result.scores.voi_split == pytest.approx(split, abs=1e-9)
    assert result.scores.voi_merge == pytest.approx(merge, abs=1e-9)
    assert result.scores.arand == pytest.approx(are, abs=1e-9)
    assert result.roi == roi


def test_fib25_real_labels(tmp_path: Path) -> None:
    """Real labels: a cut body is the worst split, two joined bodies the worst merge."""
    with h5py.File(require_data("fib25_training_sample2.h5"), "r") as f:
        gt = f["labels"][125:189, :96, :96]
    ids, sizes = np.unique(gt[gt != 0], return_counts=True)
    big = ids[np.argsort(-sizes)[:3]]
    seg = gt.copy()
    cut = (gt == big[0]) & (np.arange(gt.shape[2])[None, None, :] < 48)
    new_id = int(gt.max()) + 1
    seg[cut] = new_id  # cut the largest body in two
    seg[gt == big[2]] = big[1]  # join the 2nd and 3rd largest
    store = tmp_path / "v.zarr"
    result = evaluate_volumes(
        zarr_volume(store, "seg", seg, offset=(1250, 0, 0)),
        zarr_volume(store, "gt", gt, offset=(1250, 0, 0)),
        block_shape_vx=(32, 48, 48),
    )
    split, merge, are = skimage_scores(gt, seg)
    assert result.scores.voi_split == pytest.approx(split, abs=1e-9)
    assert result.scores.voi_merge == pytest.approx(merge, abs=1e-9)
    assert result.scores.arand == pytest.approx(are, abs=1e-9)
    assert result.split_errors[0].id == big[0]
    assert {p for p, _ in result.split_errors[0].partners} == {int(big[0]), new_id}
    assert result.merge_errors[0].id == big[1]
    assert {p for p, _ in result.merge_errors[0].partners} == {int(big[1]), int(big[2])}
    z, y, x = result.merge_errors[0].centre_nm
    assert 1250 <= z < 1250 + 640 and 0 <= y < 960 and 0 <= x < 960
    same = evaluate_volumes(
        zarr_volume(store, "gt2", gt, offset=(1250, 0, 0)),
        zarr_volume(store, "gt", gt, offset=(1250, 0, 0)),
    )
    assert (same.scores.voi_split, same.scores.voi_merge, same.scores.arand) == (0, 0, 0)
    assert same.split_errors == () and same.merge_errors == ()


def test_bad_inputs(tmp_path: Path) -> None:
    store = tmp_path / "v.zarr"
    labels = np.ones((8, 8, 8), np.uint64)
    gt = zarr_volume(store, "gt", labels)
    with pytest.raises(InputError, match=r"covers .*shape .*must match.*--roi"):
        evaluate_volumes(zarr_volume(store, "small", labels[:4]), gt)
    with pytest.raises(InputError, match=r"voxel size \(5, 10, 10\).*\(10, 10, 10\).*must match"):
        evaluate_volumes(zarr_volume(store, "vs", labels, voxel_size=(5, 10, 10)), gt)
    seg = zarr_volume(store, "seg", labels)
    with pytest.raises(InputError, match=r"not aligned to the voxel grid"):
        evaluate_volumes(seg, gt, Roi((5, 0, 0), (40, 40, 40)))
    with pytest.raises(InputError, match=r"not aligned to the voxel grid"):
        evaluate_volumes(seg, gt, Roi((0, 0, 0), (45, 40, 40)))
    with pytest.raises(InputError, match=r"not inside the segmentation"):
        evaluate_volumes(seg, gt, Roi((40, 0, 0), (80, 40, 40)))
    with pytest.raises(InputError, match=r"dtype float32; expected integer"):
        evaluate_volumes(zarr_volume(store, "f", labels.astype(np.float32)), gt)
    with pytest.raises(InputError, match=r"channel axis"):
        evaluate_volumes(zarr_volume(store, "c", np.ones((3, 8, 8, 8), np.uint8)), gt)
    with pytest.raises(InputError, match=r"no labelled \(non-zero\) voxel"):
        evaluate_volumes(seg, zarr_volume(store, "zero", np.zeros_like(labels)))
    with pytest.raises(InputError, match=r"block shape"):
        evaluate_volumes(seg, gt, block_shape_vx=(0, 8, 8))


def test_parse_dataset_arg(tmp_path: Path) -> None:
    store = tmp_path / "a:b.zarr"  # a colon inside the path
    zarr_volume(store, "segmentation/threshold_0.5000", np.ones((2, 2, 2), np.uint64))
    parsed = parse_dataset_arg(f"{store}:segmentation/threshold_0.5000")
    assert parsed.file == store and parsed.dataset == "segmentation/threshold_0.5000"
    assert parse_dataset_arg(str(store), "x").dataset == "x"
    with pytest.raises(InputError, match=r"names a file but no dataset"):
        parse_dataset_arg(str(store))
    with pytest.raises(InputError, match=r"no such file"):
        parse_dataset_arg(str(tmp_path / "missing.zarr:seg"))


def test_write_evaluation_json_and_png(tmp_path: Path) -> None:
    gt, seg = random_pair(2)
    store = tmp_path / "v.zarr"
    result = evaluate_volumes(zarr_volume(store, "seg", seg), zarr_volume(store, "gt", gt))
    write_evaluation(result, tmp_path / "out" / "e.json", tmp_path / "out" / "e.png")
    report = json.loads((tmp_path / "out" / "e.json").read_text())
    assert report["voi_split"] == result.scores.voi_split
    assert report["split_errors"][0]["id"] == result.split_errors[0].id
    assert report["roi_nm"] == {"offset": [0, 0, 0], "shape": [140, 190, 230]}
    pixels = np.asarray(Image.open(tmp_path / "out" / "e.png").convert("RGB"), dtype=np.int16)
    assert pixels.shape[0] > 100 and pixels.std() > 10
    # coloured bars are drawn (not only black text on white)
    assert np.count_nonzero(np.ptp(pixels, axis=2) > 60) > 1000


def test_run_evaluation_report_reads_as_text(tmp_path: Path) -> None:
    """The run's multi-threshold report: what the evaluate stage writes and others read."""
    gt, seg = random_pair(4)
    store = tmp_path / "v.zarr"
    g = zarr_volume(store, "gt", gt)
    results = {
        t: evaluate_volumes(zarr_volume(store, f"seg{t}", seg // np.uint64(k)), g)
        for t, k in ((0.7, 3), (0.3, 1))
    }
    report = write_run_evaluation(
        results, "demo", tmp_path / "evaluation.json", tmp_path / "evaluation.png", scoring={}
    )
    assert [r["threshold"] for r in report["results"]] == [0.3, 0.7]
    assert report["results"][1]["merge_errors"][0]["id"] == results[0.7].merge_errors[0].id
    text = format_report(tmp_path / "evaluation.json")
    assert f"{results[0.3].scores.voi_split:.3f}" in text and "demo" in text
    assert (tmp_path / "evaluation.png").stat().st_size > 1000
    with pytest.raises(InputError, match="no evaluation results"):
        run_evaluation_report({}, "demo")


def test_cli_evaluate_zarr_against_hdf5(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gt, seg = random_pair(1)
    zarr_volume(tmp_path / "seg.zarr", "segmentation", seg, offset=(100, 0, 0))
    with h5py.File(tmp_path / "gt.h5", "w") as f:
        d = f.create_dataset("volumes/labels", data=gt)
        d.attrs["resolution"] = [10, 10, 10]
        d.attrs["offset"] = [100, 0, 0]
    out = tmp_path / "eval"
    code = main(
        [
            "evaluate",
            f"{tmp_path / 'seg.zarr'}:segmentation",
            str(tmp_path / "gt.h5"),
            "--gt-dataset",
            "volumes/labels",
            "--block-shape",
            "5",
            "6",
            "7",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads((out / "evaluation.json").read_text())
    split, merge, are = skimage_scores(gt, seg)
    assert report["voi_split"] == pytest.approx(split, abs=1e-9)
    assert report["voi_merge"] == pytest.approx(merge, abs=1e-9)
    assert report["arand"] == pytest.approx(are, abs=1e-9)
    assert (out / "evaluation.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert f"VOI split {split:.4f}" in printed and "worst splits" in printed
    # a ROI outside the data is refused with exit code 2 and a message naming it
    code = main(
        [
            "evaluate",
            f"{tmp_path / 'seg.zarr'}:segmentation",
            f"{tmp_path / 'gt.h5'}:volumes/labels",
            "--roi",
            "0",
            "0",
            "0",
            "50",
            "50",
            "50",
            "--out",
            str(out),
        ]
    )
    assert code == 2


def test_volume_roi_from_offset_attribute(tmp_path: Path) -> None:
    """Sanity: the helper really places volumes where their attributes say."""
    v = zarr_volume(tmp_path / "v.zarr", "a", np.zeros((2, 3, 4), np.uint64), (1, 2, 3), (5, 6, 9))
    assert v.roi == Roi(Coordinate(5, 6, 9), Coordinate(2, 6, 12))
