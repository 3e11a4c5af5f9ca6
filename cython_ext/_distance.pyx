# cython: language_level=3
"""Exact Euclidean distance transform of a 3D mask, axis by axis.

Reach this kernel only through :mod:`blockwise.kernels.distance`, which checks
the dtype, shape limits and sampling and hands 2D masks over as (y, 1, x).

The transform is separable (Felzenszwalb & Huttenlocher, "Distance transforms of
sampled functions", 2012): the squared distance to the nearest background voxel
is a minimum over axis 0, then axis 1, then axis 2, each of which is a 1D lower
envelope of parabolas. The passes run

1. along axis 0 over the whole volume: for a binary mask the 1D distance is two
   sweeps (forward and backward) of whole planes, in voxels;
2. per plane, along axis 1 (columns), then along axis 2 (rows), while the plane
   is in cache.

Between the passes the output array (4 bytes per voxel) holds *integers*, not
squared distances: after pass 1 the offset ``d0`` in voxels to the nearest
background voxel along axis 0, after the axis-1 pass the offsets ``(d0, d1)`` of
the nearest background voxel of the (axis 0, axis 1) plane, packed as
``d0 << bits | d1``. A float32 squared distance would be rounded above 2**24
(4096 nm, 410 voxels of 10 nm); the offsets are exact, so every pass computes its
squared distances in float64 from whole numbers, exactly as scipy does:
``((d0 s0)**2 + (d1 s1)**2) + (d2 s2)**2``, then the square root in float64 and
one rounding to float32. For whole-number sampling the result is scipy's float64
distance cast to float32, bit for bit (see ``_lower_envelope`` for the bound on
sampling and length). Scratch: a few buffers of one line.
"""

from libc.math cimport INFINITY, sqrt
from libc.stdint cimport uint8_t, uint32_t
from libc.string cimport memcpy
from libcpp.vector cimport vector


# no background voxel on the line (pass 1) or in the plane (pass 2) so far
cdef uint32_t _NONE = 0xFFFFFFFFU


cdef Py_ssize_t _lower_envelope(const double* f, Py_ssize_t n, double weight,
                                const double* inverse, Py_ssize_t* vertex, double* height,
                                double* start) noexcept nogil:
    """Lower envelope of the parabolas ``q -> f[p] + weight * (q - p)**2``.

    Only parabolas with finite ``f[p]`` take part. On return the envelope is
    ``vertex[0..k)`` from left to right: parabola ``vertex[i]`` is lowest on
    ``[start[i], start[i + 1]]``, with ``start[0] = -inf`` and ``start[k] = inf``;
    ``height[i] = f[p] + weight * p**2`` for ``p = vertex[i]``;
    ``inverse[d] = 1 / (2 weight d)`` turns the divisions into multiplications.

    Rounding cannot change the minimum found at a whole-number ``q``: with
    whole-number ``f`` and ``weight`` an intersection is a quotient of whole
    numbers with a denominator below ``2 weight n``, so one that is not a whole
    number lies at least ``1 / (2 weight n)`` from every whole number, far beyond
    the few float64 ulps of the computed one (while ``2 weight n**2`` is far below
    2**52), and at a whole-number intersection both parabolas give the same value.
    A parabola kept or dropped by a rounded comparison owns no whole-number ``q``
    other than such ties.

    Returns:
        k, the number of parabolas on the envelope (0 if no ``f`` is finite).
    """
    cdef Py_ssize_t k = 0, q, p
    cdef double hq, s = 0
    for q in range(n):
        if f[q] == INFINITY:
            continue
        hq = f[q] + weight * (<double>q * <double>q)
        # start[0] = -inf, so the loop never pops the first parabola
        while k > 0:
            p = vertex[k - 1]
            s = (hq - height[k - 1]) * inverse[q - p]
            if s > start[k - 1]:
                break
            k -= 1
        start[k] = s if k > 0 else -INFINITY
        vertex[k] = q
        height[k] = hq
        k += 1
    start[k] = INFINITY
    return k


cdef void _reciprocals(vector[double]& inverse, Py_ssize_t n, double sampling):
    """``inverse[d] = 1 / (2 sampling**2 d)``: the envelope's divisors, d = 1..n-1."""
    cdef Py_ssize_t d
    inverse.resize(n)
    for d in range(1, n):
        inverse[d] = 1.0 / (2 * sampling * sampling * <double>d)


cdef bint _sweep_axis0(const uint8_t* mask, uint32_t* out, Py_ssize_t depth,
                       Py_ssize_t plane) noexcept nogil:
    """Offsets (voxels) along axis 0 to the nearest background voxel, or ``_NONE``.

    Returns:
        True if the mask has a background voxel at all.
    """
    cdef Py_ssize_t z, i
    cdef uint32_t* here
    cdef const uint32_t* other
    cdef const uint8_t* inside
    cdef uint32_t previous, current, following
    for i in range(plane):
        out[i] = _NONE if mask[i] else 0
    for z in range(1, depth):
        here = out + z * plane
        other = here - plane
        inside = mask + z * plane
        for i in range(plane):
            previous = other[i]
            # _NONE stays _NONE, a distance grows by one
            here[i] = previous + (previous != _NONE) if inside[i] else 0
    for z in range(depth - 2, -1, -1):
        here = out + z * plane
        other = here + plane
        for i in range(plane):
            following = other[i]
            following = following + (following != _NONE)
            current = here[i]
            here[i] = following if following < current else current
    # a line with a background voxel has offsets everywhere along it
    for i in range(plane):
        if out[i] != _NONE:
            return True
    return False


