# cython: language_level=3
"""Compiled region merging (MALA / waterz), see ``region_merging.hpp``.

Reached only through :mod:`blockwise.kernels.region_merging`, which validates
the inputs (shapes, dtypes, affinities in [0, 1], the scoring parameters, the
graph's edges) before calling :func:`merge_regions` or :func:`merge_graph`.
The statistic blobs given to :func:`merge_graph` are checked by the kernel.
"""

from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy
from libcpp cimport bool as cbool
from libcpp.vector cimport vector

import numpy as np

cdef extern from "region_merging.hpp" namespace "blockwise::region_merging" nogil:
    cdef cppclass MergeResult:
        vector[uint64_t] u
        vector[uint64_t] v
        vector[float] score
        vector[float] merge_score
        uint64_t n_merges
        vector[uint8_t] statistics
        vector[uint64_t] statistics_begin

    cdef cppclass StatisticBlobs:
        const uint8_t* data
        const uint64_t* begin
        const uint64_t* order
        size_t n_edges

    int kMean
    int kHistogramQuantile
    int kQuantile
    int kMeanMaxK
    int kMaxK

    void merge_regions_cpp "blockwise::region_merging::merge_regions"(
        const float* affs,
        const uint64_t* fragments,
        size_t depth,
        size_t height,
        size_t width,
        float threshold,
        int kind,
        int quantile,
        int k,
        cbool init_with_max,
        const uint64_t* forced_u,
        const uint64_t* forced_v,
        size_t n_forced,
        cbool with_statistics,
        MergeResult& result,
    ) except +

    void merge_graph_cpp "blockwise::region_merging::merge_graph"(
        const uint64_t* u,
        const uint64_t* v,
        size_t n_edges,
        const StatisticBlobs& blobs,
        const uint8_t* forced,
        float threshold,
        int kind,
        int quantile,
        int k,
        cbool init_with_max,
        MergeResult& result,
    ) except +

    void segment_cpp "blockwise::region_merging::segment"(
        const uint64_t* fragments,
        size_t n,
        const uint64_t* u,
        const uint64_t* v,
        const float* merge_score,
        size_t n_edges,
        float threshold,
        uint64_t* out,
    ) except +

MAX_K = kMaxK

_KINDS = {
    "mean": kMean,
    "histogram_quantile": kHistogramQuantile,
    "quantile": kQuantile,
    "mean_max_k": kMeanMaxK,
}


