"""Edge statistics between fragments: integer sums and counts of uint8 affinities.

Two fragments are in contact wherever an affinity links a voxel of one to a
voxel of the other: the affinity of channel ``c`` at voxel ``p`` links ``p``
and ``p + offsets[c]``. For each pair of touching fragments ``u < v`` the
edge statistic is ``S``, the sum of those affinities as uint8 (0..255), and
``N``, their number; its mean affinity is ``S / (255 N)``, compared exactly
by the hierarchical agglomeration (:mod:`blockwise.hierarchical`).

Affinities stored as uint8 are used as they are; float affinities in [0, 1]
are quantised first (``rint(255 a)``), so every run of the same float input
gets the same integers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["ContactStatistics", "contact_statistics", "quantise_affinities"]


@dataclass(frozen=True)
class ContactStatistics:
    """One row per pair of touching fragments, sorted by ``(u, v)``.

    Attributes:
        u: (E,) uint64 the smaller fragment id.
        v: (E,) uint64 the larger fragment id.
        s: (E,) uint64 sum of the uint8 affinities on their contacts.
        n: (E,) uint64 number of those affinities (>= 1).
    """

    u: NDArray[np.uint64]
    v: NDArray[np.uint64]
    s: NDArray[np.uint64]
    n: NDArray[np.uint64]

    def __len__(self) -> int:
        return int(self.u.size)

    def select(self, rows: NDArray[np.bool_] | NDArray[np.intp]) -> ContactStatistics:
        """The rows picked by a mask or index."""
        return ContactStatistics(self.u[rows], self.v[rows], self.s[rows], self.n[rows])


def quantise_affinities(affs: NDArray[np.generic]) -> NDArray[np.uint8]:
    """Affinities as uint8: unchanged if uint8, else ``rint(255 a)`` of values in [0, 1]."""
    if affs.dtype == np.uint8:
        return np.asarray(affs, dtype=np.uint8)
    scaled = np.rint(np.asarray(affs, dtype=np.float64) * 255.0)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _shifted(shape: Sequence[int], offset: Sequence[int]) -> tuple[tuple[slice, ...], ...]:
    """Slices of ``p`` and of ``p + offset`` over the voxels where both lie in ``shape``."""
    here, there = [], []
    for size, o in zip(shape, offset, strict=True):
        if o >= 0:
            here.append(slice(0, max(size - o, 0)))
            there.append(slice(o, size))
        else:
            here.append(slice(-o, size))
            there.append(slice(0, max(size + o, 0)))
    return tuple(here), tuple(there)


def contact_statistics(
    fragments: NDArray[np.uint64],
    affs: NDArray[np.uint8],
    offsets: Sequence[Sequence[int]],
) -> ContactStatistics:
    """``(u, v, S, N)`` of every pair of touching non-zero fragments of a volume.

    Args:
        fragments: (z, y, x) uint64 fragment ids; 0 is background and has no edges.
        affs: (channels, z, y, x) uint8 affinities, one channel per offset.
        offsets: per channel, the (z, y, x) offset in voxels that it links.

    Raises:
        ValueError: if the shapes or the number of offsets disagree.
    """
    if fragments.ndim != 3 or affs.ndim != 4 or affs.shape[1:] != fragments.shape:
        raise ValueError(
            f"fragments (z, y, x) and affinities (c, z, y, x) must cover the same voxels, "
            f"received {fragments.shape} and {affs.shape}"
        )
    if affs.dtype != np.uint8:
        raise ValueError(f"affinities must be uint8 here, received {affs.dtype}")
    if len(offsets) > affs.shape[0]:
        raise ValueError(f"{len(offsets)} offsets but only {affs.shape[0]} affinity channels")
    lows, highs, values = [], [], []
    for channel, offset in enumerate(offsets):
        here, there = _shifted(fragments.shape, offset)
        a = fragments[here].ravel()
        b = fragments[there].ravel()
        keep = (a != b) & (a != 0) & (b != 0)
        if not keep.any():
            continue
        a, b = a[keep], b[keep]
        lows.append(np.minimum(a, b))
        highs.append(np.maximum(a, b))
        values.append(affs[channel][here].ravel()[keep].astype(np.uint64))
    if not lows:
        empty = np.zeros(0, np.uint64)
        return ContactStatistics(empty, empty.copy(), empty.copy(), empty.copy())
    low = np.concatenate(lows)
    high = np.concatenate(highs)
    value = np.concatenate(values)
    order = np.lexsort((high, low))
    low, high, value = low[order], high[order], value[order]
    first = np.ones(low.size, dtype=bool)
    first[1:] = (low[1:] != low[:-1]) | (high[1:] != high[:-1])
    starts = np.flatnonzero(first)
    s = np.add.reduceat(value, starts).astype(np.uint64)
    n = np.diff(np.r_[starts, low.size]).astype(np.uint64)
    return ContactStatistics(low[starts], high[starts], s, n)
