# cython: language_level=3
"""Integer edge statistics (sum and count of uint8 affinities) between touching fragments.

Reach this kernel only through :func:`blockwise.contacts.contact_statistics`,
which checks shapes, dtypes and the number of offsets first and hands over
C-contiguous arrays.

For every channel ``c`` and every voxel ``p`` whose neighbour ``q = p +
offsets[c]`` lies in the volume, a pair of different non-zero fragments ``u =
min(f[p], f[q])``, ``v = max(...)`` gains ``affs[c, p]`` and one contact.
Neighbouring voxels mostly see the same pair (a contact surface), so a run of
equal pairs along x is added up before it is stored; the runs are then sorted
by ``(u, v)`` and summed (``pair_runs.hpp``, shared with ``_overlaps``). The
result does not depend on the order of the runs.
"""

from libc.stdint cimport int64_t, uint8_t, uint64_t
from libcpp.vector cimport vector

from pair_runs cimport Run, extend, flush, sum_by_pair

import numpy as np


def contact_sums(const uint64_t[:, :, ::1] fragments not None,
                 const uint8_t[:, :, :, ::1] affs not None,
                 const int64_t[:, ::1] offsets not None):
    """``(u, v, S, N)`` of every pair of touching fragments, sorted by ``(u, v)``.

    Args:
        fragments: (z, y, x) fragment ids; 0 has no edges.
        affs: (channels, z, y, x) uint8 affinities; channel ``c`` measures ``offsets[c]``.
        offsets: (channels, 3) offsets in voxels, one row per channel used.

    Returns:
        Four uint64 arrays: the smaller id, the larger id, the sum of the
        affinities on their contacts, the number of contacts.
    """
    cdef Py_ssize_t depth = fragments.shape[0]
    cdef Py_ssize_t height = fragments.shape[1]
    cdef Py_ssize_t width = fragments.shape[2]
    cdef Py_ssize_t channel, z, y, x, z0, z1, y0, y1, x0, x1
    cdef int64_t dz, dy, dx
    cdef uint64_t a, b, lo, hi
    cdef vector[Run] runs
    cdef Run run
    cdef Py_ssize_t i, k, length
    cdef const uint64_t* here
    cdef const uint64_t* there
    cdef const uint8_t* value
    run.count = 0
    with nogil:
        for channel in range(offsets.shape[0]):
            dz = offsets[channel, 0]
            dy = offsets[channel, 1]
            dx = offsets[channel, 2]
            z0 = -dz if dz < 0 else 0
            z1 = depth - dz if dz > 0 else depth
            y0 = -dy if dy < 0 else 0
            y1 = height - dy if dy > 0 else height
            x0 = -dx if dx < 0 else 0
            x1 = width - dx if dx > 0 else width
            length = x1 - x0
            if length <= 0:
                continue
            for z in range(z0, z1):
                for y in range(y0, y1):
                    # one row of voxels and the row of their neighbours, as pointers:
                    # most voxels see their own fragment, a test of two loaded words
                    here = &fragments[z, y, x0]
                    there = &fragments[z + dz, y + dy, x0 + dx]
                    value = &affs[channel, z, y, x0]
                    for x in range(length):
                        a = here[x]
                        b = there[x]
                        if a == b or a == 0 or b == 0:
                            continue
                        if a < b:
                            lo = a
                            hi = b
                        else:
                            lo = b
                            hi = a
                        extend(runs, run, lo, hi, value[x])
        flush(runs, run)
        sum_by_pair(runs)
        k = <Py_ssize_t>runs.size()
    u = np.empty(k, dtype=np.uint64)
    v = np.empty(k, dtype=np.uint64)
    s = np.empty(k, dtype=np.uint64)
    n = np.empty(k, dtype=np.uint64)
    cdef uint64_t[::1] u_view = u
    cdef uint64_t[::1] v_view = v
    cdef uint64_t[::1] s_view = s
    cdef uint64_t[::1] n_view = n
    with nogil:
        for i in range(k):
            u_view[i] = runs[i].a
            v_view[i] = runs[i].b
            s_view[i] = runs[i].sum
            n_view[i] = runs[i].count
    return u, v, s, n