def merge_regions(
    const float[:, :, :, ::1] affs,
    const uint64_t[:, :, ::1] fragments,
    float threshold,
    str kind,
    int quantile,
    int k,
    bint init_with_max,
    const uint64_t[::1] forced_u,
    const uint64_t[::1] forced_v,
    bint with_statistics,
):
    """Build the region graph of ``fragments`` and merge until ``threshold``.

    Args:
        affs: (3, z, y, x) affinities in [0, 1]; channel d at voxel p is the
            affinity between p and p - e_d.
        fragments: (z, y, x) fragment ids, 0 is background.
        threshold: merging stops when the cheapest edge scores >= this.
        kind: "mean", "histogram_quantile", "quantile" or "mean_max_k".
        quantile: 0..100, for the two quantile kinds.
        k: 1..MAX_K, for "mean_max_k".
        init_with_max: waterz's InitWithMax, for the two quantile kinds.
        forced_u, forced_v: fragment pairs whose edges (if any) are merged
            before all others.
        with_statistics: whether to return the initial statistics.

    Returns:
        ``(u, v, score, merge_score, n_merges, statistics)``: per edge, sorted
        by (u, v), the fragment ids (uint64, u < v), the initial score and the
        merge score (float32, NaN if never merged), the number of merges, and
        a tuple of one statistic blob per edge (None without
        ``with_statistics``).
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {sorted(_KINDS)}, not {kind!r}")
    if forced_u.shape[0] != forced_v.shape[0]:
        raise ValueError(
            f"forced_u and forced_v must have the same length, not "
            f"{forced_u.shape[0]} and {forced_v.shape[0]}"
        )
    if (
        affs.shape[0] != 3
        or affs.shape[1] != fragments.shape[0]
        or affs.shape[2] != fragments.shape[1]
        or affs.shape[3] != fragments.shape[2]
    ):
        raise ValueError(
            f"affs must have the shape (3, *fragments.shape) = "
            f"(3, {fragments.shape[0]}, {fragments.shape[1]}, {fragments.shape[2]}), "
            f"not ({affs.shape[0]}, {affs.shape[1]}, {affs.shape[2]}, {affs.shape[3]})"
        )
    cdef int kind_code = _KINDS[kind]
    cdef size_t depth = fragments.shape[0]
    cdef size_t height = fragments.shape[1]
    cdef size_t width = fragments.shape[2]
    cdef const float* affs_data = NULL
    cdef const uint64_t* fragments_data = NULL
    if depth * height * width > 0:
        affs_data = &affs[0, 0, 0, 0]
        fragments_data = &fragments[0, 0, 0]
    else:
        depth = height = width = 0

    cdef size_t n_forced = forced_u.shape[0]
    cdef const uint64_t* forced_u_data = NULL
    cdef const uint64_t* forced_v_data = NULL
    if n_forced > 0:
        forced_u_data = &forced_u[0]
        forced_v_data = &forced_v[0]

    cdef MergeResult result
    with nogil:
        merge_regions_cpp(
            affs_data, fragments_data, depth, height, width, threshold,
            kind_code, quantile, k, init_with_max,
            forced_u_data, forced_v_data, n_forced, with_statistics, result,
        )
    statistics = _blobs(result) if with_statistics else None
    return _arrays(result) + (statistics,)


def merge_graph(
    const uint64_t[::1] u,
    const uint64_t[::1] v,
    const uint8_t[::1] data,
    const uint64_t[::1] begin,
    const uint64_t[::1] order,
    forced,
    float threshold,
    str kind,
    int quantile,
    int k,
    bint init_with_max,
):
    """Merge a given region graph until ``threshold``, as :func:`merge_regions`.

    Args:
        u, v: the edges, sorted by (u, v), unique, 0 < u < v.
        data, begin: the statistic blobs, blob i is ``data[begin[i]:begin[i + 1]]``.
        order: edge e's statistic is blob ``order[e]``.
        forced: None, or a uint8 array, nonzero for the edges merged first.
        threshold, kind, quantile, k, init_with_max: as for merge_regions.

    Returns:
        ``(u, v, score, merge_score, n_merges)`` as :func:`merge_regions`.

    Raises:
        ValueError: if a blob is malformed or not of this scoring.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {sorted(_KINDS)}, not {kind!r}")
    cdef size_t n_edges = u.shape[0]
    if (
        <size_t> v.shape[0] != n_edges
        or <size_t> order.shape[0] != n_edges
        or <size_t> begin.shape[0] != n_edges + 1
    ):
        raise ValueError(
            f"u, v, order and begin must have n, n, n and n + 1 entries, not "
            f"{u.shape[0]}, {v.shape[0]}, {order.shape[0]} and {begin.shape[0]}"
        )
    cdef const uint8_t[::1] forced_view
    cdef const uint8_t* forced_data = NULL
    if forced is not None:
        forced_view = forced
        if <size_t> forced_view.shape[0] != n_edges:
            raise ValueError(f"forced must have {n_edges} entries, not {forced_view.shape[0]}")
        if n_edges > 0:
            forced_data = &forced_view[0]
    cdef size_t i
    for i in range(n_edges):
        if order[i] >= n_edges:
            raise ValueError(f"order[{i}] = {order[i]} is not an index of the {n_edges} blobs")
    for i in range(n_edges):
        if begin[i] > begin[i + 1]:
            raise ValueError(f"begin must be non-decreasing, begin[{i}] > begin[{i + 1}]")
    if <size_t> begin[n_edges] > <size_t> data.shape[0] or begin[0] != 0:
        raise ValueError(
            f"begin must run from 0 to at most {data.shape[0]}, not {begin[0]} to {begin[n_edges]}"
        )

    cdef StatisticBlobs blobs
    blobs.data = &data[0] if data.shape[0] > 0 else NULL
    blobs.begin = &begin[0]
    blobs.order = &order[0] if n_edges > 0 else NULL
    blobs.n_edges = n_edges
    cdef const uint64_t* u_data = &u[0] if n_edges > 0 else NULL
    cdef const uint64_t* v_data = &v[0] if n_edges > 0 else NULL
    cdef int kind_code = _KINDS[kind]
    cdef MergeResult result
    with nogil:
        merge_graph_cpp(
            u_data, v_data, n_edges, blobs, forced_data, threshold,
            kind_code, quantile, k, init_with_max, result,
        )
    return _arrays(result)


