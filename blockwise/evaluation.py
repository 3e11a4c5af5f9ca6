"""Score a segmentation against ground truth, block by block, with the worst objects.

The volumes are read one block at a time; each block contributes the voxel
counts of its (ground truth, segment) pairs, plus the sums of their voxel
coordinates, to one SPARSE table (sorted arrays of pairs, merged as blocks
come in). The table holds one row per overlapping pair, never labels x labels,
and never the whole volume. From it come the scores of :mod:`blockwise.metrics`
(VOI split/merge in bits and the adapted Rand error, the definitions of
scikit-image, ground-truth label 0 ignored) and the objects that contribute
most to split (ground-truth bodies cut into many segments) and to merge
(segments that join many bodies), with their sizes and centres in nm so that a
viewer can jump to them.

The same functions serve the ``blockwise evaluate`` command and the evaluate
stage of a run (:func:`evaluate_many` reads the ground truth once for every
threshold's segmentation).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from funlib.geometry import Coordinate, Roi
from numpy.typing import NDArray

from blockwise.config import DatasetConfig
from blockwise.errors import InputError
from blockwise.metrics import Scores, error_contributions, table_scores
from blockwise.volume import Volume

logger = logging.getLogger(__name__)

DEFAULT_BLOCK_SHAPE_VX = (128, 128, 128)
# objects listed per error kind in the JSON report
DEFAULT_TOP_K = 10
# partners (segments of a split body, bodies of a merged segment) listed per object
PARTNERS_PER_OBJECT = 5
# merge the per-block tables once this many are pending (bounds memory and sort cost)
_COMPACT_EVERY = 32


def dense_ids(labels: NDArray[np.integer]) -> tuple[NDArray[Any], NDArray[np.intp]]:
    """``np.unique(labels, return_inverse=True)``, fast for spatially coherent labels.

    numpy's argsort (behind ``return_inverse``) is more than ten times slower than
    a sort on label volumes; sorting only the first value of each run of equal
    values and looking every voxel up in the result is faster still.
    """
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
    ids = np.unique(labels[starts])
    return ids, np.searchsorted(ids, labels)


@dataclass
class OverlapTable:
    """Sparse (gt, seg) voxel counts with coordinate sums, accumulated block by block.

    Each row is one (ground-truth label, segment) pair with its voxel count and
    the sums of its voxels' z, y and x indices (voxels from the evaluated ROI's
    origin; float64 sums are exact below 2**53). Ground-truth label 0 is never
    counted.
    """

    _parts: list[tuple[NDArray[np.uint64], ...]] = field(default_factory=list)
    _stats: list[NDArray[np.float64]] = field(default_factory=list)

    def add(
        self,
        ground_truth: NDArray[np.integer],
        segmentation: NDArray[np.integer],
        origin_vx: tuple[int, int, int] = (0, 0, 0),
        ground_truth_ids: tuple[NDArray[Any], NDArray[np.intp]] | None = None,
    ) -> None:
        """Count one block.

        Args:
            ground_truth: labels (z, y, x); 0 is not counted.
            segmentation: segment ids, same shape.
            origin_vx: the block's first voxel, counted from the ROI's origin.
            ground_truth_ids: :func:`dense_ids` of ``ground_truth.ravel()``, when
                several segmentations of one block share it (computed here if None).

        Raises:
            ValueError: if the shapes differ or the arrays are not 3D.
        """
        if ground_truth.shape != segmentation.shape or ground_truth.ndim != 3:
            raise ValueError(
                f"ground truth has shape {ground_truth.shape}, segmentation "
                f"{segmentation.shape}; they must be the same 3D shape"
            )
        gt_ids, gt_index = (
            dense_ids(ground_truth.ravel()) if ground_truth_ids is None else ground_truth_ids
        )
        if gt_index.size != ground_truth.size:
            raise ValueError(
                f"ground_truth_ids index {gt_index.size} voxels, the block has {ground_truth.size}"
            )
        seg_ids, seg_index = dense_ids(segmentation.ravel())
        num_seg = seg_ids.size
        key = gt_index.astype(np.int64) * num_seg + seg_index
        num_keys = gt_ids.size * num_seg
        if num_keys <= key.size + 65_536:
            # few enough possible pairs for a direct histogram: O(voxels), no sort
            keys = np.arange(num_keys, dtype=np.int64)
            index = key
        else:
            keys, index = dense_ids(key)
        nbins = keys.size
        count = np.bincount(index, minlength=nbins)
        present = np.flatnonzero(count)
        gt_of_key = gt_ids[keys[present] // num_seg].astype(np.uint64)
        seg_of_key = seg_ids[keys[present] % num_seg].astype(np.uint64)
        labelled = gt_of_key != 0
        present, gt_of_key, seg_of_key = (
            present[labelled],
            gt_of_key[labelled],
            seg_of_key[labelled],
        )
        columns = [count[present].astype(np.float64)]
        shape = ground_truth.shape
        for axis in range(3):
            # sum of the voxels' index along this axis, per pair
            coord_shape = [1, 1, 1]
            coord_shape[axis] = shape[axis]
            coord = np.broadcast_to(
                np.arange(shape[axis], dtype=np.float64).reshape(coord_shape), shape
            ).ravel()
            sums = np.bincount(index, weights=coord, minlength=nbins)[present]
            columns.append(sums + origin_vx[axis] * columns[0])
        stats = np.stack(columns, axis=1)
        self._parts.append((gt_of_key, seg_of_key))
        self._stats.append(stats)
        if len(self._parts) >= _COMPACT_EVERY:
            self._compact()

    def _compact(self) -> None:
        if len(self._parts) <= 1:
            return
        gt = np.concatenate([p[0] for p in self._parts])
        seg = np.concatenate([p[1] for p in self._parts])
        stats = np.concatenate(self._stats)
        order = np.lexsort((seg, gt))
        gt, seg, stats = gt[order], seg[order], stats[order]
        starts = np.flatnonzero(np.r_[True, (gt[1:] != gt[:-1]) | (seg[1:] != seg[:-1])])
        self._parts = [(gt[starts], seg[starts])]
        self._stats = [np.add.reduceat(stats, starts, axis=0)]

    def merge(self, other: OverlapTable) -> None:
        """Add another table's counts (e.g. one filled by another worker)."""
        self._parts.extend(other._parts)
        self._stats.extend(other._stats)
        self._compact()

    def table(
        self,
    ) -> tuple[NDArray[np.uint64], NDArray[np.uint64], NDArray[np.int64], NDArray[np.float64]]:
        """Sorted (gt, seg) pairs, their voxel counts and coordinate sums ``(pairs, 3)``."""
        if not self._parts:
            empty = np.zeros(0, np.uint64)
            return empty, empty, np.zeros(0, np.int64), np.zeros((0, 3), np.float64)
        if len(self._parts) > 1:
            self._compact()
        else:
            gt, seg = self._parts[0]
            order = np.lexsort((seg, gt))
            self._parts = [(gt[order], seg[order])]
            self._stats = [self._stats[0][order]]
        gt, seg = self._parts[0]
        stats = self._stats[0]
        return gt, seg, np.rint(stats[:, 0]).astype(np.int64), stats[:, 1:]


