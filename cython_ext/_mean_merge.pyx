# cython: language_level=3
"""Compiled task of the exact hierarchical mean-affinity agglomeration, see ``mean_merge.hpp``.

Reached only through :mod:`blockwise.kernels.mean_merge`, which checks dtypes,
lengths and contiguity before calling :func:`merge_task` or
:func:`scores_below`. The kernel itself checks what needs its data structures:
unique cluster ids, edge endpoints that are cluster ids, ``N >= 1``,
``S <= 255 N`` and a total count below 2**56.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t
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

    cdef cppclass EdgePart:
        const uint64_t* a
        const uint64_t* b
        const uint64_t* s
        const uint64_t* n
        const uint64_t* tau_hi
        const uint64_t* tau_lo
        size_t count

    cdef cppclass TaskInput:
        const uint64_t* ids
        const uint8_t* levels
        const uint32_t* futures
        size_t n_future_levels
        size_t n_clusters
        vector[EdgePart] parts

    cdef cppclass Task:
        EdgeList records
        uint64_t n_stale_pops
        void run(const TaskInput& task_input, unsigned level, uint64_t p, uint64_t q) except +
        size_t n_residual_clusters()
        size_t n_residual_edges()
        size_t n_dropped()
        void fill_residual_clusters(uint64_t* ids, uint8_t* levels, uint32_t* futures)
        void fill_edges(int which, int field, uint64_t* out)

    uint64_t kMaxTotalCount
    uint32_t kUnknownFuture

    void scores_below_cpp "blockwise::mean_merge::scores_below"(
        const uint64_t* s,
        const uint64_t* n,
        size_t count,
        uint64_t p,
        uint64_t q,
        uint8_t* out,
    ) except +

MAX_TOTAL_COUNT = kMaxTotalCount
UNKNOWN_FUTURE = kUnknownFuture


cdef inline const uint64_t* _data(const uint64_t[::1] values) noexcept:
    return &values[0] if values.shape[0] > 0 else NULL


def merge_task(
    const uint64_t[::1] ids not None,
    const uint8_t[::1] levels not None,
    const uint32_t[:, ::1] futures not None,
    unsigned level,
    list parts not None,
    uint64_t p,
    uint64_t q,
):
    """Run one task of the hierarchy.

    Args:
        ids: unique cluster ids.
        levels: per cluster, its level lambda; clusters above ``level`` are open.
        futures: (C, K) future bounds per cluster and level (see mean_merge.hpp);
            K = 0: none known (open clusters are blocked at their first edge).
        level: the task's octree level.
        parts: the cluster edges in parts (e.g. one per child), each a tuple of
            six uint64 arrays ``(a, b, s, n, tau_hi, tau_lo)`` of equal length;
            read in order without concatenating; duplicate pairs are summed.
        p, q: the merge bound p / q on the score 1 - S / (255 N).

    Returns:
        ``(records, residual_ids, residual_levels, residual_futures,
        residual_edges, dropped, n_stale_pops)`` where each edge set is a
        tuple of six uint64 arrays ``(a, b, s, n, tau_hi, tau_lo)``.
    """
    cdef size_t n_clusters = ids.shape[0]
    cdef size_t n_levels = futures.shape[1]
    if <size_t> levels.shape[0] != n_clusters:
        raise ValueError(f"levels must have {n_clusters} entries, not {levels.shape[0]}")
    if n_levels > 0 and <size_t> futures.shape[0] != n_clusters:
        raise ValueError(f"futures must have {n_clusters} rows, not {futures.shape[0]}")
    cdef TaskInput task_input
    cdef EdgePart part
    cdef const uint64_t[::1] pa, pb, ps, pn, pth, ptl
    for k, fields in enumerate(parts):
        if not isinstance(fields, tuple) or len(fields) != 6:
            raise ValueError(f"edge part {k} must be a tuple of six arrays")
        pa, pb, ps, pn, pth, ptl = fields
        for name, values in (("b", pb), ("s", ps), ("n", pn), ("tau_hi", pth), ("tau_lo", ptl)):
            if values.shape[0] != pa.shape[0]:
                raise ValueError(
                    f"edge part {k}: {name} must have {pa.shape[0]} entries, not {values.shape[0]}"
                )
        # the arrays stay alive in `parts` for the whole call
        part.a = _data(pa)
        part.b = _data(pb)
        part.s = _data(ps)
        part.n = _data(pn)
        part.tau_hi = _data(pth)
        part.tau_lo = _data(ptl)
        part.count = pa.shape[0]
        task_input.parts.push_back(part)
    task_input.ids = _data(ids)
    task_input.levels = &levels[0] if n_clusters > 0 else NULL
    task_input.futures = &futures[0, 0] if n_levels > 0 and n_clusters > 0 else NULL
    task_input.n_future_levels = n_levels
    task_input.n_clusters = n_clusters
    cdef Task task
    with nogil:
        task.run(task_input, level, p, q)
    cdef size_t n_kept = task.n_residual_clusters()
    residual_ids = np.empty(n_kept, dtype=np.uint64)
    residual_levels = np.empty(n_kept, dtype=np.uint8)
    residual_futures = np.empty((n_kept, n_levels), dtype=np.uint32)
    cdef uint64_t[::1] ids_view = residual_ids
    cdef uint8_t[::1] levels_view = residual_levels
    cdef uint32_t[:, ::1] futures_view = residual_futures
    if n_kept > 0:
        task.fill_residual_clusters(
            &ids_view[0], &levels_view[0], &futures_view[0, 0] if n_levels > 0 else NULL
        )
    return (
        _edges(task.records),
        residual_ids,
        residual_levels,
        residual_futures,
        _task_edges(task, 0, task.n_residual_edges()),
        _task_edges(task, 1, task.n_dropped()),
        int(task.n_stale_pops),
    )


cdef tuple _task_edges(Task& task, int which, size_t count):
    """The residual (0) or dropped (1) edges of a task, one array at a time."""
    cdef list arrays = []
    cdef uint64_t[::1] view
    cdef int field
    for field in range(6):
        out = np.empty(count, dtype=np.uint64)
        view = out
        if count > 0:
            task.fill_edges(which, field, &view[0])
        arrays.append(out)
    return tuple(arrays)


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
