# cython: language_level=3
"""Window maxima of a 3D float32 volume: where a voxel equals the maximum of its box.

Reach this kernel only through :mod:`blockwise.kernels.peaks`, which checks dtypes,
shapes and window sizes.

The maximum over a box is separable: a running maximum along axis 0, then axis 1,
then axis 2. Each runs the van Herk / Gil-Werman algorithm, three comparisons
per voxel whatever the window: the line, padded by ``-inf`` (so the window is
clipped at the volume's faces, as scipy's ``maximum_filter`` with its default
``reflect`` mode gives for a maximum), is cut into pieces of one window length;
``g`` holds the maximum from the start of each piece, ``h`` the maximum to its
end, and a window, which covers the end of one piece and the start of the
next, is ``max(h[start], g[end])``. A "line" is a run of vectors: along axis 0
the planes (one row of each at a time), along axis 1 the rows of a plane, along
axis 2 single voxels, so the passes along the first two axes compare
contiguous rows, which the compiler vectorises. Comparisons only: the maxima
are values of the volume, bit for bit.
"""

from libc.math cimport INFINITY
from libc.stdint cimport uint8_t
from libcpp.vector cimport vector


cdef void _window_max(const float* src, Py_ssize_t n, Py_ssize_t src_step,
                      float* dst, Py_ssize_t dst_step, Py_ssize_t width, Py_ssize_t radius,
                      vector[float]& g, vector[float]& h) noexcept nogil:
    """Maxima over windows of ``2 * radius + 1`` vectors along one line, clipped.

    The line is ``n`` vectors of ``width`` contiguous floats, vector ``i`` at
    ``src + i * src_step``; the maximum of the window around vector ``i`` goes to
    ``dst + i * dst_step`` (``dst`` may be ``src``: the line is read whole first).
    """
    cdef Py_ssize_t w = 2 * radius + 1
    cdef Py_ssize_t padded = ((n + 2 * radius + w - 1) // w) * w
    cdef Py_ssize_t k, i, c, p, piece
    cdef float* gk
    cdef float* hk
    cdef const float* row
    cdef const float* before
    cdef float* out
    cdef const float* gg
    cdef const float* hh
    g.resize(padded * width)
    h.resize(padded * width)
    # the padded line
    for k in range(padded):
        gk = g.data() + k * width
        if k < radius or k >= radius + n:
            for c in range(width):
                gk[c] = -INFINITY
        else:
            row = src + (k - radius) * src_step
            for c in range(width):
                gk[c] = row[c]
    for p in range(padded // w):
        piece = p * w
        # h: maxima to the end of the piece; g (in place): maxima from its start
        hk = h.data() + (piece + w - 1) * width
        row = g.data() + (piece + w - 1) * width
        for c in range(width):
            hk[c] = row[c]
        for k in range(piece + w - 2, piece - 1, -1):
            hk = h.data() + k * width
            row = g.data() + k * width
            for c in range(width):
                hk[c] = row[c] if row[c] > hk[c + width] else hk[c + width]
        for k in range(piece + 1, piece + w):
            gk = g.data() + k * width
            before = gk - width
            for c in range(width):
                gk[c] = gk[c] if gk[c] > before[c] else before[c]
    for i in range(n):
        out = dst + i * dst_step
        hh = h.data() + i * width
        gg = g.data() + (i + 2 * radius) * width
        for c in range(width):
            out[c] = hh[c] if hh[c] > gg[c] else gg[c]


cdef void _window_max_row(float* line, Py_ssize_t n, Py_ssize_t radius,
                          vector[float]& g, vector[float]& h) noexcept nogil:
    """:func:`_window_max` for one contiguous row of single floats, in place."""
    cdef Py_ssize_t w = 2 * radius + 1
    cdef Py_ssize_t padded = ((n + 2 * radius + w - 1) // w) * w
    cdef Py_ssize_t k, i, p, piece
    cdef float value, running
    cdef float* gg
    cdef float* hh
    g.resize(padded)
    h.resize(padded)
    gg = g.data()
    hh = h.data()
    # the padded row, then running maxima from the start of each piece
    for k in range(radius):
        gg[k] = -INFINITY
    for k in range(n):
        gg[radius + k] = line[k]
    for k in range(radius + n, padded):
        gg[k] = -INFINITY
    for p in range(padded // w):
        piece = p * w
        running = gg[piece + w - 1]
        hh[piece + w - 1] = running
        for k in range(piece + w - 2, piece - 1, -1):
            value = gg[k]
            if value > running:
                running = value
            hh[k] = running
        running = gg[piece]
        for k in range(piece + 1, piece + w):
            value = gg[k]
            if value > running:
                running = value
            gg[k] = running
    for i in range(n):
        line[i] = hh[i] if hh[i] > gg[i + 2 * radius] else gg[i + 2 * radius]


def window_peaks(const float[:, :, ::1] values not None, Py_ssize_t window_z,
                 Py_ssize_t window_y, Py_ssize_t window_x, uint8_t[:, :, ::1] peaks not None):
    """Set ``peaks`` to 1 where ``values`` is positive and equals the maximum of the
    box of ``window_z x window_y x window_x`` voxels centred on it (clipped to the
    volume), else 0.

    The caller guarantees odd windows >= 1, equal shapes, and no NaN.
    """
    cdef Py_ssize_t depth = values.shape[0]
    cdef Py_ssize_t height = values.shape[1]
    cdef Py_ssize_t width = values.shape[2]
    cdef Py_ssize_t area = height * width
    cdef Py_ssize_t z, y, x
    cdef vector[float] maxima, g, h
    cdef float* plane
    cdef const float* source
    cdef const float* row
    cdef uint8_t* out

    if depth * area == 0:
        return
    maxima.resize(depth * area)
    source = &values[0, 0, 0]
    with nogil:
        # axis 0: the rows of all planes at one y side by side
        for y in range(height):
            _window_max(source + y * width, depth, area, maxima.data() + y * width, area,
                        width, window_z // 2, g, h)
        # axis 1 then axis 2, plane by plane, in place
        for z in range(depth):
            plane = maxima.data() + z * area
            _window_max(plane, height, width, plane, width, width, window_y // 2, g, h)
            for y in range(height):
                _window_max_row(plane + y * width, width, window_x // 2, g, h)
            row = source + z * area
            out = &peaks[z, 0, 0]
            for x in range(area):
                # bitwise, not ``and``: no branch per voxel
                out[x] = (<uint8_t>(row[x] > 0)) & (<uint8_t>(row[x] == plane[x]))
