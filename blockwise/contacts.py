"""Edge statistics between fragments: integer sums and counts of uint8 affinities.

Two fragments are in contact wherever an affinity links a voxel of one to a
voxel of the other: the affinity of channel ``c`` at voxel ``p`` links ``p``
and ``p + offsets[c]``. For each pair of touching fragments ``u < v`` the
edge statistic is ``S``, the sum of those affinities as uint8 (0..255), and
``N``, their number; its mean affinity is ``S / (255 N)``, compared exactly
by the hierarchical agglomeration (:mod:`blockwise.hierarchical`).

Affinities stored as uint8 are used as they are; float affinities in [0, 1]
are quantised first (``rint(255 a)``), so every run of the same float input
gets the same integers. The counting is a compiled kernel (``_contacts``): one
pass over the voxels per offset, runs of one pair along x summed before they
are stored (``tests/test_contacts.py`` holds it against a voxel loop and the
whole-array numpy version it replaced).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from blockwise.kernels import _contacts

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
        ValueError: if the shapes or the number of offsets disagree, ``affs`` is
            not uint8, ``fragments`` not uint64, or an offset is not three integers.
    """
    if fragments.ndim != 3 or affs.ndim != 4 or affs.shape[1:] != fragments.shape:
        raise ValueError(
            f"fragments (z, y, x) and affinities (c, z, y, x) must cover the same voxels, "
            f"received {fragments.shape} and {affs.shape}"
        )
    if affs.dtype != np.uint8:
        raise ValueError(f"affinities must be uint8 here, received {affs.dtype}")
    if fragments.dtype != np.uint64:
        raise ValueError(f"fragments must be uint64, received {fragments.dtype}")
    if len(offsets) > affs.shape[0]:
        raise ValueError(f"{len(offsets)} offsets but only {affs.shape[0]} affinity channels")
    table = np.zeros((len(offsets), 3), dtype=np.int64)
    for row, offset in enumerate(offsets):
        if len(offset) != 3 or not all(
            isinstance(o, int | np.integer) and not isinstance(o, bool) for o in offset
        ):
            raise ValueError(
                f"offsets must be (z, y, x) triples of integers, received {list(offsets)}"
            )
        table[row] = offset
    u, v, s, n = _contacts.contact_sums(
        np.ascontiguousarray(fragments), np.ascontiguousarray(affs), np.ascontiguousarray(table)
    )
    return ContactStatistics(u, v, s, n)
