# cython: language_level=3
"""Compiled task of the exact hierarchical mean-affinity agglomeration, see ``mean_merge.hpp``.

Reached only through :mod:`blockwise.kernels.mean_merge`, which checks dtypes,
lengths and contiguity before calling :func:`merge_task` or
:func:`scores_below`. The kernel itself checks what needs its data structures:
unique cluster ids, edge endpoints that are cluster ids, ``N >= 1``,
``S <= 255 N`` and a total count below 2**56.
"""

from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy
from libcpp.vector cimport vector

import numpy as np

cdef extern from "mean_merge.hpp" namespace "blockwise::mean_merge" nogil:
    cdef cppclass EdgeList:
        vector[uint64_t] a
        vector[uint64_t] b
        vector[uint64_t] s
        vector[uint64_t] n
        vector[uint64_t] tau_hi
        vector[uint64_t] tau_lo

    cdef cppclass TaskResult:
        EdgeList records
        vector[uint64_t] residual_ids
        vector[uint8_t] residual_levels
        EdgeList residual_edges
        EdgeList dropped
        uint64_t n_stale_pops

    cdef cppclass TaskInput:
        const uint64_t* ids
        const uint8_t* levels
        size_t n_clusters
        const uint64_t* a
        const uint64_t* b
        const uint64_t* s
        const uint64_t* n
        const uint64_t* tau_hi
        const uint64_t* tau_lo
        size_t n_edges

    uint64_t kMaxTotalCount

    void merge_task_cpp "blockwise::mean_merge::merge_task"(
        const TaskInput& task_input,
        unsigned level,
        uint64_t p,
        uint64_t q,
        TaskResult& result,
    ) except +

    void scores_below_cpp "blockwise::mean_merge::scores_below"(
        const uint64_t* s,
        const uint64_t* n,
        size_t count,
        uint64_t p,
        uint64_t q,
        uint8_t* out,
    ) except +

MAX_TOTAL_COUNT = kMaxTotalCount


cdef inline const uint64_t* _data(const uint64_t[::1] values) noexcept:
    return &values[0] if values.shape[0] > 0 else NULL


def merge_task(
    const uint64_t[::1] ids not None,
    const uint8_t[::1] levels not None,
    unsigned level,
    const uint64_t[::1] a not None,
    const uint64_t[::1] b not None,
    const uint64_t[::1] s not None,
    const uint64_t[::1] n not None,
    const uint64_t[::1] tau_hi not None,
    const uint64_t[::1] tau_lo not None,
    uint64_t p,
    uint64_t q,
):
    """Run one task of the hierarchy.

    Args:
        ids: unique cluster ids.
        levels: per cluster, its level lambda; clusters above ``level`` are frozen.
        level: the task's octree level.
        a, b, s, n, tau_hi, tau_lo: the cluster edges (duplicate pairs are summed).
        p, q: the merge bound p / q on the score 1 - S / (255 N).

    Returns:
        ``(records, residual_ids, residual_levels, residual_edges, dropped,
        n_stale_pops)`` where each edge set is a tuple of six uint64 arrays
        ``(a, b, s, n, tau_hi, tau_lo)``.
    """
    cdef size_t n_clusters = ids.shape[0]
    cdef size_t n_edges = a.shape[0]
    if <size_t> levels.shape[0] != n_clusters:
        raise ValueError(f"levels must have {n_clusters} entries, not {levels.shape[0]}")
    for name, values in (("b", b), ("s", s), ("n", n), ("tau_hi", tau_hi), ("tau_lo", tau_lo)):
        if <size_t> len(values) != n_edges:
            raise ValueError(f"{name} must have {n_edges} entries, not {len(values)}")
    cdef TaskInput task_input
    task_input.ids = _data(ids)
    task_input.levels = &levels[0] if n_clusters > 0 else NULL
    task_input.n_clusters = n_clusters
    task_input.a = _data(a)
    task_input.b = _data(b)
    task_input.s = _data(s)
    task_input.n = _data(n)
    task_input.tau_hi = _data(tau_hi)
    task_input.tau_lo = _data(tau_lo)
    task_input.n_edges = n_edges
    cdef TaskResult result
    with nogil:
        merge_task_cpp(task_input, level, p, q, result)
    residual_levels = np.empty(result.residual_levels.size(), dtype=np.uint8)
    cdef uint8_t[::1] levels_view = residual_levels
    if result.residual_levels.size() > 0:
        memcpy(&levels_view[0], result.residual_levels.data(), result.residual_levels.size())
    return (
        _edges(result.records),
        _array(result.residual_ids),
        residual_levels,
        _edges(result.residual_edges),
        _edges(result.dropped),
        int(result.n_stale_pops),
    )


cdef object _array(vector[uint64_t]& values):
    """A new uint64 numpy array holding ``values``."""
    cdef size_t count = values.size()
    out = np.empty(count, dtype=np.uint64)
    cdef uint64_t[::1] view = out
    if count > 0:
        memcpy(&view[0], values.data(), count * sizeof(uint64_t))
    return out


cdef tuple _edges(EdgeList& edges):
    """``(a, b, s, n, tau_hi, tau_lo)`` of an edge list as numpy arrays."""
    return (
        _array(edges.a),
        _array(edges.b),
        _array(edges.s),
        _array(edges.n),
        _array(edges.tau_hi),
        _array(edges.tau_lo),
    )


def scores_below(
    const uint64_t[::1] s not None,
    const uint64_t[::1] n not None,
    uint64_t p,
    uint64_t q,
):
    """Per edge, whether its score ``1 - s / (255 n)`` is below ``p / q``, exactly.

    Requires ``1 <= n < 2**56`` and ``s <= 255 n`` (checked by the wrapper).

    Returns:
        A bool numpy array, one entry per edge.
    """
    if s.shape[0] != n.shape[0]:
        raise ValueError(f"s and n must have the same length, not {s.shape[0]} and {n.shape[0]}")
    if q == 0:
        raise ValueError("the bound's denominator q must be > 0")
    cdef size_t count = s.shape[0]
    out = np.zeros(count, dtype=np.uint8)
    cdef uint8_t[::1] out_view = out
    if count > 0:
        with nogil:
            scores_below_cpp(&s[0], &n[0], count, p, q, &out_view[0])
    return out.view(np.bool_)