@dataclass(frozen=True)
class ErrorObject:
    """One object that contributes to VOI split (a body) or VOI merge (a segment).

    Attributes:
        id: the body's ground-truth label, or the segment's id.
        bits: its term of VOI split (body) or VOI merge (segment).
        size_vx: its voxels inside the ROI where ground truth is labelled.
        centre_nm: the centre of mass of those voxels (z, y, x; world nm).
        partners: the largest overlapping segments (of a body) or bodies (of
            a segment), ``(id, voxels)``, largest first.
        num_partners: how many segments (bodies) it overlaps.
    """

    id: int
    bits: float
    size_vx: int
    centre_nm: tuple[float, float, float]
    partners: tuple[tuple[int, int], ...]
    num_partners: int

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "id": self.id,
            "bits": self.bits,
            "size_vx": self.size_vx,
            "centre_nm": list(self.centre_nm),
            "partners": [{"id": i, "voxels": v} for i, v in self.partners],
            "num_partners": self.num_partners,
        }


@dataclass(frozen=True)
class EvaluationResult:
    """Scores of one segmentation and its worst objects.

    Attributes:
        segmentation: ``file:dataset`` of the segmentation.
        ground_truth: ``file:dataset`` of the ground truth.
        roi: the evaluated region (nm).
        voxel_size: nm per voxel.
        block_shape_vx: the blocks it was read in.
        scores: VOI split/merge (bits), adapted Rand error, voxels counted.
        num_segments: segments overlapping labelled ground truth.
        num_bodies: ground-truth bodies (non-zero labels) in the ROI.
        split_errors: bodies with the largest VOI split terms, worst first.
        merge_errors: segments with the largest VOI merge terms, worst first.
    """

    segmentation: str
    ground_truth: str
    roi: Roi
    voxel_size: Coordinate
    block_shape_vx: Coordinate
    scores: Scores
    num_segments: int
    num_bodies: int
    split_errors: tuple[ErrorObject, ...]
    merge_errors: tuple[ErrorObject, ...]

    def to_json(self) -> dict[str, Any]:
        """The JSON report (the schema of ``evaluation.json``'s entries).

        Keys: ``segmentation``, ``ground_truth``, ``roi_nm`` (``offset``,
        ``shape``), ``voxel_size_nm``, ``block_shape_vx``, ``voi_split``,
        ``voi_merge``, ``arand``, ``num_voxels``, ``num_segments``,
        ``num_bodies``, ``split_errors`` and ``merge_errors`` (lists of
        :meth:`ErrorObject.to_json`, worst first).
        """
        return {
            "segmentation": self.segmentation,
            "ground_truth": self.ground_truth,
            "roi_nm": {"offset": list(self.roi.offset), "shape": list(self.roi.shape)},
            "voxel_size_nm": list(self.voxel_size),
            "block_shape_vx": list(self.block_shape_vx),
            "voi_split": self.scores.voi_split,
            "voi_merge": self.scores.voi_merge,
            "arand": self.scores.arand,
            "num_voxels": self.scores.num_voxels,
            "num_segments": self.num_segments,
            "num_bodies": self.num_bodies,
            "split_errors": [o.to_json() for o in self.split_errors],
            "merge_errors": [o.to_json() for o in self.merge_errors],
        }


