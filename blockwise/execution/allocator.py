"""glibc's allocator set for a block worker: a block's freed arrays are reused by the next.

By default glibc hands an allocation above a threshold to ``mmap`` and
unmaps it when freed; the threshold follows the largest mapping freed so
far, but never above 32 MiB. A block worker allocates arrays of the same
sizes block after block, and a 256^3 block's are 64-134 MiB each (uint64
ids, float32 surfaces, the flood's voxel table), so every block faulted in
and zeroed all their pages again. With the mmap and trim thresholds raised
to 1 GiB, such arrays come from the heap and stay there when freed, and the
next block reuses the pages. A worker keeps at most what its largest block
needed; allocations above :data:`MMAP_THRESHOLD` are mapped as before.

Measured with ``tests/benchmarks/bench_run_e2e.py --volume synthetic
--block-shape 256 256 256 --skip global whole waterz`` (100 MVox, 2
workers): 18.4 and 17.5 s without, 17.3 and 16.1 s with (relabel 5.8-6.1
against 4.2-5.5 block-seconds), peak RSS 657 against 671-682 MiB. Blocks
of 128^3 have arrays below the cap and gain nothing measurable.
"""

from __future__ import annotations

import ctypes
import logging
import sys

logger = logging.getLogger(__name__)

#: mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: allocations larger than this are still mapped on their own (and unmapped when freed)
MMAP_THRESHOLD = 1 << 30
#: free memory at the top of the heap kept for the next block, at most
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (a block worker).

    Returns:
        True if both were set; False where the C library is not glibc (or
        refused them): nothing changed, and the worker is only slower.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        # the symbols the process already has (its C library among them): no
        # ctypes.util.find_library, which runs ``ldconfig -p`` in a subprocess
        # (10-30 ms in every worker before its first block)
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        logger.debug("no mallopt in this C library: allocator thresholds unchanged")
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    done = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and done
    if not done:
        logger.debug("mallopt refused the thresholds: allocator unchanged")
    return done
