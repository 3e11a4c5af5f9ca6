"""Re-joining watershed basins that block boundaries cut into several fragments.

extract_fragments floods each block's read ROI and keeps its write ROI, so a
basin that straddles a block face becomes one fragment on each side. Left
alone, the cut would turn into an edge scored like any other and halves of one
basin would only merge late, or not at all. An agglomerate block therefore
floods its own read ROI once more (the face now lies inside it) and finds the
pairs of fragments from different blocks that touch across a face and are
mostly covered by the same basin: those pairs are one basin and are merged
before any scoring, as they would be had the volume been processed whole.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

# a fragment is "covered" by the basin holding more than this share of its voxels
MIN_COVERAGE = 0.5
# the merge score stored for the halves of a cut basin: below every threshold,
# and distinguishable from a scored merge (scores are never negative)
CUT_MERGE_SCORE = -1.0


def _dominant(
    fragments: NDArray[np.uint64], basins: NDArray[np.uint64]
) -> tuple[NDArray[np.uint64], NDArray[np.uint64]]:
    """Each non-zero fragment id (sorted) and the basin covering it (0 if none does)."""
    f = fragments.ravel()
    b = basins.ravel()
    keep = f != 0
    f, b = f[keep], b[keep]
    ids, f_index = np.unique(f, return_inverse=True)
    sizes = np.bincount(f_index, minlength=len(ids))
    order = np.lexsort((b, f_index))
    fs, bs = f_index[order], b[order]
    starts = np.flatnonzero(np.r_[True, (fs[1:] != fs[:-1]) | (bs[1:] != bs[:-1])])
    counts = np.diff(np.r_[starts, fs.size])
    pair_fragment, pair_basin = fs[starts], bs[starts]
    # the largest pair of each fragment: sort by (fragment, count) and take the last
    best = np.lexsort((counts, pair_fragment))
    last = np.r_[pair_fragment[best][1:] != pair_fragment[best][:-1], True]
    top = best[last]
    dominant = np.where(
        counts[top] > MIN_COVERAGE * sizes[pair_fragment[top]], pair_basin[top], 0
    ).astype(np.uint64)
    return ids.astype(np.uint64), dominant


def _touching_pairs(fragments: NDArray[np.uint64]) -> tuple[NDArray[np.uint64], NDArray[np.uint64]]:
    """Unique (u, v), u < v, of different non-zero fragments that share a face."""
    us, vs = [], []
    for axis in range(3):
        a = np.moveaxis(fragments, axis, 0)
        lo, hi = a[:-1].ravel(), a[1:].ravel()
        differ = (lo != hi) & (lo != 0) & (hi != 0)
        us.append(np.minimum(lo[differ], hi[differ]))
        vs.append(np.maximum(lo[differ], hi[differ]))
    u = np.concatenate(us)
    v = np.concatenate(vs)
    if u.size == 0:
        return u, v
    pairs = np.unique(np.stack([u, v], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def cut_pairs(
    fragments: NDArray[np.uint64],
    basins: NDArray[np.uint64],
    block_of_id: Callable[[NDArray[np.uint64]], NDArray[np.int64]],
) -> tuple[NDArray[np.uint64], NDArray[np.uint64]]:
    """Pairs of fragments that are one basin cut by a block face.

    Args:
        fragments: (z, y, x) global fragment ids of a read ROI.
        basins: (z, y, x) a flood of the same read ROI as one piece.
        block_of_id: maps fragment ids to the index of the block that made them.

    Returns:
        (u, v), u < v: touching fragments of different blocks covered by the same basin.
    """
    u, v = _touching_pairs(fragments)
    different = block_of_id(u) != block_of_id(v)
    u, v = u[different], v[different]
    if u.size == 0:
        return u, v
    ids, dominant = _dominant(fragments, basins)
    du = dominant[np.searchsorted(ids, u)]
    dv = dominant[np.searchsorted(ids, v)]
    same = (du == dv) & (du != 0)
    return u[same], v[same]


def is_pair(
    u: NDArray[np.uint64],
    v: NDArray[np.uint64],
    pairs: tuple[NDArray[np.uint64], NDArray[np.uint64]],
) -> NDArray[np.bool_]:
    """For each edge (u, v), u < v, whether it is one of ``pairs`` (also u < v)."""
    pu, pv = pairs
    if len(pu) == 0 or len(u) == 0:
        return np.zeros(len(u), dtype=bool)
    ids = np.unique(np.concatenate([u, v, pu, pv]))
    n = len(ids)
    keys = np.searchsorted(ids, u) * n + np.searchsorted(ids, v)
    wanted = np.searchsorted(ids, pu) * n + np.searchsorted(ids, pv)
    return np.isin(keys, wanted)