def parse_dataset_arg(text: str, dataset: str | None = None) -> DatasetConfig:
    """A file and dataset from ``FILE:DATASET``, or from ``FILE`` and an explicit dataset.

    The split is at the last ``:`` whose left part exists, so paths holding
    colons still work.

    Raises:
        InputError: if no dataset is named or the file does not exist.
    """
    if dataset:
        return DatasetConfig(file=Path(text), dataset=dataset)
    cut = text.rfind(":")
    while cut > 0:
        if Path(text[:cut]).exists():
            return DatasetConfig(file=Path(text[:cut]), dataset=text[cut + 1 :].strip("/"))
        cut = text.rfind(":", 0, cut)
    if Path(text).exists():
        raise InputError(
            f"{text} names a file but no dataset; write FILE:DATASET or pass the dataset option"
        )
    raise InputError(f"{text}: no such file (expected FILE:DATASET, e.g. out.zarr:segmentation)")


def check_evaluation_inputs(segmentation: Volume, ground_truth: Volume, roi: Roi | None) -> Roi:
    """The ROI to evaluate, after checking that the volumes can be compared.

    Without ``roi`` both volumes must cover the same region; with it, both
    must contain it.

    Raises:
        InputError: if a volume has channels or a non-integer dtype, the voxel
            sizes differ, the ROIs differ (no ``roi`` given), or ``roi`` is
            empty, not aligned to the voxel grid or not inside both volumes.
    """
    for volume, what in ((segmentation, "segmentation"), (ground_truth, "ground truth")):
        if volume.num_channels is not None:
            raise InputError(
                f"{what} {volume.name} has a channel axis ({volume.num_channels} channels); "
                "expected a label volume (z, y, x)"
            )
        if not (np.issubdtype(volume.dtype, np.integer) or volume.dtype == np.bool_):
            raise InputError(
                f"{what} {volume.name} has dtype {volume.dtype}; expected integer labels"
            )
    if segmentation.voxel_size != ground_truth.voxel_size:
        raise InputError(
            f"segmentation {segmentation.name} has voxel size {segmentation.voxel_size} nm but "
            f"ground truth {ground_truth.name} has {ground_truth.voxel_size} nm; they must match"
        )
    vs = segmentation.voxel_size
    if roi is None:
        if segmentation.roi != ground_truth.roi:
            raise InputError(
                f"segmentation {segmentation.name} covers {segmentation.roi} (shape "
                f"{segmentation.roi.shape / vs} voxels) but ground truth {ground_truth.name} "
                f"covers {ground_truth.roi} (shape {ground_truth.roi.shape / vs} voxels); "
                "they must match, or name a region inside both with --roi OFFSET_NM SHAPE_NM"
            )
        return segmentation.roi
    if roi.empty or any(s <= 0 for s in roi.shape):
        raise InputError(f"evaluation ROI {roi} is empty")
    if any(o % v for o, v in zip(roi.offset, vs, strict=True)) or any(
        s % v for s, v in zip(roi.shape, vs, strict=True)
    ):
        raise InputError(
            f"evaluation ROI {roi} (offset and shape in nm) is not aligned to the voxel grid "
            f"of {vs} nm; offset and shape must be multiples of the voxel size"
        )
    for volume, what in ((segmentation, "segmentation"), (ground_truth, "ground truth")):
        if not volume.roi.contains(roi):
            raise InputError(
                f"evaluation ROI {roi} is not inside the {what} {volume.name}, which covers "
                f"{volume.roi}"
            )
    if any((o - v0) % v for o, v0, v in zip(roi.offset, segmentation.roi.offset, vs, strict=True)):
        raise InputError(
            f"evaluation ROI {roi} is not aligned to the voxels of {segmentation.name} "
            f"(offset {segmentation.roi.offset}, voxel size {vs})"
        )
    return roi


