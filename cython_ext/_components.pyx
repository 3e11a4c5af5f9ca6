# cython: language_level=3
"""Connected components of a 3D mask, numbered as ``scipy.ndimage.label`` numbers them.

Reach these kernels only through :mod:`blockwise.kernels.components`, which
checks dtypes, shapes and sizes.

One raster scan gives every foreground voxel a provisional label: that of
its earlier neighbour along x, y or z (6-connectivity; x and y only within a
z-section when ``planar``), or a new one, and joins the labels of its other
earlier neighbours in a union-find whose root is always the smallest label of
its set. Provisional labels are created in C order, so the root of a component
is the label of its first voxel, and numbering the roots in increasing order
numbers the components in the order of their first voxel in C order: what
``scipy.ndimage.label`` returns for the same connectivity.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t
from libcpp.vector cimport vector


cdef inline int32_t _root(int32_t* parent, int32_t label) noexcept nogil:
    """The root of ``label``'s set (path halving)."""
    while parent[label] != label:
        parent[label] = parent[parent[label]]
        label = parent[label]
    return label


cdef inline int32_t _join(int32_t* parent, int32_t a, int32_t b) noexcept nogil:
    """Join the sets of ``a`` and ``b``; the smaller root becomes the root. Returns it."""
    a = _root(parent, a)
    b = _root(parent, b)
    if a < b:
        parent[b] = a
        return a
    parent[a] = b
    return b


def label_components(const uint8_t[:, :, ::1] mask not None, bint planar,
                     int32_t[:, :, ::1] out not None):
    """Write the component number (1..n, 0 outside ``mask``) of every voxel to ``out``.

    Returns:
        n, the number of components.
    """
    cdef Py_ssize_t depth = mask.shape[0], height = mask.shape[1], width = mask.shape[2]
    cdef Py_ssize_t plane = height * width, n = depth * plane
    cdef Py_ssize_t z, y, x, i
    cdef const uint8_t* m = &mask[0, 0, 0] if n > 0 else NULL
    cdef int32_t* o = &out[0, 0, 0] if n > 0 else NULL
    cdef vector[int32_t] parent_buffer, final
    cdef int32_t* parent
    cdef int32_t label, neighbour, top = 0, count = 0
    if n == 0:
        return 0
    parent_buffer.push_back(0)
    with nogil:
        for z in range(depth):
            for y in range(height):
                i = z * plane + y * width
                for x in range(width):
                    if not m[i]:
                        o[i] = 0
                        i += 1
                        continue
                    label = 0
                    if x > 0 and m[i - 1]:
                        label = o[i - 1]
                    if y > 0 and m[i - width]:
                        neighbour = o[i - width]
                        if label == 0:
                            label = neighbour
                        elif neighbour != label:
                            label = _join(parent_buffer.data(), label, neighbour)
                    if not planar and z > 0 and m[i - plane]:
                        neighbour = o[i - plane]
                        if label == 0:
                            label = neighbour
                        elif neighbour != label:
                            label = _join(parent_buffer.data(), label, neighbour)
                    if label == 0:
                        top += 1
                        parent_buffer.push_back(top)
                        label = top
                    o[i] = label
                    i += 1
        # number the roots in increasing order; a label's root is not above it
        parent = parent_buffer.data()
        final.resize(top + 1)
        final[0] = 0
        for label in range(1, top + 1):
            neighbour = _root(parent, label)
            if neighbour == label:
                count += 1
                final[label] = count
            else:
                final[label] = final[neighbour]
        for i in range(n):
            o[i] = final[o[i]]
    return count


def component_boxes(const int32_t[:, :, ::1] labels not None, int64_t[:, ::1] boxes not None):
    """Bounding boxes of components 1..n: ``boxes[k - 1]`` = (z0, y0, x0, z1, y1, x1), ends
    exclusive; ``boxes`` comes filled with (big, big, big, 0, 0, 0)."""
    cdef Py_ssize_t depth = labels.shape[0], height = labels.shape[1], width = labels.shape[2]
    cdef Py_ssize_t z, y, x, count = boxes.shape[0]
    cdef int32_t label
    cdef int64_t* box
    with nogil:
        for z in range(depth):
            for y in range(height):
                for x in range(width):
                    label = labels[z, y, x]
                    if label <= 0 or label > count:
                        continue
                    box = &boxes[label - 1, 0]
                    if z < box[0]:
                        box[0] = z
                    if y < box[1]:
                        box[1] = y
                    if x < box[2]:
                        box[2] = x
                    if z >= box[3]:
                        box[3] = z + 1
                    if y >= box[4]:
                        box[4] = y + 1
                    if x >= box[5]:
                        box[5] = x + 1