cdef tuple _arrays(MergeResult& result):
    """``(u, v, score, merge_score, n_merges)`` of a result, as numpy arrays."""
    cdef size_t n_edges = result.u.size()
    u = np.empty(n_edges, dtype=np.uint64)
    v = np.empty(n_edges, dtype=np.uint64)
    score = np.empty(n_edges, dtype=np.float32)
    merge_score = np.empty(n_edges, dtype=np.float32)
    cdef uint64_t[::1] u_view = u
    cdef uint64_t[::1] v_view = v
    cdef float[::1] score_view = score
    cdef float[::1] merge_score_view = merge_score
    if n_edges > 0:
        memcpy(&u_view[0], result.u.data(), n_edges * sizeof(uint64_t))
        memcpy(&v_view[0], result.v.data(), n_edges * sizeof(uint64_t))
        memcpy(&score_view[0], result.score.data(), n_edges * sizeof(float))
        memcpy(&merge_score_view[0], result.merge_score.data(), n_edges * sizeof(float))
    return u, v, score, merge_score, int(result.n_merges)


cdef tuple _blobs(MergeResult& result):
    """The statistic blobs of a result, one bytes object per edge."""
    cdef size_t n_edges = result.statistics_begin.size() - 1
    cdef const char* data = <const char*> result.statistics.data()
    cdef list blobs = [None] * n_edges
    cdef size_t e
    for e in range(n_edges):
        blobs[e] = data[result.statistics_begin[e]:result.statistics_begin[e + 1]]
    return tuple(blobs)


def segment(
    const uint64_t[::1] fragments,
    const uint64_t[::1] u,
    const uint64_t[::1] v,
    const float[::1] merge_score,
    float threshold,
):
    """Label the partition in which edges with ``merge_score < threshold`` join.

    Args:
        fragments: flat fragment ids (any order of the volume).
        u, v: the edges' fragment ids.
        merge_score: per edge, NaN for never merged.
        threshold: the score level to cut at.

    Returns:
        A new flat uint64 array holding, per voxel, the smallest fragment id
        of its region; 0 and fragments without edges keep their value.
    """
    if not u.shape[0] == v.shape[0] == merge_score.shape[0]:
        raise ValueError(
            f"u, v and merge_score must have the same length, not "
            f"{u.shape[0]}, {v.shape[0]} and {merge_score.shape[0]}"
        )
    cdef size_t n = fragments.shape[0]
    cdef size_t n_edges = u.shape[0]
    out = np.empty(n, dtype=np.uint64)
    cdef uint64_t[::1] out_view = out
    if n == 0:
        return out
    cdef const uint64_t* u_data = NULL
    cdef const uint64_t* v_data = NULL
    cdef const float* merge_score_data = NULL
    if n_edges > 0:
        u_data = &u[0]
        v_data = &v[0]
        merge_score_data = &merge_score[0]
    with nogil:
        segment_cpp(
            &fragments[0], n, u_data, v_data, merge_score_data, n_edges, threshold,
            &out_view[0],
        )
    return out
