"""Re-joining watershed basins that block boundaries cut into several fragments.

extract_fragments floods each block's read ROI and keeps its write ROI, so a
basin that straddles a block face becomes one fragment on each side. Left
alone, the cut would turn into an edge scored like any other and halves of one
basin would only merge late, or not at all. The flood of a block's read ROI
reaches across its faces: extract_fragments saves it
(:mod:`blockwise.basin_files`), and the agglomerate block of the same index
finds in it the pairs of fragments from different blocks that touch across a
face and are mostly covered by the same basin: those pairs are one basin and
are merged before any scoring, as they would be had the volume been processed
whole. How far a basin is followed across a face is extract_fragments'
context.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from blockwise.kernels import _overlaps
from blockwise.kernels.relabel import relabel_sorted, unique_nonzero

# a fragment is "covered" by the basin holding more than this share of its voxels
MIN_COVERAGE = 0.5
# the merge score stored for the halves of a cut basin: below every threshold,
# and distinguishable from a scored merge (scores are never negative)
CUT_MERGE_SCORE = -1.0
# (fragment, basin) pairs counted in a dense table up to this many cells (8 bytes each)
PAIR_TABLE_LIMIT = 1 << 24


def _dominant(
    fragments: NDArray[np.uint64], basins: NDArray[np.uint64], wanted: NDArray[np.uint64]
) -> NDArray[np.uint64]:
    """The basin covering each of the ``wanted`` (sorted, unique) fragments, 0 if none does.

    Ids become dense indices through the relabel kernel (no sort of the
    voxels), and (fragment, basin) overlaps are counted with one ``bincount``
    where the table of pairs is small enough; the result equals counting with
    ``np.unique`` (``tests/test_stitching.py`` compares the two).
    """
    f = np.ascontiguousarray(fragments).reshape(-1)
    present = unique_nonzero(f)
    at = np.minimum(np.searchsorted(wanted, present), max(len(wanted) - 1, 0))
    is_wanted = wanted[at] == present if len(wanted) else np.zeros(len(present), dtype=bool)
    # wanted fragment k -> k + 1, every other id -> 0
    dense = np.where(is_wanted, at + 1, 0).astype(np.uint64)
    f_dense = relabel_sorted(f, present, dense)
    voxels = np.flatnonzero(f_dense)
    f_index = (f_dense[voxels] - np.uint64(1)).astype(np.int64)
    b = np.ascontiguousarray(basins).reshape(-1)[voxels]
    basin_ids = np.concatenate([np.zeros(1, dtype=np.uint64), unique_nonzero(b)])
    # basin 0 (unflooded) keeps index 0, basin basin_ids[k] gets index k
    b_index = relabel_sorted(b, basin_ids[1:], np.arange(1, len(basin_ids), dtype=np.uint64))
    num_basins = len(basin_ids)
    key = f_index * num_basins + b_index.astype(np.int64)
    if len(wanted) * num_basins <= PAIR_TABLE_LIMIT:
        table = np.bincount(key, minlength=len(wanted) * num_basins)
        keys = np.flatnonzero(table)
        counts = table[keys]
    else:
        keys, counts = np.unique(key, return_counts=True)
    pair_fragment, pair_basin = keys // num_basins, keys % num_basins
    sizes = np.bincount(f_index, minlength=len(wanted))
    # the largest pair of each fragment: sort by (fragment, count) and take the last
    best = np.lexsort((counts, pair_fragment))
    last = np.r_[pair_fragment[best][1:] != pair_fragment[best][:-1], True]
    top = best[last]
    dominant = np.zeros(len(wanted), dtype=np.uint64)
    covered = counts[top] > MIN_COVERAGE * sizes[pair_fragment[top]]
    dominant[pair_fragment[top][covered]] = basin_ids[pair_basin[top][covered]]
    return dominant


def _pairs_across_blocks(
    fragments: NDArray[np.uint64],
    block_of_id: Callable[[NDArray[np.uint64]], NDArray[np.int64]],
) -> tuple[NDArray[np.uint64], NDArray[np.uint64]]:
    """Unique (u, v), u < v, of non-zero fragments of different blocks that share a face."""
    blocks = block_of_id(fragments.ravel()).reshape(fragments.shape)
    us, vs = [], []
    for axis in range(3):
        f = np.moveaxis(fragments, axis, 0)
        b = np.moveaxis(blocks, axis, 0)
        # fragments never cross a write ROI: pairs of blocks only meet at block faces
        faces = np.flatnonzero(np.any(b[1:] != b[:-1], axis=tuple(range(1, b.ndim))))
        for i in faces.tolist():
            lo, hi = f[i].ravel(), f[i + 1].ravel()
            differ = (lo != hi) & (lo != 0) & (hi != 0) & (b[i].ravel() != b[i + 1].ravel())
            us.append(np.minimum(lo[differ], hi[differ]))
            vs.append(np.maximum(lo[differ], hi[differ]))
    if not us:
        empty = np.zeros(0, dtype=np.uint64)
        return empty, empty
    u, v, _ = _distinct_pairs(np.concatenate(us), np.concatenate(vs))
    return u, v


def _distinct_pairs(
    u: NDArray[np.uint64], v: NDArray[np.uint64]
) -> tuple[NDArray[np.uint64], NDArray[np.uint64], NDArray[np.intp]]:
    """The distinct pairs (u[i], v[i]) in (u, v) order, and where each first occurs.

    Through dense indices of the ids (``np.unique(axis=0)`` is slow).
    """
    if u.size == 0:
        return u, v, np.zeros(0, dtype=np.intp)
    ids = np.unique(np.concatenate([u, v]))
    n = len(ids)
    keys, first = np.unique(
        np.searchsorted(ids, u).astype(np.int64) * n + np.searchsorted(ids, v), return_index=True
    )
    return ids[keys // n], ids[keys % n], first


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
    u, v = _pairs_across_blocks(fragments, block_of_id)
    if u.size == 0:
        return u, v
    wanted = np.unique(np.concatenate([u, v]))
    dominant = _dominant(fragments, basins, wanted)
    du = dominant[np.searchsorted(wanted, u)]
    dv = dominant[np.searchsorted(wanted, v)]
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


def dominant_basins(
    fragments: NDArray[np.uint64],
    basins: NDArray[np.uint64],
    wanted: NDArray[np.uint64],
    leave_out: tuple[slice, ...],
) -> NDArray[np.uint64]:
    """The basin covering each ``wanted`` fragment, counting only voxels outside a box.

    Equals ``_dominant(fragments[outside], basins[outside], wanted)`` with
    ``outside`` false in ``leave_out`` (``tests/test_stitching.py`` compares
    them), in one pass of a compiled kernel without copying the voxels out. A
    basin covers a fragment when it holds more than ``MIN_COVERAGE`` (one
    half) of the fragment's counted voxels, so at most one basin can; a
    fragment with no voxel outside the box gets 0.

    Args:
        fragments: (z, y, x) uint64 fragment ids.
        basins: (z, y, x) uint64 basin ids of the same voxels.
        wanted: sorted, unique fragment ids.
        leave_out: a box of ``fragments``: three slices without a step (the write ROI).

    Raises:
        ValueError: if shapes or dtypes disagree, ``wanted`` is not strictly
            increasing or holds 0 (background, no fragment), or ``leave_out`` is
            not three slices without a step.
    """
    if fragments.shape != basins.shape or fragments.ndim != 3:
        raise ValueError(
            f"fragments and basins must be 3D of one shape, received {fragments.shape} "
            f"and {basins.shape}"
        )
    if fragments.dtype != np.uint64 or basins.dtype != np.uint64 or wanted.dtype != np.uint64:
        raise ValueError(
            f"fragments, basins and wanted must be uint64, received {fragments.dtype}, "
            f"{basins.dtype} and {wanted.dtype}"
        )
    if wanted.ndim != 1 or (wanted.size > 1 and not bool(np.all(wanted[1:] > wanted[:-1]))):
        raise ValueError("wanted must be a strictly increasing 1D array of fragment ids")
    if wanted.size and wanted[0] == 0:
        raise ValueError("wanted holds 0, the background, which is no fragment")
    if len(leave_out) != 3 or not all(
        isinstance(sl, slice) and sl.step in (None, 1) for sl in leave_out
    ):
        raise ValueError(f"leave_out must be three slices without a step, received {leave_out}")
    bounds = [sl.indices(n)[:2] for sl, n in zip(leave_out, fragments.shape, strict=True)]
    return _overlaps.dominant_labels(
        fragments,
        basins,
        np.ascontiguousarray(wanted),
        *bounds[0],
        *bounds[1],
        *bounds[2],
        MIN_COVERAGE,
    )


def owned_cut_pairs(
    fragments: NDArray[np.uint64],
    basins: NDArray[np.uint64],
    write: tuple[slice, ...],
) -> tuple[NDArray[np.uint64], NDArray[np.uint64]]:
    """The pairs of :func:`cut_pairs` that a block owns (its fragment is u < v).

    Equal to keeping the pairs of ``cut_pairs(fragments, basins, block_of_id)``
    whose u lies in the write ROI, for a flood ``basins`` made by the block
    (each of its fragments lies inside one basin), at a fraction of the cost: such a pair
    touches across a face of the write ROI, so only those faces are scanned;
    the block's own fragment is covered by the basin it lies in; and the other
    fragment's voxels, all outside the write ROI, are counted there only.

    Args:
        fragments: (z, y, x) global fragment ids of the flood's region.
        basins: (z, y, x) the block's flood of that region.
        write: the block's write ROI inside the region, as slices.
    """
    us, vs, own_basins = [], [], []
    for axis in range(3):
        for own_at, out_at in (
            (write[axis].start, write[axis].start - 1),
            (write[axis].stop - 1, write[axis].stop),
        ):
            if out_at < 0 or out_at >= fragments.shape[axis]:
                continue  # the face lies on the region's border: nothing beyond it here
            own_plane = tuple(own_at if a == axis else write[a] for a in range(3))
            out_plane = tuple(out_at if a == axis else write[a] for a in range(3))
            own, out = fragments[own_plane].ravel(), fragments[out_plane].ravel()
            # an own fragment u < v: the pair is this block's (fragments never cross blocks)
            pair = (own != 0) & (out != 0) & (own < out)
            us.append(own[pair])
            vs.append(out[pair])
            own_basins.append(basins[own_plane].ravel()[pair])
    if not us:
        empty = np.zeros(0, dtype=np.uint64)
        return empty, empty.copy()
    u, v, first = _distinct_pairs(np.concatenate(us), np.concatenate(vs))
    if u.size == 0:
        return u, v
    du = np.concatenate(own_basins)[first]
    # the other fragments' voxels in the region all lie outside the write ROI: count there
    wanted = np.unique(v)
    dominant = dominant_basins(fragments, basins, wanted, write)
    dv = dominant[np.searchsorted(wanted, v)]
    same = (du == dv) & (du != 0)
    return u[same], v[same]
