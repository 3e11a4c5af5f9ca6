# cython: language_level=3
"""The mean over channels of uint8 affinities, as float32, in one pass.

Reach this kernel only through :mod:`blockwise.kernels.affinity_mean`, which
checks the shapes and dtypes and builds the table.

It gives the bytes of ``(affs.astype(np.float32) / 255).mean(axis=0,
dtype=np.float32)`` without the float32 copy of every channel: ``table[a]`` is
``np.float32(a) / np.float32(255)`` (made by numpy), the channels are added in
float32 in channel order, as numpy's reduction over the outer axis does
(``((t0 + t1) + t2) + ...``), and the sum is divided by the channel count, a
correctly rounded float32 division as numpy's (which divides in float64 and
rounds once: the same value for one division of float32 operands).
"""

from libc.stdint cimport uint8_t


def mean_uint8(const uint8_t[:, ::1] affs not None, const float[::1] table not None,
               float[::1] out not None):
    """``out[i]`` = the float32 mean over channels ``c`` of ``table[affs[c, i]]``.

    The caller guarantees ``table`` has 256 entries, ``out`` one per column of
    ``affs`` and at least one channel.
    """
    cdef Py_ssize_t channels = affs.shape[0]
    cdef Py_ssize_t n = affs.shape[1]
    cdef Py_ssize_t i, c
    cdef float total
    cdef float count = <float>channels
    cdef const uint8_t* a0
    cdef const uint8_t* a1
    cdef const uint8_t* a2
    with nogil:
        if channels == 3:
            a0 = &affs[0, 0]
            a1 = &affs[1, 0]
            a2 = &affs[2, 0]
            for i in range(n):
                total = table[a0[i]] + table[a1[i]]
                total = total + table[a2[i]]
                out[i] = total / count
        else:
            for i in range(n):
                total = table[affs[0, i]]
                for c in range(1, channels):
                    total = total + table[affs[c, i]]
                out[i] = total / count
