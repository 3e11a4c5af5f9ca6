"""Fragments (supervoxels) from affinities: a seeded watershed on boundary distances.

Voxels whose mean affinity exceeds a threshold are *interior*. Seeds are the
deepest interior voxels (maxima of the distance to the nearest boundary, in nm,
within a window), and a seeded watershed floods from them: first the interior,
from deep to shallow, then the boundary voxels in order of increasing boundary
strength. Every voxel of the mask ends up in exactly one fragment.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import cast

import numpy as np
from numpy.typing import NDArray

from blockwise.config import ExtractFragmentsConfig
from blockwise.kernels.affinity_mean import mean_affinity
from blockwise.kernels.components import component_boxes, label_components
from blockwise.kernels.distance import distance_transform
from blockwise.kernels.peaks import window_peaks
from blockwise.kernels.relabel import first_occurrences, relabel
from blockwise.kernels.watershed import seeded_watershed

# no scipy here: the compiled kernels give scipy.ndimage's results (labels, boxes,
# maxima, distances), and a worker (and the fork server that preloads what workers
# import) does not spend 0.15-0.25 s importing it before its first block

__all__ = ["fragments_from_affinities"]

logger = logging.getLogger(__name__)


def fragments_from_affinities(
    affs: NDArray[np.float32] | NDArray[np.uint8],
    voxel_size: Sequence[int],
    *,
    boundary_threshold: float = 0.5,
    min_seed_distance_nm: float = 50.0,
    seeds_per_section: bool = False,
    min_fragment_size_vx: int = 0,
    mask: NDArray[np.bool_] | None = None,
) -> tuple[NDArray[np.uint64], int]:
    """Cut a volume into fragments with a seeded watershed on its affinities.

    1. ``m``: the mean affinity over channels; interior = ``m > boundary_threshold``
       inside ``mask``.
    2. ``dt``: the distance (nm) from every interior voxel to the nearest
       non-interior voxel (the exact Euclidean
       :func:`~blockwise.kernels.distance.distance_transform`, float32, with
       ``sampling=voxel_size``; per z-section with the (y, x) sampling if
       ``seeds_per_section``). A volume or section without any non-interior voxel
       has no boundary to measure from: all its voxels get the same depth (its
       diagonal in nm), so it seeds as one piece.
    3. Seeds: voxels with ``dt > 0`` that equal the maximum of ``dt`` in a window
       of ``min_seed_distance_nm`` per axis (in voxels: the nearest odd whole
       number, rounding halves and even numbers up, at least 1, so the window is
       centred; 1 along z if ``seeds_per_section``), grouped into one seed per
       6-connected component (per section, 4-connected, if ``seeds_per_section``).
    4. Flood (:func:`~blockwise.kernels.watershed.seeded_watershed`, 6-connected,
       inside ``mask``) over ``-dt / max(dt)`` on interior voxels and ``1 - m`` on
       the others, so the interior floods first from deep to shallow, then the
       boundary in order of increasing boundary strength. Seed voxels get
       ``-inf``: all seeds start together (Meyer's flooding from markers) rather
       than each when the flood level reaches its depth, which keeps a deep seed
       from claiming the flanks of a shallow one before it starts.
    5. A connected component of ``mask`` (6-connected) that holds no seed, for
       example one without interior voxels, becomes one fragment as a whole.
    6. If ``min_fragment_size_vx`` > 0: the voxels of fragments with fewer
       voxels form groups (6-connected), and each group is flooded once more,
       alone, from the voxels of other fragments that touch it (at their own
       surface values, inside ``mask``), so a small fragment joins its
       neighbours across its weakest boundaries; no other voxel changes, and
       every fragment ends with at least ``min_fragment_size_vx`` voxels unless
       it is a whole mask component (or the whole volume) by itself. The flood
       of a group runs in the box around it (grown by one voxel): it costs
       the groups' boxes, which on real data add up to a small part of the
       volume (FIB-25: 984 small voxels in 15.6 M).
    7. Fragments are numbered 1..n in the order of their first voxel in C order.

    The result depends only on the inputs: the same input gives the same bytes.

    Args:
        affs: (channels, z, y, x) affinities: float32 in [0, 1], or uint8
            meaning value / 255 (as stored; the result is the same as for
            ``affs.astype(np.float32) / 255``, without that copy). The first
            three channels are the nearest-neighbour z, y and x affinities, and
            the mean is taken over all channels.
        voxel_size: (z, y, x) voxel size in nm, positive.
        boundary_threshold: A voxel is interior where its mean affinity exceeds
            this; in [0, 1].
        min_seed_distance_nm: Size (nm) of the window in which a seed must be the
            deepest voxel; at least 0.
        seeds_per_section: For anisotropic data: distances and seeds per z-section
            (2D); the flood stays 3D.
        min_fragment_size_vx: Fragments with fewer voxels than this are merged
            into neighbours (see above); at least 0.
        mask: (z, y, x), False where voxels are excluded (label 0); ``None``
            includes every voxel.

    Returns:
        (z, y, x) uint64 fragment ids 1..n (0 outside ``mask``) and n.

    Raises:
        ValueError: if an argument has the wrong shape, dtype or range; the
            message says what was expected and what was received.
    """
    _check_inputs(
        affs,
        voxel_size,
        boundary_threshold,
        min_seed_distance_nm,
        min_fragment_size_vx,
        mask,
    )
    voxel_nm = tuple(float(s) for s in voxel_size)
    shape = affs.shape[1:]
    if math.prod(shape) == 0:
        return np.zeros(shape, dtype=np.uint64), 0
    if mask is not None and mask.all():
        mask = None  # one component covering everything, as without a mask

    # the surface is built in the buffer of the mean affinity; every step below
    # frees or reuses its full-volume intermediates as soon as they are dead
    surface = _mean_affinity(affs)
    interior = surface > np.float32(boundary_threshold)
    if mask is not None:
        interior &= mask
    depth_nm = _boundary_distance_nm(interior, voxel_nm, seeds_per_section)
    seed_labels, top_id = _find_seeds(depth_nm, voxel_nm, min_seed_distance_nm, seeds_per_section)
    seed_index = np.flatnonzero(seed_labels)
    seed_ids = seed_labels.reshape(-1)[seed_index].astype(np.uint64)
    del seed_labels

    np.subtract(np.float32(1), surface, out=surface)
    max_depth = float(depth_nm.max())
    if max_depth > 0:
        # -d / max, computed as d / -max: the same float32 values
        np.divide(depth_nm, np.float32(-max_depth), out=depth_nm)
        np.copyto(surface, depth_nm, where=interior)
    del depth_nm, interior

    components = _MaskComponents(mask)
    # the seeds, and after each flood the fragments, live in this one buffer
    fragments = np.zeros(shape, dtype=np.uint64)
    fragments.reshape(-1)[seed_index] = seed_ids
    del seed_index, seed_ids
    fragments, top_id = components.seed_seedless(fragments, top_id)
    _flood_in_place(surface, fragments, mask)
    logger.debug("flooded %d seeds over %s voxels", top_id, shape)

    if min_fragment_size_vx > 0:
        sizes = np.bincount(fragments.reshape(-1).view(np.int64), minlength=top_id + 1)
        is_small = sizes < min_fragment_size_vx
        is_small[0] = False
        if is_small.any():
            _merge_small_fragments(fragments, surface, mask, is_small, top_id)
            logger.debug(
                "merged %d fragments below %d voxels", is_small.sum(), min_fragment_size_vx
            )
    del surface

    ids = first_occurrences(fragments)
    fragments = relabel(fragments, ids, np.arange(1, ids.size + 1, dtype=np.uint64))
    return fragments, int(ids.size)


def _mean_affinity(affs: NDArray[np.float32] | NDArray[np.uint8]) -> NDArray[np.float32]:
    """The float32 mean over channels; uint8 (value / 255) in one pass, with the bytes
    of its float32 values' mean and without their float32 copy."""
    if affs.dtype == np.uint8:
        return mean_affinity(cast(NDArray[np.uint8], affs))
    return affs.mean(axis=0, dtype=np.float32)


def _boundary_distance_nm(
    interior: NDArray[np.bool_], voxel_nm: tuple[float, ...], per_section: bool
) -> NDArray[np.float32]:
    """Distance (nm) from each interior voxel to the nearest non-interior voxel."""
    if not per_section:
        return _distance_nm(interior, voxel_nm)
    depth_nm = np.empty(interior.shape, dtype=np.float32)
    for z in range(interior.shape[0]):
        depth_nm[z] = _distance_nm(interior[z], voxel_nm[1:])
    return depth_nm


def _distance_nm(interior: NDArray[np.bool_], voxel_nm: tuple[float, ...]) -> NDArray[np.float32]:
    if interior.all():
        # nothing to measure from (distance_transform, like scipy, would measure
        # to the index (-1, 0, ...) outside the array); every voxel is as deep as
        # the region can hold
        diagonal_nm = math.hypot(*(n * s for n, s in zip(interior.shape, voxel_nm, strict=True)))
        return np.full(interior.shape, diagonal_nm, dtype=np.float32)
    return distance_transform(interior, sampling=voxel_nm)


def _find_seeds(
    depth_nm: NDArray[np.float32],
    voxel_nm: tuple[float, ...],
    min_seed_distance_nm: float,
    per_section: bool,
) -> tuple[NDArray[np.integer], int]:
    """Label the window maxima of ``depth_nm`` (> 0), one id per connected group."""
    window = [_window_vx(min_seed_distance_nm, s) for s in voxel_nm]
    if per_section:
        window[0] = 1
    # (depth_nm == ndimage.maximum_filter(depth_nm, size=window)) & (depth_nm > 0)
    is_peak = window_peaks(depth_nm, window)
    # 6-connected groups; per section 4-connected (no seed spans two sections)
    return label_components(is_peak, planar=per_section)


def _window_vx(distance_nm: float, voxel_nm: float) -> int:
    """The odd number of voxels nearest to ``distance_nm`` (halves and evens round up)."""
    n = max(1, math.floor(distance_nm / voxel_nm + 0.5))
    return n if n % 2 == 1 else n + 1


def _flood_in_place(
    surface: NDArray[np.float32], labels: NDArray[np.uint64], mask: NDArray[np.bool_] | None
) -> None:
    """Flood the seeds in ``labels`` (in place) over ``surface`` with seeds at ``-inf``.

    ``surface`` is changed at the seed voxels only while the flood runs.
    """
    seed_index = np.flatnonzero(labels)
    flat_surface = surface.reshape(-1)
    seed_surface = flat_surface[seed_index]
    flat_surface[seed_index] = -np.inf
    try:
        seeded_watershed(surface, labels, mask, overwrite_seeds=True)
    finally:
        flat_surface[seed_index] = seed_surface


def _merge_small_fragments(
    fragments: NDArray[np.uint64],
    surface: NDArray[np.float32],
    mask: NDArray[np.bool_] | None,
    is_small: NDArray[np.bool_],
    top_id: int,
) -> None:
    """Hand the voxels of the small fragments to the fragments around them, in place.

    The voxels of small fragments (``is_small[id]``) form groups (6-connected).
    Each group is flooded again on its own (in the box around it) over
    ``surface``, 6-connected inside ``mask``, from the voxels of other
    fragments that touch it: those keep their labels and their surface values,
    so a small fragment goes to the neighbours across its weakest boundaries,
    and what a group becomes depends only on the voxels around it. Voxels of
    the other fragments do not change. A group that touches no other fragment
    is a whole component of ``mask`` (or the whole volume): it becomes one
    fragment, with a new id after ``top_id``.
    """
    groups, count = label_components(is_small[fragments.view(np.int64)])
    for label, found in enumerate(component_boxes(groups, count), start=1):
        if found is None:  # every label 1..count has voxels; kept for the type
            continue
        box = tuple(
            slice(max(0, s.start - 1), min(n, s.stop + 1))
            for s, n in zip(found, groups.shape, strict=True)
        )
        group = groups[box] == label
        # the 6-neighbours of the group (the box holds them: it is grown by one)
        touching = _grow6(group) & ~group
        if mask is not None:
            touching &= mask[box]
        region = fragments[box]  # a view: written in place
        if not touching.any():
            top_id += 1
            region[group] = top_id
            continue
        seeds = np.where(touching, region, np.uint64(0))
        flooded = seeded_watershed(
            np.ascontiguousarray(surface[box]), seeds, group | touching, overwrite_seeds=True
        )
        region[group] = flooded[group]


def _grow6(region: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """``region`` and its 6-neighbours inside the array (``ndimage.binary_dilation``'s default)."""
    grown = region.copy()
    for axis in range(region.ndim):
        ahead = [slice(None)] * region.ndim
        behind = [slice(None)] * region.ndim
        ahead[axis], behind[axis] = slice(1, None), slice(None, -1)
        grown[tuple(ahead)] |= region[tuple(behind)]
        grown[tuple(behind)] |= region[tuple(ahead)]
    return grown


class _MaskComponents:
    """The 6-connected components of a mask, labelled once when first needed."""

    def __init__(self, mask: NDArray[np.bool_] | None) -> None:
        self._mask = mask
        self._labels: NDArray[np.int32] | None = None
        self._count = 0

    def seed_seedless(
        self, seeds: NDArray[np.uint64], top_id: int
    ) -> tuple[NDArray[np.uint64], int]:
        """Make every mask component without a seed one seed, ids after ``top_id``.

        Returns:
            The seeds (modified in place) and the largest seed id now in use.
        """
        if self._mask is None:
            if not seeds.any():
                seeds[...] = top_id + 1
                return seeds, top_id + 1
            return seeds, top_id
        if self._labels is None:
            self._labels, self._count = label_components(self._mask)
        has_seed = np.zeros(self._count + 1, dtype=bool)
        has_seed[self._labels[seeds != 0]] = True
        has_seed[0] = True
        seedless = np.flatnonzero(~has_seed)
        if seedless.size == 0:
            return seeds, top_id
        new_ids = np.zeros(self._count + 1, dtype=np.uint64)
        new_ids[seedless] = np.arange(top_id + 1, top_id + 1 + seedless.size, dtype=np.uint64)
        whole = new_ids[self._labels]
        np.copyto(seeds, whole, where=whole != 0)
        return seeds, top_id + int(seedless.size)


def _check_inputs(
    affs: object,
    voxel_size: object,
    boundary_threshold: float,
    min_seed_distance_nm: float,
    min_fragment_size_vx: int,
    mask: object,
) -> None:
    if not isinstance(affs, np.ndarray):
        raise ValueError(f"affs must be a numpy array, received {type(affs).__name__}")
    if affs.ndim != 4 or affs.shape[0] < 3:
        raise ValueError(
            "affs must be (channels, z, y, x) with at least 3 channels, received shape "
            f"{affs.shape}"
        )
    if affs.dtype not in (np.float32, np.uint8):
        raise ValueError(f"affs must have dtype float32 or uint8, received {affs.dtype}")
    if affs.dtype == np.float32 and affs.size:
        low, high = float(affs.min()), float(affs.max())
        if not (low >= 0 and high <= 1):  # also catches NaN
            raise ValueError(f"affs must lie in [0, 1], received values from {low} to {high}")
    if (
        not isinstance(voxel_size, Sequence | np.ndarray)
        or len(voxel_size) != 3
        or not all(
            isinstance(s, int | float | np.integer | np.floating)
            and not isinstance(s, bool)
            and math.isfinite(s)
            and s > 0
            for s in voxel_size
        )
    ):
        raise ValueError(
            f"voxel_size must be 3 positive numbers (z, y, x) in nm, received {voxel_size!r}"
        )
    if not (0 <= boundary_threshold <= 1):
        raise ValueError(f"boundary_threshold must lie in [0, 1], received {boundary_threshold}")
    if not (math.isfinite(min_seed_distance_nm) and min_seed_distance_nm >= 0):
        raise ValueError(
            f"min_seed_distance_nm must be a finite number >= 0, received {min_seed_distance_nm}"
        )
    if (
        isinstance(min_fragment_size_vx, bool)
        or not isinstance(min_fragment_size_vx, int | np.integer)
        or min_fragment_size_vx < 0
    ):
        raise ValueError(
            f"min_fragment_size_vx must be an integer >= 0, received {min_fragment_size_vx!r}"
        )
    if mask is not None:
        if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
            received = mask.dtype if isinstance(mask, np.ndarray) else type(mask).__name__
            raise ValueError(f"mask must be a bool numpy array, received {received}")
        if mask.shape != affs.shape[1:]:
            raise ValueError(
                f"mask must have the spatial shape of affs {affs.shape[1:]}, received {mask.shape}"
            )


def fragments_for_config(
    affs: NDArray[np.float32] | NDArray[np.uint8],
    voxel_size: Sequence[int],
    params: ExtractFragmentsConfig,
    mask: NDArray[np.bool_] | None,
) -> tuple[NDArray[np.uint64], int]:
    """:func:`fragments_from_affinities` with a run's ``extract_fragments`` parameters.

    Returns the fragments (local ids 1..n) and n. extract_fragments and the
    cut-basin detection of agglomerate both call this, so both flood exactly alike.
    """
    return fragments_from_affinities(
        affs,
        (voxel_size[0], voxel_size[1], voxel_size[2]),
        boundary_threshold=params.boundary_threshold,
        min_seed_distance_nm=params.min_seed_distance_nm,
        seeds_per_section=params.seeds_per_section,
        min_fragment_size_vx=params.min_fragment_size_vx,
        mask=mask,
    )