def evaluation_blocks(
    roi: Roi, voxel_size: Coordinate, block_shape_vx: Coordinate
) -> Iterator[Roi]:
    """Blocks of ``block_shape_vx`` voxels tiling ``roi`` from its origin, cut to it."""
    step = Coordinate(block_shape_vx) * voxel_size
    begin, end = roi.begin, roi.end
    for z in range(begin[0], end[0], step[0]):
        for y in range(begin[1], end[1], step[1]):
            for x in range(begin[2], end[2], step[2]):
                yield Roi((z, y, x), step).intersect(roi)


def evaluate_many(
    segmentations: Mapping[str, Volume],
    ground_truth: Volume,
    roi: Roi | None = None,
    block_shape_vx: tuple[int, int, int] | Coordinate = DEFAULT_BLOCK_SHAPE_VX,
    top_k: int = DEFAULT_TOP_K,
) -> dict[str, EvaluationResult]:
    """Evaluate several segmentations of one region, reading the ground truth once per block.

    Args:
        segmentations: segmentations by name (e.g. one per threshold).
        ground_truth: the reference labels; label 0 is not scored.
        roi: region to score (nm); None for the whole (common) region.
        block_shape_vx: voxels read at once (z, y, x); memory per block is
            about 60 bytes per voxel.
        top_k: worst objects listed per error kind.

    Raises:
        InputError: see :func:`check_evaluation_inputs`; also when the ROI
            holds no labelled ground-truth voxel.
    """
    if not segmentations:
        raise InputError("no segmentation to evaluate")
    block = Coordinate(block_shape_vx)
    if len(block) != 3 or any(b <= 0 for b in block):
        raise InputError(f"block shape {tuple(block)} must be three positive voxel counts")
    rois = {
        name: check_evaluation_inputs(s, ground_truth, roi) for name, s in segmentations.items()
    }
    eval_roi = next(iter(rois.values()))
    if any(r != eval_roi for r in rois.values()):
        raise InputError(f"the segmentations cover different regions: {rois}")
    vs = ground_truth.voxel_size
    tables = {name: OverlapTable() for name in segmentations}
    for block_roi in evaluation_blocks(eval_roi, vs, block):
        gt = ground_truth.read(block_roi)
        origin = (block_roi.begin - eval_roi.begin) / vs
        origin_vx = (int(origin[0]), int(origin[1]), int(origin[2]))
        gt_ids = dense_ids(gt.ravel())  # once per block, for every segmentation
        for name, seg in segmentations.items():
            tables[name].add(gt, seg.read(block_roi), origin_vx, ground_truth_ids=gt_ids)
    results = {}
    for name, seg in segmentations.items():
        results[name] = _result(tables[name], seg, ground_truth, eval_roi, block, top_k)
        s = results[name].scores
        logger.info(
            "%s: VOI split %.4f merge %.4f ARAND %.4f over %d voxels",
            name,
            s.voi_split,
            s.voi_merge,
            s.arand,
            s.num_voxels,
        )
    return results