cdef void _columns(uint32_t* plane, Py_ssize_t height, Py_ssize_t width,
                   double sampling0, double sampling1, int bits,
                   const double* inverse, double* f, uint32_t* offset0, Py_ssize_t* vertex,
                   double* parabola, double* start) noexcept nogil:
    """Axis-1 pass over one plane: axis-0 offsets in, packed (d0, d1) offsets out."""
    cdef Py_ssize_t x, y, k, j, p
    cdef uint32_t d0
    cdef double t
    cdef double weight = sampling1 * sampling1
    for x in range(width):
        for y in range(height):
            d0 = plane[y * width + x]
            offset0[y] = d0
            if d0 == _NONE:
                f[y] = INFINITY
            else:
                t = <double>d0 * sampling0
                f[y] = t * t
        k = _lower_envelope(f, height, weight, inverse, vertex, parabola, start)
        if k == 0:
            continue  # still _NONE throughout
        j = 0
        for y in range(height):
            while start[j + 1] < y:
                j += 1
            p = vertex[j]
            plane[y * width + x] = (offset0[p] << bits) | <uint32_t>(y - p if y >= p else p - y)


cdef void _rows(uint32_t* plane, Py_ssize_t height, Py_ssize_t width,
                double sampling0, double sampling1, double sampling2, int bits,
                const double* inverse, double* f, Py_ssize_t* vertex, double* parabola,
                double* start) noexcept nogil:
    """Axis-2 pass over one plane: packed offsets in, float32 distances out."""
    cdef Py_ssize_t x, y, j, p
    cdef uint32_t packed, low_mask = (1U << bits) - 1
    cdef uint32_t* row
    cdef double t, u
    cdef double weight = sampling2 * sampling2
    cdef float distance
    for y in range(height):
        row = plane + y * width
        for x in range(width):
            packed = row[x]
            if packed == _NONE:
                f[x] = INFINITY
            else:
                # scipy's order of operations: ((d0 s0)**2 + (d1 s1)**2) + ...
                t = <double>(packed >> bits) * sampling0
                u = <double>(packed & low_mask) * sampling1
                f[x] = t * t + u * u
        # the envelope is not empty: the caller checked that the mask has a
        # background voxel, and every row of a plane then has an offset somewhere
        _lower_envelope(f, width, weight, inverse, vertex, parabola, start)
        j = 0
        for x in range(width):
            while start[j + 1] < x:
                j += 1
            p = vertex[j]
            t = <double>(x - p) * sampling2
            distance = <float>sqrt(f[p] + t * t)
            memcpy(&row[x], &distance, 4)


cdef void _fill_without_background(uint32_t* out, Py_ssize_t depth, Py_ssize_t height,
                                   Py_ssize_t width, double sampling0, double sampling1,
                                   double sampling2) noexcept nogil:
    """scipy's answer for a mask without background: the distance to (-1, 0, 0)."""
    cdef Py_ssize_t z, y, x
    cdef double t, u, v
    cdef float distance
    for z in range(depth):
        t = <double>(z + 1) * sampling0
        for y in range(height):
            u = <double>y * sampling1
            for x in range(width):
                v = <double>x * sampling2
                distance = <float>sqrt(t * t + u * u + v * v)
                memcpy(&out[(z * height + y) * width + x], &distance, 4)


def euclidean_distance(const uint8_t[:, :, ::1] mask not None, uint32_t[:, :, ::1] out not None,
                       double sampling0, double sampling1, double sampling2):
    """Write into ``out`` the float32 bits of each voxel's distance to background.

    Args:
        mask: Non-zero for foreground voxels; the distance is measured to the
            nearest zero voxel inside the array.
        out: Receives the float32 distances (viewed as uint32; same shape as
            ``mask``). A mask without any zero voxel gets scipy's answer: the
            distance to the index (-1, 0, 0).
        sampling0, sampling1, sampling2: Voxel size along each axis, positive.

    The caller guarantees equal shapes and that every packed offset fits:
    ``((mask.shape[0] - 1) << bits) + mask.shape[1] - 1 < 2**32 - 1`` where
    ``bits`` is the bit length of ``mask.shape[1] - 1``.
    """
    cdef Py_ssize_t depth = mask.shape[0]
    cdef Py_ssize_t height = mask.shape[1]
    cdef Py_ssize_t width = mask.shape[2]
    cdef Py_ssize_t plane = height * width
    cdef Py_ssize_t longest = max(height, width)
    cdef Py_ssize_t z
    cdef int bits = 0
    cdef bint has_background
    cdef uint32_t* volume
    cdef vector[double] f, parabola, start, inverse1, inverse2
    cdef vector[uint32_t] offset0
    cdef vector[Py_ssize_t] vertex

    if depth * plane == 0:
        return
    while (<size_t>1 << bits) < <size_t>height:
        bits += 1
    f.resize(longest)
    parabola.resize(longest)
    start.resize(longest + 1)
    vertex.resize(longest)
    offset0.resize(height)
    _reciprocals(inverse1, height, sampling1)
    _reciprocals(inverse2, width, sampling2)
    volume = &out[0, 0, 0]
    with nogil:
        has_background = _sweep_axis0(&mask[0, 0, 0], volume, depth, plane)
        if not has_background:
            _fill_without_background(volume, depth, height, width,
                                     sampling0, sampling1, sampling2)
        else:
            for z in range(depth):
                if height > 1:
                    _columns(volume + z * plane, height, width, sampling0, sampling1, bits,
                             inverse1.data(), f.data(), offset0.data(), vertex.data(),
                             parabola.data(), start.data())
                _rows(volume + z * plane, height, width, sampling0, sampling1, sampling2,
                      bits, inverse2.data(), f.data(), vertex.data(), parabola.data(),
                      start.data())
