# cython: language_level=3
"""A block's fragments: global ids in increasing local-id order, sizes and coordinate sums.

Reach this kernel only through :mod:`blockwise.kernels.block_numbering`, which
checks dtypes and shapes. Two passes over the block: one marks the local ids
present, the other writes each voxel's global id and adds the voxel to its
fragment's size and coordinate sums (whole numbers, exact in int64).
"""

from libc.stdint cimport int64_t, uint64_t
from libcpp.vector cimport vector


def number_block(const uint64_t[:, :, :] local not None, uint64_t top, uint64_t first_id,
                 uint64_t[:, :, ::1] out not None, int64_t[::1] sizes not None,
                 int64_t[:, ::1] sums not None):
    """Number the local ids 1..``top`` present in ``local`` as ``first_id``, ``first_id + 1``,
    ... in increasing local-id order (0 stays 0) into ``out``; ``sizes[k]`` and
    ``sums[k]`` (z, y, x) of the k-th (from 0), which the caller gives zeroed with
    room for ``top``.

    Returns:
        The number of fragments, or -1 if a local id exceeds ``top`` (``out`` is
        then incomplete).
    """
    cdef int64_t count
    with nogil:
        count = _number(local, top, first_id, out, sizes, sums)
    return count


cdef int64_t _number(const uint64_t[:, :, :] local, uint64_t top, uint64_t first_id,
                     uint64_t[:, :, ::1] out, int64_t[::1] sizes,
                     int64_t[:, ::1] sums) noexcept nogil:
    cdef Py_ssize_t depth = local.shape[0], height = local.shape[1], width = local.shape[2]
    cdef Py_ssize_t z, y, x
    cdef uint64_t label
    cdef int64_t k, count = 0
    cdef vector[int64_t] rank
    rank.resize(top + 1, 0)
    for z in range(depth):
        for y in range(height):
            for x in range(width):
                label = local[z, y, x]
                if label > top:
                    return -1
                rank[label] = 1
    rank[0] = 0
    for label in range(1, top + 1):
        if rank[label]:
            count += 1
            rank[label] = count
    for z in range(depth):
        for y in range(height):
            for x in range(width):
                label = local[z, y, x]
                if label == 0:
                    out[z, y, x] = 0
                    continue
                k = rank[label] - 1
                out[z, y, x] = first_id + <uint64_t>k
                sizes[k] += 1
                sums[k, 0] += z
                sums[k, 1] += y
                sums[k, 2] += x
    return count
