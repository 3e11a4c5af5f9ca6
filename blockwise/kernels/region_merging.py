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

Two additions serve block-wise processing:

* Forced edges: fragments that are halves of one basin cut by a block face
  are merged first, before any scored merge (``forced_pairs`` of
  :func:`merge_regions`, ``forced`` of :func:`merge_graph`).
* Statistics: :func:`merge_regions` can return each edge's initial statistic
  (the state the scoring keeps for the edge's own faces) as bytes, and
  :func:`merge_graph` merges a region graph given by its edges and those
  statistics, without a volume, by the same algorithm: on the graph of a
  volume with its statistics it gives bitwise the same result as
  :func:`merge_regions` on the volume. A block sees all faces of an edge if
  its read ROI (write ROI plus one voxel) contains one of the edge's two
  fragments, and then computes the same statistic as a scan of the whole
  volume, since restricting the scan to a box keeps the order of the faces
  inside it; the edges of all blocks, each with its statistic, can then be
  merged globally by :func:`merge_graph`.

Statistic blobs (little-endian; format version 1). Byte 0 is the tag
``(1 << 4) | (init_with_max << 3) | kind`` with kind 0 ``"mean"``, 1
``"histogram_quantile"``, 2 ``"quantile"``, 3 ``"mean_max_k"`` (the
``init_with_max`` bit only for the two quantile kinds: 0x10, 0x11 or 0x19,
0x12 or 0x1A, 0x13); then:

* ``"mean"`` (13 bytes): float32 running mean (as the kernel computes it, in
  scan order), uint64 number of faces.
* ``"histogram_quantile"`` (1 + 5 n bytes): the n >= 1 non-empty bins of the
  256-bin histogram in increasing order, each uint8 bin index, uint32 count.
  With ``init_with_max``: one bin (of the largest affinity), count 1.
* ``"quantile"`` (1 + 4 n bytes): the n >= 1 float32 face affinities in scan
  order (z, y, x, then channel). With ``init_with_max``: one, the largest.
* ``"mean_max_k"`` (1 + 4 k bytes): the k largest float32 face affinities,
  descending, padded with the lowest float32 (-3.4028235e38) if the edge has
  fewer than k faces.

All floats are finite. The quantile is not part of the state, so one blob
serves every quantile; the kind, ``init_with_max`` and ``k`` are, and a blob
that does not fit the scoring is rejected.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
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
    "merge_graph",
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
            always NaN or below the threshold. Edges joined by forced merges
            (see :func:`merge_regions`) get 0.0 (they are in every cut at a
            threshold > 0) and do not count in the running maximum.
        n_merges: number of region merges done (edge contractions), forced
            ones included.
        statistics: per edge, the serialized statistic of the edge's own
            faces before any merge (format in the module docstring), if
            asked for; None otherwise.
    """

    u: NDArray[np.uint64]
    v: NDArray[np.uint64]
    score: NDArray[np.float32]
    merge_score: NDArray[np.float32]
    n_merges: int
    statistics: tuple[bytes, ...] | None = None


def merge_regions(
    affs: NDArray[np.float32],
    fragments: NDArray[np.uint64],
    threshold: float,
    scoring: Scoring = Scoring(),
    *,
    forced_pairs: tuple[NDArray[np.uint64], NDArray[np.uint64]] | None = None,
    with_statistics: bool = False,
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
        forced_pairs: ``(a, b)``, two equally long 1D integer arrays of
            fragment ids: the edge between ``a[i]`` and ``b[i]`` (either order)
            is merged before any scored merge, whatever its score. Forced
            edges enter the queue with the score -inf and pop in edge order;
            each is contracted like any merge (its regions' parallel edges
            combined, the survivors marked stale), so that the halves of a
            basin cut by a block face end up as if they had been one
            fragment, except that the statistic of a combined edge comes from
            the edge-merge formula (exact for the histogram, rounded
            differently than one scan for the float mean; with
            ``init_with_max`` each half contributes its own maximum). A pair
            that is no edge of the region graph (the fragments do not touch,
            an id is absent or 0, or ``a[i] == b[i]``) is ignored. None or
            empty: no forced edges, the result is waterz's.
        with_statistics: whether to return each edge's initial statistic in
            ``statistics`` (for :func:`merge_graph`).

    Returns:
        The region graph with each edge's initial score and merge score. A
        forced edge keeps its real initial ``score``; the edges merged by the
        forced merges get the ``merge_score`` 0.0, and they do not raise the
        running maximum of later merge scores.

    Raises:
        RegionMergingInputError: (a ValueError) if the shapes or dtypes are not
            as documented, an affinity is not finite or outside [0, 1], the
            threshold is not finite, the scoring parameters are out of range,
            or ``forced_pairs`` is not two equally long 1D arrays of
            non-negative integers.
        OverflowError: if the region graph has 2**32 - 1 edges or more (the
            kernel numbers edges with 32 bits); split the volume into blocks.
    """
    _check_volumes(affs, fragments)
    _check_scoring(scoring)
    threshold_f32 = _check_threshold(threshold)
    forced_u, forced_v = _check_forced_pairs(forced_pairs)

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
    u, v, score, merge_score, n_merges, statistics = _region_merging.merge_regions(
        affs_c,
        fragments_c,
        float(threshold_f32),
        scoring.kind,
        int(scoring.quantile),
        int(scoring.k),
        bool(scoring.init_with_max),
        forced_u,
        forced_v,
        bool(with_statistics),
    )
    logger.debug("region graph of %d edges, %d merges", u.size, n_merges)
    return RegionGraph(
        u=u,
        v=v,
        score=score,
        merge_score=merge_score,
        n_merges=int(n_merges),
        statistics=statistics,
    )


def merge_graph(
    u: NDArray[np.uint64],
    v: NDArray[np.uint64],
    statistics: Sequence[bytes],
    threshold: float,
    scoring: Scoring = Scoring(),
    *,
    forced: NDArray[np.bool_] | None = None,
) -> RegionGraph:
    """Merge a region graph given by its edges and their statistics, as :func:`merge_regions`.

    The edges are numbered in sorted ``(u, v)`` order, as a scan of a volume
    numbers them, and each starts with the statistic of its blob, so on the
    graph and statistics of ``merge_regions(..., with_statistics=True)`` this
    returns bitwise the same ``u``, ``v``, ``score`` and ``merge_score``; the
    edges of several blocks, each with the statistic of a block that saw all
    its faces, merge as the whole volume would.

    Args:
        u: smaller fragment id of each edge, > 0 (any integer dtype).
        v: larger fragment id of each edge (``u < v``); the pairs must be
            unique, in any order.
        statistics: per edge, its initial statistic as
            :attr:`RegionGraph.statistics` holds it (format in the module
            docstring), made with this scoring's kind, ``init_with_max`` and
            ``k``.
        threshold: score at which merging stops, as for :func:`merge_regions`.
        scoring: the edge scoring function.
        forced: per edge, whether it is merged before all scored merges, as
            ``forced_pairs`` of :func:`merge_regions`.

    Returns:
        The merged region graph, edges sorted by ``(u, v)`` (``forced`` and
        ``statistics`` are taken in the order given), with ``statistics``
        None.

    Raises:
        RegionMergingInputError: (a ValueError) if ``u``, ``v``, ``statistics``
            and ``forced`` differ in length, an id is not a positive integer,
            ``u >= v`` or a pair repeats, a statistic is not bytes or does not
            fit the scoring (wrong kind, size, format version, or
            ``init_with_max``/``k``), the threshold is not finite, or the
            scoring parameters are out of range.
        OverflowError: if the graph has 2**32 - 1 edges or nodes or more.
    """
    _check_scoring(scoring)
    threshold_f32 = _check_threshold(threshold)
    u_c = _check_ids("u", u)
    v_c = _check_ids("v", v)
    n_edges = u_c.size
    if v_c.size != n_edges:
        raise RegionMergingInputError(
            f"u and v must have one entry per edge, received {n_edges} and {v_c.size}"
        )
    if isinstance(statistics, bytes | str) or not isinstance(statistics, Sequence):
        raise RegionMergingInputError(
            f"statistics must be a sequence of bytes (one per edge), "
            f"received {type(statistics).__name__}"
        )
    if len(statistics) != n_edges:
        raise RegionMergingInputError(
            f"statistics must hold one blob per edge ({n_edges}), received {len(statistics)}"
        )
    forced_c = None
    if forced is not None:
        _check_array("forced", forced, np.dtype(np.bool_), ndim=1)
        if forced.size != n_edges:
            raise RegionMergingInputError(
                f"forced must hold one entry per edge ({n_edges}), received {forced.size}"
            )
        forced_c = forced
    if np.any(u_c >= v_c):
        i = int(np.flatnonzero(u_c >= v_c)[0])
        raise RegionMergingInputError(
            f"edges must have u < v, received u[{i}] = {u_c[i]} and v[{i}] = {v_c[i]}"
        )

    order = np.lexsort((v_c, u_c))
    u_sorted = u_c[order]
    v_sorted = v_c[order]
    repeated = (u_sorted[1:] == u_sorted[:-1]) & (v_sorted[1:] == v_sorted[:-1])
    if np.any(repeated):
        j = int(np.flatnonzero(repeated)[0])
        first, second = sorted((int(order[j]), int(order[j + 1])))
        raise RegionMergingInputError(
            f"edges must be unique, but edges {first} and {second} are both "
            f"({u_sorted[j]}, {v_sorted[j]})"
        )

    lengths = np.fromiter(map(_blob_length, statistics), dtype=np.uint64, count=n_edges)
    begin = np.zeros(n_edges + 1, dtype=np.uint64)
    np.cumsum(lengths, out=begin[1:])
    try:
        data = np.frombuffer(b"".join(statistics), dtype=np.uint8)
    except TypeError as e:
        raise RegionMergingInputError(
            f"statistics must hold bytes, one blob per edge, as RegionGraph.statistics: {e}"
        ) from e
    if data.size != int(begin[-1]):
        raise RegionMergingInputError(
            "statistics must hold bytes (or byte buffers), one blob per edge, as "
            "RegionGraph.statistics"
        )

    logger.debug(
        "merging a region graph of %d edges until %s with %s", n_edges, threshold_f32, scoring
    )
    try:
        u_out, v_out, score, merge_score, n_merges = _region_merging.merge_graph(
            u_sorted,
            v_sorted,
            data,
            begin,
            order.astype(np.uint64),
            None if forced_c is None else forced_c[order].view(np.uint8),
            float(threshold_f32),
            scoring.kind,
            int(scoring.quantile),
            int(scoring.k),
            bool(scoring.init_with_max),
        )
    except ValueError as e:
        # the kernel checks the blobs' content: a bad statistic
        raise RegionMergingInputError(f"{e} (scoring {scoring})") from e
    logger.debug("merged region graph: %d merges", n_merges)
    return RegionGraph(
        u=u_out, v=v_out, score=score, merge_score=merge_score, n_merges=int(n_merges)
    )


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


def _blob_length(blob: object) -> int:
    # a memoryview's len() counts items, not bytes; join() takes its bytes
    if isinstance(blob, memoryview):
        return blob.nbytes
    if not isinstance(blob, bytes | bytearray):
        raise RegionMergingInputError(
            f"statistics must hold bytes, one blob per edge, received a {type(blob).__name__}"
        )
    return len(blob)


def _check_ids(name: str, ids: object) -> NDArray[np.uint64]:
    """1D positive integer fragment ids, as C-contiguous uint64."""
    if not isinstance(ids, np.ndarray):
        raise RegionMergingInputError(
            f"{name} must be a numpy array, received {type(ids).__name__}"
        )
    if ids.ndim != 1 or ids.dtype.kind not in "ui":
        raise RegionMergingInputError(
            f"{name} must be a 1D integer array of fragment ids, received "
            f"{ids.ndim}D {ids.dtype} with shape {ids.shape}"
        )
    if ids.size > 0 and ids.dtype.kind == "i" and ids.min() <= 0:
        raise RegionMergingInputError(f"{name} must hold fragment ids > 0, received {ids.min()}")
    if ids.size > 0 and ids.dtype.kind == "u" and ids.min() == 0:
        raise RegionMergingInputError(f"{name} must hold fragment ids > 0, received 0")
    return np.ascontiguousarray(ids, dtype=np.uint64)


def _check_forced_pairs(
    forced_pairs: object,
) -> tuple[NDArray[np.uint64], NDArray[np.uint64]]:
    """The two id arrays of ``forced_pairs`` (empty for None), as C-contiguous uint64."""
    if forced_pairs is None:
        empty = np.zeros(0, dtype=np.uint64)
        return empty, empty
    if not isinstance(forced_pairs, tuple | list) or len(forced_pairs) != 2:
        raise RegionMergingInputError(
            "forced_pairs must be a pair (a, b) of 1D integer arrays of fragment ids, "
            f"received {type(forced_pairs).__name__}"
        )
    arrays = []
    for name, ids in zip(("forced_pairs[0]", "forced_pairs[1]"), forced_pairs, strict=True):
        if not isinstance(ids, np.ndarray) or ids.ndim != 1 or ids.dtype.kind not in "ui":
            raise RegionMergingInputError(
                f"{name} must be a 1D integer numpy array of fragment ids, received "
                + (
                    f"{ids.ndim}D {ids.dtype}"
                    if isinstance(ids, np.ndarray)
                    else type(ids).__name__
                )
            )
        if ids.size > 0 and ids.dtype.kind == "i" and ids.min() < 0:
            raise RegionMergingInputError(
                f"{name} must hold fragment ids >= 0, received {ids.min()}"
            )
        arrays.append(np.ascontiguousarray(ids, dtype=np.uint64))
    if arrays[0].size != arrays[1].size:
        raise RegionMergingInputError(
            f"forced_pairs must be two arrays of the same length, received "
            f"{arrays[0].size} and {arrays[1].size}"
        )
    return arrays[0], arrays[1]


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
