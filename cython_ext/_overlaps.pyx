# cython: language_level=3
"""Which label of a second labelling covers each of some labels of a first one.

Reach this kernel only through :func:`blockwise.stitching.dominant_basins`,
which checks shapes, dtypes and the box first.

Neighbouring voxels mostly hold the same pair of labels, so a run of equal
pairs along x is counted once before it is stored; the runs are then sorted
by pair and summed (``pair_runs.hpp``, shared with ``_contacts``). The result
does not depend on the order of the runs.
"""

from libc.stdint cimport uint64_t
from libcpp.algorithm cimport lower_bound
from libcpp.vector cimport vector

from pair_runs cimport Run, extend, flush, sum_by_pair

import numpy as np


def dominant_labels(const uint64_t[:, :, :] fragments not None,
                    const uint64_t[:, :, :] basins not None,
                    const uint64_t[::1] wanted not None,
                    Py_ssize_t z0, Py_ssize_t z1, Py_ssize_t y0, Py_ssize_t y1,
                    Py_ssize_t x0, Py_ssize_t x1, double min_coverage):
    """For each ``wanted`` fragment, the basin holding more than ``min_coverage`` of it.

    Only voxels outside the box ``[z0, z1) x [y0, y1) x [x0, x1)`` are counted.

    Args:
        fragments: (z, y, x) fragment ids.
        basins: (z, y, x) basin ids of the same voxels (0: none).
        wanted: Strictly increasing fragment ids.
        z0, z1, y0, y1, x0, x1: The box left out (may be empty).
        min_coverage: The share of a fragment's counted voxels a basin must exceed.

    Returns:
        (len(wanted),) uint64: the covering basin, or 0 where none covers
        (or the covering one is basin 0).
    """
    cdef Py_ssize_t depth = fragments.shape[0]
    cdef Py_ssize_t height = fragments.shape[1]
    cdef Py_ssize_t width = fragments.shape[2]
    cdef Py_ssize_t n_wanted = wanted.shape[0]
    cdef Py_ssize_t z, y, x, i, start
    cdef uint64_t f, last_f = 0, index = 0
    cdef bint last_wanted = False, have_last = False, inside_rows
    cdef const uint64_t* first = &wanted[0] if n_wanted > 0 else NULL
    cdef const uint64_t* found
    cdef vector[Run] runs
    cdef Run run
    cdef uint64_t total, best_count, best_basin
    result = np.zeros(n_wanted, dtype=np.uint64)
    cdef uint64_t[::1] out = result
    if n_wanted == 0:
        return result
    run.count = 0
    with nogil:
        for z in range(depth):
            for y in range(height):
                inside_rows = z0 <= z < z1 and y0 <= y < y1
                for x in range(width):
                    if inside_rows and x0 <= x < x1:
                        continue
                    f = fragments[z, y, x]
                    if not have_last or f != last_f:
                        found = lower_bound(first, first + n_wanted, f)
                        last_wanted = found != first + n_wanted and found[0] == f
                        index = <uint64_t>(found - first)
                        last_f = f
                        have_last = True
                    if not last_wanted:
                        continue
                    # a = the wanted fragment's index, b = the basin; one voxel each
                    extend(runs, run, index, basins[z, y, x], 0)
        flush(runs, run)
        sum_by_pair(runs)
        i = 0
        while i < <Py_ssize_t>runs.size():
            # the basins of one wanted fragment, in increasing order: runs[start..i)
            start = i
            total = 0
            best_count = 0
            best_basin = 0
            while i < <Py_ssize_t>runs.size() and runs[i].a == runs[start].a:
                total += runs[i].count
                if runs[i].count > best_count:  # ties keep the smaller basin
                    best_count = runs[i].count
                    best_basin = runs[i].b
                i += 1
            if best_count > min_coverage * total:
                out[runs[start].a] = best_basin
    return result
