"""Region-merging agglomeration of fragments (MALA / waterz), with merge scores per edge.

Fragments are merged greedily along the cheapest edge of their region
adjacency graph, where an edge's score is 1 minus a statistic of the
affinities on the faces between the two regions, and the statistic of the
edge between two merged regions is recomputed from the faces of both. This is
waterz's ``IterativeRegionMerging``, reproduced exactly (float32 arithmetic,
priority-queue tie-breaking): for every threshold ``t <= threshold``,
``segment(fragments, merge_regions(affs, fragments, threshold), t)`` is the
partition that ``waterz.agglomerate(affs, [t], fragments=fragments)`` gives
with the same scoring function and ``discretize_queue=0``.

Instead of one segmentation per threshold, :func:`merge_regions` returns the
region graph with a merge score per edge, so that any threshold up to the one
merged to can be cut later, e.g. per block, without merging again.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from blockwise.errors import InputError
from blockwise.kernels import _region_merging

__all__ = [
    "MAX_K",
    "RegionGraph",
    "RegionMergingInputError",
    "Scoring",
    "ScoringKind",
    "merge_regions",
    "segment",
]

logger = logging.getLogger(__name__)

ScoringKind = Literal["mean", "quantile", "histogram_quantile", "mean_max_k"]

_KINDS: tuple[str, ...] = ("mean", "quantile", "histogram_quantile", "mean_max_k")

#: The largest ``k`` of ``mean_max_k`` (``k`` is a runtime value in the kernel).
MAX_K: int = _region_merging.MAX_K


class RegionMergingInputError(InputError, ValueError):
    """The affinities, fragments, threshold or scoring given to region merging are invalid."""


@dataclass(frozen=True)
class Scoring:
    """How an edge between two regions is scored; merging goes cheapest first.

    The score is ``1 - statistic`` of the affinities (in [0, 1]) on the faces
    between the two regions; in waterz's terms ``OneMinus<...>`` of:

    * ``"mean"``: ``MeanAffinity``, the mean affinity.
    * ``"histogram_quantile"``: ``HistogramQuantileAffinity<..., quantile,
      ScoreValue, 256, init_with_max>``, the quantile of a 256-bin histogram
      of the affinities (bin centres as values).
    * ``"quantile"``: ``QuantileAffinity<..., quantile, ScoreValue,
      init_with_max>``, the exact quantile (keeps all face affinities in
      memory).
    * ``"mean_max_k"``: ``MeanMaxKAffinity<..., k, ScoreValue>``, the mean of
      the ``k`` largest affinities.

    Attributes:
        kind: which statistic.
        quantile: percentile 0..100, for ``"quantile"`` and
            ``"histogram_quantile"``.
        k: 1..64, for ``"mean_max_k"``.
        init_with_max: waterz's ``InitWithMax``, for the two quantile kinds: an
            edge that was never merged with another counts only the maximum of
            its face affinities. Without it, waterz's exact quantile of such an
            edge is the affinity at the quantile's position in scan order (not
            the sorted one), which is reproduced here.
    """

    kind: ScoringKind = "mean"
    quantile: int = 50
    k: int = 10
    init_with_max: bool = True


@dataclass(frozen=True)
class RegionGraph:
    """The region graph of a fragment volume, with the outcome of region merging.

    One entry per pair of 6-adjacent, different, non-zero fragments, sorted by
    ``(u, v)``.

    Attributes:
        u: smaller fragment id of each edge.
        v: larger fragment id of each edge (``u < v``).
        score: the edge's initial score, ``1 - statistic`` of its face
            affinities (float32, as waterz computes it).
        merge_score: the score level at which ``u`` and ``v`` first ended up in
            one region, NaN if they did not before the merge threshold. It is
            the running maximum of the scores popped off the queue up to that
            merge, so the partition ``union of all edges with merge_score < t``
            is waterz's ``mergeUntil(t)`` for every ``t`` up to the threshold;
            always NaN or below the threshold.
        n_merges: number of region merges done (edge contractions).
    """

    u: NDArray[np.uint64]
    v: NDArray[np.uint64]
    score: NDArray[np.float32]
    merge_score: NDArray[np.float32]
    n_merges: int


def merge_regions(
    affs: NDArray[np.float32],
    fragments: NDArray[np.uint64],
    threshold: float,
    scoring: Scoring = Scoring(),
) -> RegionGraph:
    """Merge fragments along their cheapest edges until the next edge scores >= ``threshold``.

    Args:
        affs: (3, z, y, x) float32 affinities in [0, 1]; channel d (0 = z,
            1 = y, 2 = x) at voxel p is the affinity between p and p - e_d.
        fragments: (z, y, x) uint64 fragment ids, any values; 0 is background
            and never part of an edge.
        threshold: score (in the units of ``1 - affinity``) at which merging
            stops; compared in float32, as waterz does.
        scoring: the edge scoring function.

    Returns:
        The region graph with each edge's initial score and merge score.

    Raises:
        RegionMergingInputError: (a ValueError) if the shapes or dtypes are not
            as documented, an affinity is not finite or outside [0, 1], the
            threshold is not finite, or the scoring parameters are out of range.
        OverflowError: if the region graph has 2**32 - 1 edges or more (the
            kernel numbers edges with 32 bits); split the volume into blocks.
    """
    _check_volumes(affs, fragments)
    _check_scoring(scoring)
    threshold_f32 = _check_threshold(threshold)

    # both arrays are only read by the kernel; no copy if already C-contiguous
    affs_c = np.ascontiguousarray(affs)
    fragments_c = np.ascontiguousarray(fragments)
    _check_affinity_range(affs_c)

    logger.debug(
        "merging regions of %s fragments volume until %s with %s",
        fragments.shape,
        threshold_f32,
        scoring,
    )
    u, v, score, merge_score, n_merges = _region_merging.merge_regions(
        affs_c,
        fragments_c,
        float(threshold_f32),
        scoring.kind,
        int(scoring.quantile),
        int(scoring.k),
        bool(scoring.init_with_max),
    )
    logger.debug("region graph of %d edges, %d merges", u.size, n_merges)
    return RegionGraph(u=u, v=v, score=score, merge_score=merge_score, n_merges=int(n_merges))


def segment(
    fragments: NDArray[np.uint64], graph: RegionGraph, threshold: float
) -> NDArray[np.uint64]:
    """Label the partition of ``fragments`` at ``threshold``.

    Regions are the connected components of the edges with
    ``merge_score < threshold`` (compared in float32). For ``threshold`` up to
    the one ``graph`` was merged to, this is the segmentation waterz gives at
    that threshold; above it, the one at the merge threshold.

    Args:
        fragments: (z, y, x) uint64 fragments that ``graph`` was built from.
        graph: the result of :func:`merge_regions` on ``fragments``.
        threshold: the score level to cut at.

    Returns:
        A new (z, y, x) uint64 volume in which every voxel holds the smallest
        fragment id of its region; 0 stays 0, and fragments without edges keep
        their ids.

    Raises:
        RegionMergingInputError: if ``fragments`` is not a 3D uint64 array or
            ``threshold`` is not finite.
    """
    _check_array("fragments", fragments, np.dtype(np.uint64), ndim=3)
    threshold_f32 = _check_threshold(threshold)

    flat = _region_merging.segment(
        np.ascontiguousarray(fragments).reshape(-1),
        np.ascontiguousarray(graph.u, dtype=np.uint64),
        np.ascontiguousarray(graph.v, dtype=np.uint64),
        np.ascontiguousarray(graph.merge_score, dtype=np.float32),
        float(threshold_f32),
    )
    return flat.reshape(fragments.shape)


def _check_array(name: str, array: object, dtype: np.dtype, ndim: int) -> None:
    if not isinstance(array, np.ndarray):
        raise RegionMergingInputError(
            f"{name} must be a numpy array, received {type(array).__name__}"
        )
    if array.ndim != ndim:
        raise RegionMergingInputError(
            f"{name} must be {ndim}D, received {array.ndim}D with shape {array.shape}"
        )
    if array.dtype != dtype:
        raise RegionMergingInputError(
            f"{name} must have dtype {dtype}, received {array.dtype}"
            + (" (convert with .astype(np.float32))" if dtype == np.float32 else "")
        )


def _check_volumes(affs: NDArray[np.float32], fragments: NDArray[np.uint64]) -> None:
    _check_array("affs", affs, np.dtype(np.float32), ndim=4)
    _check_array("fragments", fragments, np.dtype(np.uint64), ndim=3)
    if affs.shape[0] != 3:
        raise RegionMergingInputError(
            f"affs must have 3 channels (offsets (-1,0,0), (0,-1,0), (0,0,-1)) in the "
            f"shape (3, z, y, x), received {affs.shape[0]} channels (shape {affs.shape})"
        )
    if affs.shape[1:] != fragments.shape:
        raise RegionMergingInputError(
            f"affs of shape {affs.shape} must have the spatial shape of fragments "
            f"{fragments.shape}, i.e. (3, *fragments.shape)"
        )


def _check_affinity_range(affs: NDArray[np.float32]) -> None:
    if affs.size == 0:
        return
    low = float(affs.min())
    high = float(affs.max())
    if math.isnan(low) or math.isnan(high):
        raise RegionMergingInputError(
            f"affs hold NaN at {int(np.isnan(affs).sum())} of {affs.size} entries; "
            "expected affinities in [0, 1]"
        )
    if not (low >= 0.0 and high <= 1.0):
        raise RegionMergingInputError(
            f"affs must lie in [0, 1] (finite), received values from {low} to {high}"
        )


def _check_threshold(threshold: object) -> np.float32:
    if isinstance(threshold, bool) or not isinstance(threshold, int | float | np.number):
        raise RegionMergingInputError(f"threshold must be a finite number, received {threshold!r}")
    if not math.isfinite(float(threshold)):
        raise RegionMergingInputError(f"threshold must be finite, received {threshold!r}")
    return np.float32(threshold)


def _check_scoring(scoring: object) -> None:
    if not isinstance(scoring, Scoring):
        raise RegionMergingInputError(
            f"scoring must be a Scoring, received {type(scoring).__name__}"
        )
    if scoring.kind not in _KINDS:
        raise RegionMergingInputError(
            f"scoring.kind must be one of {list(_KINDS)}, received {scoring.kind!r}"
        )
    if scoring.kind in ("quantile", "histogram_quantile"):
        quantile = scoring.quantile
        if not _is_int(quantile) or not 0 <= quantile <= 100:
            raise RegionMergingInputError(
                f"scoring.quantile must be an integer percentile in 0..100, received {quantile!r}"
            )
    if scoring.kind == "mean_max_k":
        k = scoring.k
        if not _is_int(k) or not 1 <= k <= MAX_K:
            raise RegionMergingInputError(
                f"scoring.k must be an integer in 1..{MAX_K}, received {k!r}"
            )


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)