def evaluate_volumes(
    segmentation: Volume,
    ground_truth: Volume,
    roi: Roi | None = None,
    block_shape_vx: tuple[int, int, int] | Coordinate = DEFAULT_BLOCK_SHAPE_VX,
    top_k: int = DEFAULT_TOP_K,
) -> EvaluationResult:
    """Evaluate one segmentation block by block (see :func:`evaluate_many`).

    Raises:
        InputError: if the volumes cannot be compared (shapes, ROIs, voxel
            sizes, dtypes), the ROI is not voxel-aligned, or the ROI holds no
            labelled ground-truth voxel.
    """
    return evaluate_many(
        {segmentation.name: segmentation}, ground_truth, roi, block_shape_vx, top_k
    )[segmentation.name]


def _result(
    table: OverlapTable,
    segmentation: Volume,
    ground_truth: Volume,
    roi: Roi,
    block_shape_vx: Coordinate,
    top_k: int,
) -> EvaluationResult:
    gt, seg, count, coord_sums = table.table()
    if count.size == 0:
        raise InputError(
            f"ground truth {ground_truth.name} has no labelled (non-zero) voxel in {roi}; "
            "nothing to score"
        )
    scores = table_scores(gt, seg, count)
    contributions = error_contributions(gt, seg, count)
    vs = np.asarray(list(ground_truth.voxel_size), np.float64)
    origin = np.asarray(list(roi.begin), np.float64)
    split = _worst(
        gt,
        seg,
        count,
        coord_sums,
        contributions.gt_ids,
        contributions.split_bits,
        top_k,
        vs,
        origin,
    )
    merge = _worst(
        seg,
        gt,
        count,
        coord_sums,
        contributions.seg_ids,
        contributions.merge_bits,
        top_k,
        vs,
        origin,
    )
    return EvaluationResult(
        segmentation=segmentation.name,
        ground_truth=ground_truth.name,
        roi=roi,
        voxel_size=ground_truth.voxel_size,
        block_shape_vx=block_shape_vx,
        scores=scores,
        num_segments=int(contributions.seg_ids.size),
        num_bodies=int(contributions.gt_ids.size),
        split_errors=split,
        merge_errors=merge,
    )


def _worst(
    own: NDArray[np.uint64],
    other: NDArray[np.uint64],
    count: NDArray[np.int64],
    coord_sums: NDArray[np.float64],
    ids: NDArray[np.uint64],
    bits: NDArray[np.float64],
    top_k: int,
    voxel_size: NDArray[np.float64],
    origin_nm: NDArray[np.float64],
) -> tuple[ErrorObject, ...]:
    """The ``top_k`` objects of ``ids`` with the largest ``bits`` (ties: smaller id first)."""
    order = np.lexsort((ids, -bits))[:top_k]
    objects = []
    for i in order:
        if bits[i] <= 0:
            break
        rows = np.flatnonzero(own == ids[i])
        size = int(count[rows].sum())
        centre_vx = coord_sums[rows].sum(axis=0) / size
        centre_nm = origin_nm + (centre_vx + 0.5) * voxel_size
        by_size = rows[np.lexsort((other[rows], -count[rows]))]
        partners = tuple((int(other[r]), int(count[r])) for r in by_size[:PARTNERS_PER_OBJECT])
        objects.append(
            ErrorObject(
                id=int(ids[i]),
                bits=float(bits[i]),
                size_vx=size,
                centre_nm=(float(centre_nm[0]), float(centre_nm[1]), float(centre_nm[2])),
                partners=partners,
                num_partners=int(rows.size),
            )
        )
    return tuple(objects)


