# cython: language_level=3
"""Compiled region merging (MALA / waterz), see ``region_merging.hpp``.

Reached only through :mod:`blockwise.kernels.region_merging`, which validates
the inputs (shapes, dtypes, affinities in [0, 1], the scoring parameters)
before calling :func:`merge_regions`.
"""

from libc.stdint cimport uint64_t
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

    Returns:
        ``(u, v, score, merge_score, n_merges)``: per edge, sorted by (u, v),
        the fragment ids (uint64, u < v), the initial score and the merge
        score (float32, NaN if never merged), and the number of merges.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {sorted(_KINDS)}, not {kind!r}")
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

    cdef MergeResult result
    with nogil:
        merge_regions_cpp(
            affs_data, fragments_data, depth, height, width, threshold,
            kind_code, quantile, k, init_with_max, result,
        )

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
