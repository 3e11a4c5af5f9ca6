# cython: language_level=3
"""The run counting of ``pair_runs.hpp``, declared once for the kernels that cimport it."""

from libc.stdint cimport uint64_t
from libcpp.vector cimport vector


cdef extern from "pair_runs.hpp" namespace "blockwise::pair_runs" nogil:
    cdef struct Run:
        uint64_t a
        uint64_t b
        uint64_t sum
        uint64_t count
    void flush(vector[Run]& runs, Run& run)
    void extend(vector[Run]& runs, Run& run, uint64_t a, uint64_t b, uint64_t value)
    void sum_by_pair(vector[Run]& runs)