def write_evaluation(result: EvaluationResult, json_path: Path, png_path: Path) -> None:
    """Write the JSON report and a PNG of the worst split and merge objects.

    The JSON is :meth:`EvaluationResult.to_json`. The plot has two bar charts:
    the bodies with the largest VOI split terms and the segments with the
    largest VOI merge terms (bits), the scores in the title.
    """
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    plot_errors(result, png_path)


def plot_errors(result: EvaluationResult, png_path: Path) -> None:
    """Bar charts of the worst split bodies and merging segments into ``png_path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for ax, objects, kind, colour in (
        (axes[0], result.split_errors, "splits: ground-truth bodies", "tab:blue"),
        (axes[1], result.merge_errors, "merges: segments", "tab:red"),
    ):
        labels = [str(o.id) for o in objects]
        ax.barh(range(len(objects)), [o.bits for o in objects], color=colour)
        ax.set_yticks(range(len(objects)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("contribution (bits)")
        ax.set_title(f"worst {kind}", fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)
        if not objects:
            ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
    s = result.scores
    fig.suptitle(
        f"VOI split {s.voi_split:.3f}  merge {s.voi_merge:.3f}  ARAND {s.arand:.3f}  "
        f"({s.num_voxels / 1e6:.2f} MVox)",
        fontsize=11,
    )
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path)
    plt.close(fig)


def run_evaluation_report(
    results: Mapping[float, EvaluationResult], run: str, **extra: Any
) -> dict[str, Any]:
    """The run's ``evaluation.json``: one entry per threshold, worst objects included.

    The schema the evaluate stage writes and :func:`blockwise.report.format_report`,
    ``blockwise view --segments worst`` and the HTML report read::

        {"run", "ground_truth", "roi_nm": {"offset", "shape"}, ...extra,
         "results": [{"threshold", **EvaluationResult.to_json()}, ...]}

    Raises:
        InputError: if ``results`` is empty or the results cover different
            regions or ground truths.
    """
    if not results:
        raise InputError("no evaluation results to report")
    first = next(iter(results.values()))
    for r in results.values():
        if r.roi != first.roi or r.ground_truth != first.ground_truth:
            raise InputError(
                f"results cover different regions or ground truths: {r.roi} of "
                f"{r.ground_truth} vs {first.roi} of {first.ground_truth}"
            )
    return {
        "run": run,
        "ground_truth": first.ground_truth,
        "roi_nm": {"offset": list(first.roi.offset), "shape": list(first.roi.shape)},
        **extra,
        "results": [{"threshold": float(t), **r.to_json()} for t, r in sorted(results.items())],
    }


def write_run_evaluation(
    results: Mapping[float, EvaluationResult],
    run: str,
    json_path: Path,
    png_path: Path,
    **extra: Any,
) -> dict[str, Any]:
    """Write :func:`run_evaluation_report` and a plot of VOI split against merge per threshold.

    Returns:
        The report written.
    """
    report = run_evaluation_report(results, run, **extra)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    ax.plot([r["voi_merge"] for r in rows], [r["voi_split"] for r in rows], "o-")
    for r in rows:
        ax.annotate(f"{r['threshold']:g}", (r["voi_merge"], r["voi_split"]), fontsize=8)
    ax.set_xlabel("VOI merge (bits)")
    ax.set_ylabel("VOI split (bits)")
    ax.set_title(f"{run}: split vs merge over thresholds")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path)
    plt.close(fig)
    return report
