"""Segmentation metrics from a sparse contingency table.

The table counts voxels per (ground-truth label, segment) pair; it is built
chunk by chunk and never densified, so its size is the number of overlapping
pairs, not labels x labels. Definitions follow scikit-image
(``variation_of_information``, ``adapted_rand_error``): entropies in bits,
ground-truth label 0 ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray


@dataclass
class Contingency:
    """Voxel counts of (ground truth, segmentation) label pairs, accumulated by chunk."""

    _gt: list[NDArray[np.uint64]] = field(default_factory=list)
    _seg: list[NDArray[np.uint64]] = field(default_factory=list)
    _count: list[NDArray[np.int64]] = field(default_factory=list)

    def add(self, ground_truth: NDArray[np.integer], segmentation: NDArray[np.integer]) -> None:
        """Count the voxels of one chunk; ground-truth label 0 is ignored.

        Raises:
            ValueError: if the arrays' shapes differ.
        """
        if ground_truth.shape != segmentation.shape:
            raise ValueError(
                f"ground truth has shape {ground_truth.shape}, segmentation "
                f"{segmentation.shape}; they must match"
            )
        gt = ground_truth.ravel().astype(np.uint64)
        seg = segmentation.ravel().astype(np.uint64)
        keep = gt != 0
        gt, seg = gt[keep], seg[keep]
        if gt.size == 0:
            return
        order = np.lexsort((seg, gt))
        gt, seg = gt[order], seg[order]
        starts = np.flatnonzero(np.r_[True, (gt[1:] != gt[:-1]) | (seg[1:] != seg[:-1])])
        counts = np.diff(np.r_[starts, gt.size])
        self._append(gt[starts], seg[starts], counts.astype(np.int64))

    def _append(
        self, gt: NDArray[np.uint64], seg: NDArray[np.uint64], count: NDArray[np.int64]
    ) -> None:
        self._gt.append(gt)
        self._seg.append(seg)
        self._count.append(count)
        if len(self._gt) > 64:
            self._compact()

    def _compact(self) -> None:
        if len(self._gt) <= 1:
            return
        gt = np.concatenate(self._gt)
        seg = np.concatenate(self._seg)
        count = np.concatenate(self._count)
        order = np.lexsort((seg, gt))
        gt, seg, count = gt[order], seg[order], count[order]
        starts = np.flatnonzero(np.r_[True, (gt[1:] != gt[:-1]) | (seg[1:] != seg[:-1])])
        self._gt = [gt[starts]]
        self._seg = [seg[starts]]
        self._count = [np.add.reduceat(count, starts)]

    def table(self) -> tuple[NDArray[np.uint64], NDArray[np.uint64], NDArray[np.int64]]:
        """The merged (gt, seg, count) triples, sorted by (gt, seg)."""
        if not self._gt:
            empty = np.zeros(0, np.uint64)
            return empty, empty, np.zeros(0, np.int64)
        self._compact()
        return self._gt[0], self._seg[0], self._count[0]


@dataclass(frozen=True)
class Scores:
    """VOI split/merge (bits) and adapted Rand error of one segmentation."""

    voi_split: float
    voi_merge: float
    arand: float
    num_voxels: int


def _marginal(labels: NDArray[np.uint64], count: NDArray[np.int64]) -> NDArray[np.float64]:
    """Per-pair total of the pair's label, e.g. the size of its gt body."""
    _, inverse = np.unique(labels, return_inverse=True)
    sums = np.bincount(inverse, weights=count.astype(np.float64))
    return np.asarray(sums[inverse], dtype=np.float64)


def scores(contingency: Contingency) -> Scores:
    """VOI split = H(seg | gt), VOI merge = H(gt | seg), and the adapted Rand error.

    Raises:
        ValueError: if no voxel with a ground-truth label was counted.
    """
    return table_scores(*contingency.table())


def table_scores(
    gt: NDArray[np.uint64], seg: NDArray[np.uint64], count: NDArray[np.int64]
) -> Scores:
    """:func:`scores` of a sparse table of (gt, seg, voxel count) triples.

    Args:
        gt: ground-truth label of each pair (0 must already be left out).
        seg: segment id of each pair.
        count: voxels of each pair; each (gt, seg) pair appears once.

    Raises:
        ValueError: if the table counts no voxel.
    """
    total = int(count.sum())
    if total == 0:
        raise ValueError("no voxel with a non-zero ground-truth label was counted")
    n = count.astype(np.float64)
    p = n / total
    gt_size = _marginal(gt, count)
    seg_size = _marginal(seg, count)
    voi_split = float(-np.sum(p * np.log2(n / gt_size)))
    voi_merge = float(-np.sum(p * np.log2(n / seg_size)))
    _, gt_first = np.unique(gt, return_index=True)
    _, seg_first = np.unique(seg, return_index=True)
    sum_pairs = float(n @ n - total)
    sum_gt = float(gt_size[gt_first] @ gt_size[gt_first] - total)
    sum_seg = float(seg_size[seg_first] @ seg_size[seg_first] - total)
    denominator = 0.5 * sum_gt + 0.5 * sum_seg
    arand = 1.0 - sum_pairs / denominator if denominator > 0 else 0.0
    return Scores(voi_split, voi_merge, arand, total)


@dataclass(frozen=True)
class ErrorContributions:
    """How much each object adds to VOI split and VOI merge (bits).

    VOI split is a sum over ground-truth bodies g of
    ``-sum_s p(g, s) log2(p(g, s) / p(g))`` (how badly g is cut into
    segments); VOI merge the same sum over segments s with the roles swapped
    (how many bodies s joins). The per-object terms add up to the totals.

    Attributes:
        gt_ids: ground-truth bodies, ascending.
        split_bits: each body's term of VOI split.
        seg_ids: segments, ascending.
        merge_bits: each segment's term of VOI merge.
    """

    gt_ids: NDArray[np.uint64]
    split_bits: NDArray[np.float64]
    seg_ids: NDArray[np.uint64]
    merge_bits: NDArray[np.float64]


def error_contributions(
    gt: NDArray[np.uint64], seg: NDArray[np.uint64], count: NDArray[np.int64]
) -> ErrorContributions:
    """Per-body VOI split and per-segment VOI merge terms of a sparse table.

    Raises:
        ValueError: if the table counts no voxel.
    """
    total = int(count.sum())
    if total == 0:
        raise ValueError("no voxel with a non-zero ground-truth label was counted")
    n = count.astype(np.float64)
    p = n / total
    gt_ids, gt_inverse = np.unique(gt, return_inverse=True)
    seg_ids, seg_inverse = np.unique(seg, return_inverse=True)
    gt_size = np.bincount(gt_inverse, weights=n)[gt_inverse]
    seg_size = np.bincount(seg_inverse, weights=n)[seg_inverse]
    split_terms = -p * np.log2(n / gt_size)
    merge_terms = -p * np.log2(n / seg_size)
    split_bits = np.bincount(gt_inverse, weights=split_terms, minlength=gt_ids.size)
    merge_bits = np.bincount(seg_inverse, weights=merge_terms, minlength=seg_ids.size)
    return ErrorContributions(
        gt_ids.astype(np.uint64),
        np.maximum(split_bits, 0.0),
        seg_ids.astype(np.uint64),
        np.maximum(merge_bits, 0.0),
    )
