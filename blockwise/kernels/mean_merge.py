"""One task of the exact hierarchical mean-affinity agglomeration (../shared/AGGLOMERATION.md).

Clusters (sets of fragments) are merged greedily along their best edge. A
cluster edge carries integer statistics: ``S``, the sum of the uint8
affinities (0..255) on the contacts between the two clusters, ``N``, the
number of those affinity edges, and ``tau``, a tie key. Its score (the
"height" of a merge along it) is ``1 - S / (255 N)``, in [0, 1].

Merge order, a strict total order that survives merging:

* a larger mean ``S / N`` (a lower score) is better, compared exactly as
  ``S1 * N2`` vs ``S2 * N1`` in 128-bit integers;
* on equal means, the larger ``tau`` is better.

``tau`` is a 128-bit key given as two uint64 words ``(tau_hi, tau_lo)``,
compared lexicographically. A fragment edge ``(u, v)`` has the key
``(min(u, v), max(u, v))`` (:func:`fragment_edge_keys`); a cluster edge has
the largest key of the fragment edges inside it. Merging two cluster edges
gives ``(S1 + S2, N1 + N2, max(tau1, tau2))``, so the merged key lies between
the two and a mutually best pair stays mutually best whatever merges
elsewhere. (A tie-break on cluster ids, which change under merging, would not.)

Cluster ids: a fragment's cluster starts with the fragment's id; when clusters
``a < b`` merge, the merged cluster keeps the id ``a``, so a cluster's id is
always the smallest fragment id inside it, whatever the order of merges.

A cluster whose level ``lambda`` (the highest level of an edge of any of its
fragments) exceeds the task's octree level ``L`` may still receive edges from
outside the task ("open"). Without future bounds it is frozen (never merged,
and it blocks the partner of every edge of it taken from the queue); with
them it merges along an edge that beats every edge it can still receive; see
:func:`merge_task`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from numpy.typing import NDArray

from blockwise.errors import InputError
from blockwise.kernels import _mean_merge

__all__ = [
    "MAX_TOTAL_COUNT",
    "UNKNOWN_FUTURE",
    "ClusterEdges",
    "MeanMergeInputError",
    "TaskOutput",
    "fragment_edge_keys",
    "future_bound_codes",
    "merge_bound",
    "merge_task",
    "scores",
    "scores_below",
]

logger = logging.getLogger(__name__)

#: The sum of ``N`` over all edges of one task must stay below this (2**56),
#: which keeps every sum in 64 bits and every comparison in 128 bits.
MAX_TOTAL_COUNT: int = _mean_merge.MAX_TOTAL_COUNT

#: The future bound of a cluster that may receive any edge (no bound known).
UNKNOWN_FUTURE: int = _mean_merge.UNKNOWN_FUTURE

#: Future bounds are fixed point with this many fraction bits: see
#: :func:`future_bound_codes`.
FUTURE_SHIFT = 24

_EDGE_FIELDS = ("a", "b", "s", "n", "tau_hi", "tau_lo")
_U64_LIMIT = 2**64


class MeanMergeInputError(InputError, ValueError):
    """The clusters, edges, level or bound given to a mean-merge task are invalid."""


@dataclass(frozen=True)
class ClusterEdges:
    """Edges between clusters with their integer statistics, as parallel uint64 arrays.

    Used for a task's input edges, its merge records, its residual edges and
    its dropped edges.

    Attributes:
        a: one cluster id per edge (the smaller one in every kernel output).
        b: the other cluster id (the larger one in every kernel output).
        s: sum of the uint8 affinities (0..255) on the edge's contacts.
        n: number of affinity edges on the contacts (>= 1).
        tau_hi: high word of the tie key (largest fragment-edge key inside).
        tau_lo: low word of the tie key.
    """

    a: NDArray[np.uint64]
    b: NDArray[np.uint64]
    s: NDArray[np.uint64]
    n: NDArray[np.uint64]
    tau_hi: NDArray[np.uint64]
    tau_lo: NDArray[np.uint64]

    def __len__(self) -> int:
        """Return the number of edges."""
        return int(self.a.shape[0])

    @classmethod
    def empty(cls) -> ClusterEdges:
        """Return an edge set without edges."""
        return cls(*(np.zeros(0, dtype=np.uint64) for _ in _EDGE_FIELDS))

    @classmethod
    def concatenate(cls, parts: list[ClusterEdges]) -> ClusterEdges:
        """Return the edges of all ``parts``, in order."""
        if not parts:
            return cls.empty()
        return cls(
            *(
                np.concatenate([getattr(part, name) for part in parts]).astype(
                    np.uint64, copy=False
                )
                for name in _EDGE_FIELDS
            )
        )

    def take(self, index: NDArray[np.integer] | slice) -> ClusterEdges:
        """Return the edges selected by ``index`` (an index array, bool mask or slice)."""
        return ClusterEdges(
            *(np.ascontiguousarray(getattr(self, name)[index]) for name in _EDGE_FIELDS)
        )

    def arrays(self) -> dict[str, NDArray[np.uint64]]:
        """Return the six arrays by field name."""
        return {name: getattr(self, name) for name in _EDGE_FIELDS}

    def total_count(self) -> int:
        """Return the sum of ``n`` (exact, as a Python int)."""
        return int(self.n.sum(dtype=np.uint64)) if len(self) else 0


@dataclass(frozen=True)
class TaskOutput:
    """What one task produced.

    Attributes:
        records: the merges in the order done; edge ``i`` merged the clusters
            ``records.a[i] < records.b[i]`` along a cluster edge with the
            statistics ``s[i], n[i], tau[i]``; the merged cluster keeps the id
            ``a[i]``. Its height is ``scores(s, n)``.
        residual_ids: the clusters that are blocked or open (may still receive
            edges), sorted by id.
        residual_levels: each residual cluster's level lambda (uint8).
        residual_futures: (C, K) uint32 future bounds of the residual
            clusters (K = 0 if the task had none).
        residual_edges: every edge between two residual clusters, whatever its
            score, ``a < b``, sorted by ``(a, b)``.
        dropped: every other remaining edge: it touches a cluster that is done
            (neither blocked nor open; no edge of it scores below the bound,
            now or after any later merge). ``a < b``, in the order of the
            merged input edges.
        n_stale_pops: heap entries skipped as outdated (a cost measure).
    """

    records: ClusterEdges
    residual_ids: NDArray[np.uint64]
    residual_levels: NDArray[np.uint8]
    residual_futures: NDArray[np.uint32]
    residual_edges: ClusterEdges
    dropped: ClusterEdges
    n_stale_pops: int


def fragment_edge_keys(
    u: NDArray[np.uint64], v: NDArray[np.uint64]
) -> tuple[NDArray[np.uint64], NDArray[np.uint64]]:
    """Return the tie keys ``(tau_hi, tau_lo) = (min(u, v), max(u, v))`` of fragment edges.

    The key is unique per unordered fragment pair and depends on nothing else,
    so every task and the single-process reference derive the same one.

    Args:
        u: fragment ids, uint64.
        v: fragment ids, uint64, as many as ``u``.

    Returns:
        Two new C-contiguous uint64 arrays.
    """
    _check_u64("u", u)
    _check_u64("v", v, length=u.shape[0])
    return np.minimum(u, v), np.maximum(u, v)


def future_bound_codes(s: NDArray[np.uint64], n: NDArray[np.uint64]) -> NDArray[np.uint32]:
    """Return the future-bound code ``1 + ceil(2**24 s / n)`` of each edge, exactly.

    The code ``c`` stands for the mean affinity ``(c - 1) / 2**24``, rounded up
    from ``s / n``: an edge (S, N) beats it iff ``2**24 S > (c - 1) N``, which
    implies that its mean exceeds ``s / n``. Codes lie in 1 .. 255 * 2**24 + 1;
    a cluster's future bound is the largest code of the edges below the merge
    bound that it can still receive (0: none).

    Args:
        s: (E,) uint64 affinity sums, ``s <= 255 n``.
        n: (E,) uint64 counts, ``n >= 1``.

    Raises:
        MeanMergeInputError: if the arrays are not as documented.
    """
    _check_u64("s", s)
    _check_u64("n", n, length=s.shape[0])
    if s.size == 0:
        return np.zeros(0, dtype=np.uint32)
    if int(n.min()) < 1 or np.any(s > n * np.uint64(255)):
        raise MeanMergeInputError("future_bound_codes needs n >= 1 and s <= 255 n")
    if int(s.max()) < 2 ** (64 - FUTURE_SHIFT - 1) and int(n.max()) < 2**39:
        scaled = (s << np.uint64(FUTURE_SHIFT)) + n - np.uint64(1)
        codes = scaled // n + np.uint64(1)
    else:  # exact with Python integers
        codes = np.array(
            [
                -((-(int(a) << FUTURE_SHIFT)) // int(b)) + 1
                for a, b in zip(s.tolist(), n.tolist(), strict=True)
            ],
            dtype=np.uint64,
        )
    return codes.astype(np.uint32)


def merge_bound(threshold: float | Fraction) -> Fraction:
    """Return the exact merge bound of a threshold: merges happen at scores below it.

    A float threshold is taken at its exact binary value. Scores lie in
    [0, 1], so any bound <= 0 merges nothing (returned as 0) and any bound > 1
    merges everything (returned as 2).

    Args:
        threshold: the score threshold, a finite float or a Fraction.

    Returns:
        The bound as a Fraction whose numerator and denominator fit in uint64.

    Raises:
        MeanMergeInputError: if the threshold is not a finite number, or its
            exact value needs a denominator of 2**64 or more (a float below
            about 2**-11 with many significant bits, e.g. 1e-4: pass a
            Fraction with a smaller denominator instead).
    """
    if isinstance(threshold, bool) or not isinstance(
        threshold, int | float | Fraction | np.floating | np.integer
    ):
        raise MeanMergeInputError(
            f"threshold must be a finite float or a Fraction, received {threshold!r}"
        )
    if not isinstance(threshold, Fraction) and not math.isfinite(float(threshold)):
        raise MeanMergeInputError(f"threshold must be finite, received {threshold!r}")
    exact = Fraction(threshold) if not isinstance(threshold, Fraction) else threshold
    if exact <= 0:
        return Fraction(0)
    if exact > 1:
        return Fraction(2)
    if exact.denominator >= _U64_LIMIT:
        raise MeanMergeInputError(
            f"threshold {threshold!r} is exactly {exact}, whose denominator does not fit "
            "in 64 bits; pass a Fraction with a denominator below 2**64"
        )
    return exact


def merge_task(
    ids: NDArray[np.uint64],
    levels: NDArray[np.uint8],
    level: int,
    edges: ClusterEdges | Sequence[ClusterEdges],
    bound: Fraction,
    futures: NDArray[np.uint32] | None = None,
) -> TaskOutput:
    """Run one task: merge the pairs that are mutually best in the whole graph.

    As in ../shared/AGGLOMERATION.md: clusters with ``levels > level`` are
    open (they may still receive edges from outside the task). Edges scoring
    below ``bound`` are taken best first (the order in the module docstring;
    outdated heap entries skipped). A taken edge is the best remaining edge of
    both its clusters; it merges them iff neither is blocked and its mean
    exceeds both clusters' future bounds at ``level`` (then no edge either can
    still receive is better: the pair is mutually best in the whole graph);
    otherwise both become blocked and never merge in this task. Merged
    clusters sum their edges to a common neighbour and take the larger level
    and future bounds. Input edges that join the same pair of clusters are
    summed first. Without ``futures`` an open cluster is blocked at its first
    edge: the plain ABISS rule (frozen clusters and contagion).

    Cost: O(E log E) time for E edges; about 80 bytes per edge and 60 per
    cluster of memory besides the inputs and outputs
    (:func:`blockwise.hierarchical.estimate_task_memory`).

    Args:
        ids: (C,) uint64 unique cluster ids, C-contiguous.
        levels: (C,) uint8 level lambda of each cluster.
        level: the task's octree level, 0..255.
        edges: the cluster edges, or several parts of them (e.g. one per
            child: read in order, never concatenated, which saves a copy of
            48 bytes per edge); every array (E,) uint64, C-contiguous;
            ``a != b``, both cluster ids; ``n >= 1``; ``s <= 255 n``; the tie
            keys unique (as :func:`fragment_edge_keys` and the kernel's own
            outputs make them), else ties between equal keys are resolved by
            the heap's internal order.
        bound: the merge bound (:func:`merge_bound`): only edges scoring below
            it merge.
        futures: (C, K) uint32 future bounds, C-contiguous, or None (K = 0):
            ``futures[c, l]`` bounds the mean affinity of every edge below
            ``bound`` that cluster ``c`` can still receive from outside a task
            at level ``l`` (:func:`future_bound_codes`; 0: none,
            :data:`UNKNOWN_FUTURE`: anything). Must be 0 where ``l >= levels[c]``
            and is needed for ``level < K`` only.

    Returns:
        The task's records, residual and dropped edges (:class:`TaskOutput`).

    Raises:
        MeanMergeInputError: (a ValueError) if an array is not a 1D
            C-contiguous numpy array of the documented dtype, lengths differ,
            the level or bound is out of range, or the kernel finds repeated
            cluster ids, an edge end that is no cluster id, a self edge,
            ``n == 0`` or ``s > 255 n``.
        OverflowError: if the edges' ``n`` sum to :data:`MAX_TOTAL_COUNT` or
            more, or the task has 2**32 - 1 clusters or edges or more.
    """
    _check_u64("ids", ids)
    _check_array("levels", levels, np.dtype(np.uint8), length=ids.shape[0])
    if isinstance(level, bool) or not isinstance(level, int | np.integer) or not 0 <= level <= 255:
        raise MeanMergeInputError(f"level must be an integer in 0..255, received {level!r}")
    parts = [edges] if isinstance(edges, ClusterEdges) else edges
    if isinstance(parts, str | bytes) or not isinstance(parts, Sequence):
        raise MeanMergeInputError(
            f"edges must be a ClusterEdges or a sequence of them, received {type(edges).__name__}"
        )
    n_edges = 0
    for k, part in enumerate(parts):
        if not isinstance(part, ClusterEdges):
            raise MeanMergeInputError(
                f"edges must be a ClusterEdges or a sequence of them, but part {k} is a "
                f"{type(part).__name__}"
            )
        prefix = "edges" if len(parts) == 1 else f"edges[{k}]"
        length = part.a.shape[0] if isinstance(part.a, np.ndarray) else -1
        for name in _EDGE_FIELDS:
            _check_u64(f"{prefix}.{name}", getattr(part, name), length=length)
        n_edges += length
    p, q = _bound_ints(bound)
    if futures is None:
        futures = np.zeros((ids.shape[0], 0), dtype=np.uint32)
    elif (
        not isinstance(futures, np.ndarray)
        or futures.dtype != np.uint32
        or futures.ndim != 2
        or futures.shape[0] != ids.shape[0]
        or not futures.flags.c_contiguous
    ):
        raise MeanMergeInputError(
            f"futures must be a C-contiguous (C, K) uint32 array with one row per cluster "
            f"({ids.shape[0]}), received "
            + (
                f"{futures.ndim}D {futures.dtype} of shape {futures.shape}"
                if isinstance(futures, np.ndarray)
                else type(futures).__name__
            )
        )
    logger.debug("mean-merge task at level %d: %d clusters, %d edges", level, ids.size, n_edges)
    try:
        records, residual_ids, residual_levels, residual_futures, residual_edges, dropped, stale = (
            _mean_merge.merge_task(
                ids,
                levels,
                futures,
                int(level),
                [tuple(getattr(part, name) for name in _EDGE_FIELDS) for part in parts],
                p,
                q,
            )
        )
    except OverflowError:
        raise
    except ValueError as e:
        raise MeanMergeInputError(f"invalid mean-merge task input: {e}") from e
    return TaskOutput(
        records=ClusterEdges(*records),
        residual_ids=residual_ids,
        residual_levels=residual_levels,
        residual_futures=residual_futures,
        residual_edges=ClusterEdges(*residual_edges),
        dropped=ClusterEdges(*dropped),
        n_stale_pops=int(stale),
    )


def scores(s: NDArray[np.uint64], n: NDArray[np.uint64]) -> NDArray[np.float64]:
    """Return the scores (merge heights) ``1 - s / (255 n)`` as float64, for display.

    Decisions never use these rounded values: see :func:`scores_below`.
    """
    return 1.0 - s.astype(np.float64) / (255.0 * n.astype(np.float64))


def scores_below(
    s: NDArray[np.uint64], n: NDArray[np.uint64], bound: Fraction
) -> NDArray[np.bool_]:
    """Return, per edge, whether its score ``1 - s / (255 n)`` is below ``bound``, exactly.

    Args:
        s: (E,) uint64 affinity sums, C-contiguous.
        n: (E,) uint64 counts, ``1 <= n < 2**56`` and ``s <= 255 n``.
        bound: the bound (:func:`merge_bound`).

    Raises:
        MeanMergeInputError: if the arrays are not as documented.
    """
    _check_u64("s", s)
    _check_u64("n", n, length=s.shape[0])
    if s.size:
        if int(n.min()) < 1 or int(n.max()) >= MAX_TOTAL_COUNT:
            raise MeanMergeInputError(
                f"n must lie in 1..2**56 - 1, received values from {n.min()} to {n.max()}"
            )
        if np.any(s > n * np.uint64(255)):
            i = int(np.flatnonzero(s > n * np.uint64(255))[0])
            raise MeanMergeInputError(f"s must be <= 255 n, but s[{i}] = {s[i]}, n[{i}] = {n[i]}")
    p, q = _bound_ints(bound)
    result: NDArray[np.bool_] = _mean_merge.scores_below(s, n, p, q)
    return result


def _bound_ints(bound: object) -> tuple[int, int]:
    if not isinstance(bound, Fraction):
        raise MeanMergeInputError(
            f"bound must be a Fraction (see merge_bound), received {type(bound).__name__}"
        )
    if not 0 <= bound <= 2 or bound.denominator >= _U64_LIMIT:
        raise MeanMergeInputError(
            f"bound must be a Fraction in [0, 2] with a denominator below 2**64 "
            f"(see merge_bound), received {bound}"
        )
    return bound.numerator, bound.denominator


def _check_array(name: str, values: object, dtype: np.dtype, *, length: int | None = None) -> None:
    if not isinstance(values, np.ndarray):
        raise MeanMergeInputError(
            f"{name} must be a numpy array of {dtype}, received {type(values).__name__}"
        )
    if values.dtype != dtype or values.ndim != 1:
        raise MeanMergeInputError(
            f"{name} must be a 1D array of {dtype}, received {values.ndim}D {values.dtype}"
        )
    if not values.flags.c_contiguous:
        raise MeanMergeInputError(
            f"{name} must be C-contiguous (np.ascontiguousarray), received a strided view"
        )
    if length is not None and values.shape[0] != length:
        raise MeanMergeInputError(
            f"{name} must have {length} entries (one per "
            f"{'cluster' if name == 'levels' else 'edge'}), received {values.shape[0]}"
        )


def _check_u64(name: str, values: object, *, length: int | None = None) -> None:
    _check_array(name, values, np.dtype(np.uint64), length=length)
