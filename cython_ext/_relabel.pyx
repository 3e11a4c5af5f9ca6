# cython: language_level=3
"""Map voxel ids through lookup tables; list the ids of a volume.

Reach these kernels only through :mod:`blockwise.kernels.relabel`, which checks
dtypes and sorts and checks the tables first. All of them walk a flat C-ordered
array and do their work once per run of equal ids, since neighbouring voxels
mostly share an id.
"""

from libc.stdint cimport uint64_t
from libcpp.algorithm cimport lower_bound, sort, unique
from libcpp.unordered_set cimport unordered_set
from libcpp.vector cimport vector

import numpy as np


# what _key_index returns for 0 when it is not a key, and for any other id that is not
cdef enum:
    _ZERO = -1
    _MISSING = -2


cdef inline Py_ssize_t _key_index(const uint64_t* keys, Py_ssize_t n_keys,
                                  uint64_t id) noexcept nogil:
    """The index of ``id`` among the sorted ``keys``; else ``_ZERO`` (0 maps to 0 unless
    it is a key) or ``_MISSING``."""
    cdef Py_ssize_t k = lower_bound(keys, keys + n_keys, id) - keys
    if k < n_keys and keys[k] == id:
        return k
    return _ZERO if id == 0 else _MISSING


def relabel_flat(const uint64_t[::1] ids not None, const uint64_t[::1] keys not None,
                 const uint64_t[::1] values not None, uint64_t[::1] out not None):
    """Write ``values[k]`` to ``out[v]`` where ``ids[v] == keys[k]``.

    Args:
        ids: Voxel ids.
        keys: Strictly increasing table keys.
        values: Table values, as many as ``keys``.
        out: Output, as long as ``ids``.

    Returns:
        -1 when every id was mapped, else the index of the first voxel whose id is
        neither a key nor 0 (0 maps to 0 unless it is a key). ``out`` is then
        filled only up to that voxel.
    """
    cdef Py_ssize_t n = ids.shape[0]
    cdef Py_ssize_t n_keys = keys.shape[0]
    cdef Py_ssize_t v, k
    cdef const uint64_t* first = &keys[0] if n_keys > 0 else NULL
    cdef uint64_t previous, mapped = 0, current
    cdef bint has_previous = False
    cdef Py_ssize_t missing = -1

    with nogil:
        for v in range(n):
            current = ids[v]
            if not has_previous or current != previous:
                k = _key_index(first, n_keys, current)
                if k == _MISSING:
                    missing = v
                    break
                mapped = values[k] if k != _ZERO else 0
                previous = current
                has_previous = True
            out[v] = mapped
    return missing


def relabel_flat_many(const uint64_t[::1] ids not None, const uint64_t[::1] keys not None,
                      const uint64_t[:, ::1] values not None, uint64_t[:, ::1] out not None):
    """:func:`relabel_flat` through several tables of the same keys at once.

    Args:
        ids: Voxel ids.
        keys: Strictly increasing table keys.
        values: (keys, tables): row ``k`` holds the value of ``keys[k]`` in each table.
        out: (tables, voxels) output.

    Returns:
        -1 when every id was mapped, else the index of the first voxel whose id is
        neither a key nor 0, as :func:`relabel_flat`. One lookup per run of equal
        ids serves every table.
    """
    cdef Py_ssize_t n = ids.shape[0]
    cdef Py_ssize_t n_keys = keys.shape[0]
    cdef Py_ssize_t n_tables = values.shape[1]
    cdef Py_ssize_t v, k, t
    cdef const uint64_t* first = &keys[0] if n_keys > 0 else NULL
    cdef uint64_t previous, current
    cdef bint has_previous = False
    cdef Py_ssize_t missing = -1
    cdef vector[uint64_t] mapped

    mapped.assign(n_tables, 0)
    with nogil:
        for v in range(n):
            current = ids[v]
            if not has_previous or current != previous:
                k = _key_index(first, n_keys, current)
                if k == _MISSING:
                    missing = v
                    break
                for t in range(n_tables):
                    mapped[t] = values[k, t] if k != _ZERO else 0
                previous = current
                has_previous = True
            for t in range(n_tables):
                out[t, v] = mapped[t]
    return missing


def unique_nonzero(const uint64_t[::1] ids not None):
    """Return the distinct non-zero ids, increasing, as a uint64 array."""
    cdef Py_ssize_t n = ids.shape[0]
    cdef Py_ssize_t v
    cdef uint64_t current, previous = 0
    cdef vector[uint64_t] heads

    with nogil:
        for v in range(n):
            current = ids[v]
            if current != 0 and current != previous:
                heads.push_back(current)
            previous = current
        sort(heads.begin(), heads.end())
        heads.erase(unique(heads.begin(), heads.end()), heads.end())
    return _to_array(heads)


def first_occurrences(const uint64_t[::1] ids not None):
    """Return the distinct non-zero ids in the order of their first voxel."""
    cdef Py_ssize_t n = ids.shape[0]
    cdef Py_ssize_t v
    cdef uint64_t current, previous = 0
    cdef unordered_set[uint64_t] seen
    cdef vector[uint64_t] order

    with nogil:
        for v in range(n):
            current = ids[v]
            if current != 0 and current != previous:
                if seen.insert(current).second:
                    order.push_back(current)
            previous = current
    return _to_array(order)


cdef _to_array(vector[uint64_t]& items):
    result = np.empty(items.size(), dtype=np.uint64)
    cdef uint64_t[::1] view = result
    cdef size_t k
    for k in range(items.size()):
        view[k] = items[k]
    return result
