# cython: language_level=3
"""Disjoint sets over elements 0..n-1: union by size with path compression.

Reach these kernels only through :class:`blockwise.kernels.union_find.UnionFind`,
which owns the ``parent`` and ``size`` arrays and checks every element index
before it gets here.
"""

from libc.stdint cimport int64_t


cdef extern from "union_find.hpp" namespace "blockwise::union_find" nogil:
    # the shared union-find (union by size, path compression): see union_find.hpp
    I _find "blockwise::union_find::find"[I](I* parent, I element) noexcept
    I _link "blockwise::union_find::link"[I, S](I* parent, S* size, I root_a, I root_b) noexcept


def union_pairs(int64_t[::1] parent not None, int64_t[::1] size not None,
                const int64_t[::1] a not None, const int64_t[::1] b not None):
    """Merge the sets of ``a[k]`` and ``b[k]`` for every k, in order.

    The smaller set goes under the root of the larger one; on equal sizes the set
    of ``b[k]`` goes under the root of ``a[k]``.
    """
    cdef Py_ssize_t k
    cdef int64_t root_a, root_b
    with nogil:
        for k in range(a.shape[0]):
            root_a = _find(&parent[0], a[k])
            root_b = _find(&parent[0], b[k])
            if root_a != root_b:
                _link(&parent[0], &size[0], root_a, root_b)


def find_roots(int64_t[::1] parent not None, int64_t[::1] out not None):
    """Write the root of every element to ``out``, compressing all paths."""
    cdef Py_ssize_t n = parent.shape[0]
    cdef int64_t element
    with nogil:
        for element in range(n):
            out[element] = _find(&parent[0], element)


def smallest_members(int64_t[::1] parent not None, int64_t[::1] out not None):
    """Write, for every element, the smallest element of its set to ``out``."""
    cdef Py_ssize_t n = parent.shape[0]
    cdef int64_t element, root
    with nogil:
        for element in range(n):
            out[element] = -1
        # Elements come in increasing order, so the first one met with a given
        # root is the smallest of its set; it is kept in the root's slot. After
        # this pass every path is compressed: parent[element] is its root.
        for element in range(n):
            root = _find(&parent[0], element)
            if out[root] == -1:
                out[root] = element
        # Roots' slots are final and only read; the other slots get their root's.
        for element in range(n):
            out[element] = out[parent[element]]
