# cython: language_level=3
"""Integer edge statistics (sum and count of uint8 affinities) between touching fragments.

Reach this kernel only through :func:`blockwise.contacts.contact_statistics`,
which checks shapes, dtypes and the number of offsets first.

For every channel ``c`` and every voxel ``p`` whose neighbour ``q = p +
offsets[c]`` lies in the volume, a pair of different non-zero fragments ``u =
min(f[p], f[q])``, ``v = max(...)`` gains ``affs[c, p]`` and one contact.
Neighbouring voxels mostly see the same pair (a contact surface), so a run of
equal pairs along x is added up before it is stored; the runs are then sorted
by ``(u, v)`` and summed. The result does not depend on the order of the runs.
"""

from libc.stdint cimport int64_t, uint8_t, uint64_t
from libcpp.vector cimport vector

import numpy as np


cdef extern from *:
    """
    #include <algorithm>
    #include <cstdint>
    #include <vector>
    struct blockwise_contact { uint64_t u, v, s, n; };
    static inline bool blockwise_contact_less(const blockwise_contact& a,
                                              const blockwise_contact& b) {
        return a.u < b.u || (a.u == b.u && a.v < b.v);
    }
    static void blockwise_sort_contacts(std::vector<blockwise_contact>& runs) {
        std::sort(runs.begin(), runs.end(), blockwise_contact_less);
    }
    """
    cdef struct blockwise_contact:
        uint64_t u
        uint64_t v
        uint64_t s
        uint64_t n
    void blockwise_sort_contacts(vector[blockwise_contact]& runs) nogil


cdef inline void _flush(vector[blockwise_contact]& runs, blockwise_contact& run) noexcept nogil:
    if run.n != 0:
        runs.push_back(run)
        run.n = 0


def contact_sums(const uint64_t[:, :, :] fragments not None,
                 const uint8_t[:, :, :, :] affs not None,
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
    cdef vector[blockwise_contact] runs
    cdef blockwise_contact run
    cdef Py_ssize_t i, k
    run.n = 0
    run.u = 0
    run.v = 0
    run.s = 0
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
            for z in range(z0, z1):
                for y in range(y0, y1):
                    for x in range(x0, x1):
                        a = fragments[z, y, x]
                        b = fragments[z + dz, y + dy, x + dx]
                        if a == b or a == 0 or b == 0:
                            continue
                        if a < b:
                            lo = a
                            hi = b
                        else:
                            lo = b
                            hi = a
                        if run.n == 0 or lo != run.u or hi != run.v:
                            _flush(runs, run)
                            run.u = lo
                            run.v = hi
                            run.s = 0
                        run.s += affs[channel, z, y, x]
                        run.n += 1
        _flush(runs, run)
        blockwise_sort_contacts(runs)
        # sum the runs of each pair in place: runs[0..k) become the distinct pairs
        k = 0
        for i in range(<Py_ssize_t>runs.size()):
            if k > 0 and runs[i].u == runs[k - 1].u and runs[i].v == runs[k - 1].v:
                runs[k - 1].s += runs[i].s
                runs[k - 1].n += runs[i].n
            else:
                runs[k] = runs[i]
                k += 1
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
            u_view[i] = runs[i].u
            v_view[i] = runs[i].v
            s_view[i] = runs[i].s
            n_view[i] = runs[i].n
    return u, v, s, n
