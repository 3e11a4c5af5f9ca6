"""Synthetic affinities derived from ground-truth labels: a TEST INPUT, never a prediction.

``blockwise synth-affinities`` turns a label volume into affinities that look
roughly like a network's output (thick, blurred membranes; holes that cause
false merges; spurious membrane patches that cause false splits; spatially
correlated noise), so that tests can feed the pipeline controlled inputs of
any size. The result is computed *from the answer*: scores obtained on it say
nothing about a real model, and the written arrays say so in their ``source``
attribute.

Conventions:
    * Affinities are ``(3, z, y, x)`` uint8, ``value / 255`` = affinity, for the
      nearest-neighbour offsets ``(-1, 0, 0), (0, -1, 0), (0, 0, -1)``: channel
      ``c`` at voxel ``v`` links ``v`` and ``v + offsets[c]``.
    * A link that leaves the volume (channel 0 at z = 0, channel 1 at y = 0,
      channel 2 at x = 0) gets the value the voxel's interior links would get:
      the outside neighbour is taken to carry the voxel's own label. Real
      predictions behave this way (a network sees context, not a volume edge;
      ``fib25_baseline_affs.h5`` has interior values there), and it puts no
      fake membrane on the volume's faces.
    * Label 0 is background: every link touching it has true affinity 0.

Steps, all in float32 (for 30 MVox, ~5 s and ~0.6 GB on top of the labels at
the default width; ~1.4 GB once ``membrane_width_vx >= 3`` needs the distance
transform):
    1. true affinities: 1 where both voxels share a non-zero label, else 0;
    2. membranes: voxels whose centre lies within ``membrane_width_vx / 2`` of
       a label interface are membrane (a band ``membrane_width_vx`` thick,
       centred on the interface; distances from ``scipy.ndimage``'s Euclidean
       distance transform), and every link touching a membrane voxel is 0;
    3. blur: ``gaussian_filter`` with ``blur_sigma_vx`` per channel;
    4. holes: balls centred on membrane voxels, radius 1-3 vx, raise the
       affinity toward 1 (gaps in the membrane: false merges); their total
       volume is ``hole_fraction`` of the membrane volume;
    5. spurious membranes: flat discs (radius 2-4 vx, 2 vx thick, random
       orientation) centred inside cells lower the affinity toward 0 (false
       splits); their total volume is ``bridge_fraction`` of the cell interior;
    6. noise: white gaussian noise smoothed with ``noise_correlation_vx`` and
       rescaled to standard deviation ``noise_sigma``, independent per channel;
    7. clip to [0, 1] and round to uint8.

Every random draw comes from one ``numpy.random.Generator(seed)`` in a fixed
order, so the same labels, parameters and seed give the same bytes.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray
from scipy import ndimage

from blockwise.errors import InputError

logger = logging.getLogger(__name__)

OFFSETS: tuple[tuple[int, int, int], ...] = ((-1, 0, 0), (0, -1, 0), (0, 0, -1))
SOURCE = "blockwise synth-affinities: derived from labels, NOT a prediction"

# Patch geometry (voxels) and strength (fraction of the way toward 1 or 0).
HOLE_RADIUS_VX = (1.0, 3.0)
BRIDGE_RADIUS_VX = (2.0, 4.0)
BRIDGE_THICKNESS_VX = 2.0
PATCH_STRENGTH = (0.6, 1.0)

# attributes that may hold the labels' voxel size (nm), in the order they are tried
RESOLUTION_ATTRS = ("resolution_nm", "resolution", "voxel_size")
AFFS_CHUNK_VX = 64


def synthesize_affinities(
    labels: NDArray[np.integer],
    *,
    seed: int = 0,
    membrane_width_vx: float = 1.5,
    blur_sigma_vx: float = 1.0,
    noise_sigma: float = 0.08,
    noise_correlation_vx: float = 2.0,
    hole_fraction: float = 0.02,
    bridge_fraction: float = 0.01,
) -> NDArray[np.uint8]:
    """Derive predicted-looking affinities from a label volume (a test input).

    Args:
        labels: ``(z, y, x)`` integer labels; 0 is background.
        seed: seed of the ``numpy.random.Generator`` (non-negative).
        membrane_width_vx: total thickness of the low-affinity band centred on
            each label interface, in voxels. Below 1 only the links that cross
            an interface are low (the true affinities).
        blur_sigma_vx: gaussian blur of the affinities, in voxels (0: none).
        noise_sigma: standard deviation of the additive noise, in affinity
            units (0: none).
        noise_correlation_vx: gaussian smoothing of the noise, in voxels
            (0: white noise).
        hole_fraction: volume of the membrane holes as a fraction of the
            membrane volume, in [0, 1].
        bridge_fraction: volume of the spurious membrane patches as a fraction
            of the cell interior's volume, in [0, 1].

    Returns:
        ``(3, z, y, x)`` uint8 affinities, ``value / 255`` = affinity, for the
        offsets in :data:`OFFSETS`.

    Raises:
        ValueError: if ``labels`` is not a non-empty 3D integer array or a
            parameter is out of range.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be 3D (z, y, x); received shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must have an integer dtype; received {labels.dtype}")
    if labels.size == 0:
        raise ValueError(f"labels must be non-empty; received shape {labels.shape}")
    _check_seed(seed)
    for name, value in (
        ("membrane_width_vx", membrane_width_vx),
        ("blur_sigma_vx", blur_sigma_vx),
        ("noise_sigma", noise_sigma),
        ("noise_correlation_vx", noise_correlation_vx),
    ):
        _check_range(name, value, 0.0, math.inf)
    _check_range("hole_fraction", hole_fraction, 0.0, 1.0)
    _check_range("bridge_fraction", bridge_fraction, 0.0, 1.0)

    rng = np.random.default_rng(seed)
    membrane = _membrane_mask(labels, membrane_width_vx)
    inside = labels != 0
    inside &= ~membrane
    affs = _interior_affinities(labels, inside)

    if blur_sigma_vx > 0:
        for channel in affs:
            ndimage.gaussian_filter(channel, blur_sigma_vx, output=channel, mode="nearest")
    if hole_fraction > 0:
        _add_holes(affs, membrane, hole_fraction, rng)
    del membrane
    if bridge_fraction > 0:
        _add_spurious_membranes(affs, inside, bridge_fraction, rng)
    del inside
    if noise_sigma > 0:
        _add_noise(affs, noise_sigma, noise_correlation_vx, rng)

    np.clip(affs, 0.0, 1.0, out=affs)
    affs *= 255.0
    np.rint(affs, out=affs)
    return affs.astype(np.uint8)


def synthesize_affinities_file(
    labels_path: Path,
    labels_dataset: str,
    out_path: Path,
    *,
    seed: int,
    overwrite: bool = False,
) -> None:
    """Write synthetic affinities (a test input) and a copy of the labels to a zarr container.

    ``out_path`` receives dataset ``affs`` ((3, z, y, x) uint8, see
    :func:`synthesize_affinities`, default parameters) and ``labels`` (uint64),
    so that a test config can point at one container for its affinities and
    its ground truth. Both carry ``offset`` [0, 0, 0] and, where the labels
    state it as three positive numbers, ``resolution`` (nm, copied from the
    labels' ``resolution_nm``, ``resolution`` or ``voxel_size``); ``affs``
    also carries ``offsets`` and ``source`` saying it is not a prediction.
    Existing ``affs`` or ``labels`` datasets in ``out_path`` are replaced only
    with ``overwrite``; otherwise they are an error (nothing is written).

    Args:
        labels_path: an HDF5 file or a zarr container (directory).
        labels_dataset: the labels' path inside it.
        out_path: the zarr container to write; created if missing.
        seed: seed of the random defects.
        overwrite: replace ``affs`` and ``labels`` if ``out_path`` has them.

    Raises:
        InputError: if the file or dataset is missing or unreadable, the labels
            are not a non-empty 3D array of non-negative integers, or
            ``out_path`` exists and is not a zarr container, or already holds
            ``affs`` or ``labels`` and ``overwrite`` is False.
    """
    labels_path = Path(labels_path)
    out_path = Path(out_path)
    if out_path.exists() and not (out_path / ".zgroup").is_file():
        raise InputError(
            f"{out_path} exists and is not a zarr container; name a new path or remove it first"
        )
    if out_path.exists() and not overwrite:
        existing = [name for name in ("affs", "labels") if (out_path / name).exists()]
        if existing:
            raise InputError(
                f"{out_path} already holds {existing}; pass --overwrite "
                "(overwrite=True) to replace them, or name a new container"
            )
    labels, attrs = _read_labels(labels_path, labels_dataset)
    name = f"{labels_path}:{labels_dataset}"
    resolution = _numeric_resolution(attrs)
    if resolution is None:
        logger.info(
            "%s states no numeric voxel size (%s); writing no 'resolution' attribute",
            name,
            ", ".join(RESOLUTION_ATTRS),
        )

    logger.info("synthesizing affinities from %s, shape %s, seed %d", name, labels.shape, seed)
    start = time.perf_counter()
    affs = synthesize_affinities(labels, seed=seed)
    logger.info("synthesized %d voxels in %.1f s", labels.size, time.perf_counter() - start)

    common: dict[str, Any] = {"offset": [0, 0, 0]}
    if resolution is not None:
        common["resolution"] = resolution
    root = zarr.open_group(str(out_path), mode="a")
    chunks = tuple(min(AFFS_CHUNK_VX, s) for s in labels.shape)
    affs_array = root.create_dataset(
        "affs", data=affs, chunks=(len(OFFSETS), *chunks), overwrite=True
    )
    affs_array.attrs.update(
        {
            **common,
            "offsets": [list(o) for o in OFFSETS],
            "axis_order": "czyx",
            "scale": "uint8: affinity = value / 255",
            "source": SOURCE,
            "labels": name,
            "seed": int(seed),
        }
    )
    labels_array = root.create_dataset(
        "labels", data=labels.astype(np.uint64, copy=False), chunks=chunks, overwrite=True
    )
    labels_array.attrs.update(
        {
            **common,
            "axis_order": "zyx",
            "source": f"blockwise synth-affinities: copy of the ground truth {name}",
        }
    )
    logger.info("wrote %s (datasets 'affs', 'labels')", out_path)


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; received {seed!r}")


def _check_range(name: str, value: float, low: float, high: float) -> None:
    # `not low <= value` also rejects NaN
    if not isinstance(value, int | float | np.number) or not low <= float(value) <= high:
        expected = f"in [{low}, {high}]" if math.isfinite(high) else f">= {low}"
        raise ValueError(f"{name} must be a number {expected}; received {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be finite; received {value!r}")


def _axis_pair(axis: int) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices selecting ``v`` (``[1:]`` along ``axis``) and ``v - 1`` (``[:-1]``)."""
    upper = tuple(slice(1, None) if a == axis else slice(None) for a in range(3))
    lower = tuple(slice(None, -1) if a == axis else slice(None) for a in range(3))
    return upper, lower


def _membrane_mask(labels: NDArray[np.integer], width_vx: float) -> NDArray[np.bool_]:
    """Voxels whose centre lies within ``width_vx / 2`` of a label interface.

    A voxel touching another label (or background) across a face has its centre
    0.5 vx from the interface; a voxel at Euclidean distance ``d`` from the
    nearest such voxel is taken to be ``d + 0.5`` from the interface.
    """
    boundary = labels == 0
    for axis in range(3):
        upper, lower = _axis_pair(axis)
        differs = labels[upper] != labels[lower]
        boundary[upper] |= differs
        boundary[lower] |= differs
    half_width = width_vx / 2.0
    if half_width < 0.5:
        return np.zeros(labels.shape, dtype=bool)
    if half_width < 1.5 or not boundary.any() or boundary.all():
        # no voxel off the boundary is closer than 1.5 vx to an interface
        return boundary
    distance = ndimage.distance_transform_edt(~boundary)
    return np.asarray(distance <= half_width - 0.5)


def _interior_affinities(
    labels: NDArray[np.integer], inside: NDArray[np.bool_]
) -> NDArray[np.float32]:
    """1 where both voxels of a link are cell interior of the same label, else 0.

    A link leaving the volume takes the voxel's own value (see the module notes).
    """
    affs = np.empty((len(OFFSETS), *labels.shape), dtype=np.float32)
    for channel, offset in enumerate(OFFSETS):
        axis = int(np.flatnonzero(offset)[0])
        upper, lower = _axis_pair(axis)
        linked = labels[upper] == labels[lower]
        linked &= inside[upper]
        linked &= inside[lower]
        affs[channel][upper] = linked
        first = tuple(slice(0, 1) if a == axis else slice(None) for a in range(3))
        affs[channel][first] = inside[first]
    return affs


def _window(
    center: tuple[int, ...], reach: int, shape: tuple[int, ...]
) -> tuple[tuple[slice, ...], list[NDArray[np.float32]]]:
    """The slices of a cube of half-size ``reach`` around ``center``, clipped to
    ``shape``, and the per-axis coordinates (vx) of its voxels relative to ``center``."""
    slices = []
    coords = []
    for axis, (c, s) in enumerate(zip(center, shape, strict=True)):
        lo, hi = max(c - reach, 0), min(c + reach + 1, s)
        slices.append(slice(lo, hi))
        grid_shape = [1, 1, 1]
        grid_shape[axis] = hi - lo
        coords.append(np.arange(lo - c, hi - c, dtype=np.float32).reshape(grid_shape))
    return tuple(slices), coords


def _patch_centers(mask: NDArray[np.bool_], fraction: float) -> tuple[NDArray[np.intp], int] | None:
    """Flat indices of the voxels a patch may be centred on, and the voxel budget."""
    candidates = np.flatnonzero(mask)
    target = round(fraction * candidates.size)
    if candidates.size == 0 or target == 0:
        return None
    return candidates, target


def _add_holes(
    affs: NDArray[np.float32],
    membrane: NDArray[np.bool_],
    fraction: float,
    rng: np.random.Generator,
) -> None:
    """Raise balls centred on membrane voxels toward affinity 1, in place."""
    found = _patch_centers(membrane, fraction)
    if found is None:
        return
    candidates, target = found
    shape = membrane.shape
    covered = 0.0
    count = 0
    while covered < target:
        center = np.unravel_index(candidates[rng.integers(candidates.size)], shape)
        radius = rng.uniform(*HOLE_RADIUS_VX)
        strength = rng.uniform(*PATCH_STRENGTH)
        slices, (dz, dy, dx) = _window(tuple(int(c) for c in center), math.ceil(radius), shape)
        # anti-aliased ball: weight 1 inside, falling to 0 over one voxel at the rim
        weight = np.clip(radius + 0.5 - np.sqrt(dz * dz + dy * dy + dx * dx), 0.0, 1.0)
        covered += float(weight.sum())
        weight *= strength
        view = affs[(slice(None), *slices)]
        view += weight * (1.0 - view)
        count += 1
    logger.debug("added %d membrane holes covering %.0f voxels", count, covered)


def _add_spurious_membranes(
    affs: NDArray[np.float32],
    inside: NDArray[np.bool_],
    fraction: float,
    rng: np.random.Generator,
) -> None:
    """Lower flat discs centred inside cells toward affinity 0, in place."""
    found = _patch_centers(inside, fraction)
    if found is None:
        return
    candidates, target = found
    shape = inside.shape
    covered = 0.0
    count = 0
    half_thickness = BRIDGE_THICKNESS_VX / 2.0
    while covered < target:
        center = np.unravel_index(candidates[rng.integers(candidates.size)], shape)
        radius = rng.uniform(*BRIDGE_RADIUS_VX)
        strength = rng.uniform(*PATCH_STRENGTH)
        normal = rng.standard_normal(3)
        normal /= max(float(np.linalg.norm(normal)), 1e-12)
        slices, (dz, dy, dx) = _window(tuple(int(c) for c in center), math.ceil(radius), shape)
        across = np.abs(dz * normal[0] + dy * normal[1] + dx * normal[2])
        along = np.sqrt(np.maximum(dz * dz + dy * dy + dx * dx - across * across, 0.0))
        weight = np.clip(half_thickness + 0.5 - across, 0.0, 1.0)
        weight *= np.clip(radius + 0.5 - along, 0.0, 1.0)
        covered += float(weight.sum())
        weight *= strength
        view = affs[(slice(None), *slices)]
        view *= (1.0 - weight).astype(np.float32)
        count += 1
    logger.debug("added %d spurious membrane patches covering %.0f voxels", count, covered)


def _add_noise(
    affs: NDArray[np.float32], sigma: float, correlation_vx: float, rng: np.random.Generator
) -> None:
    """Add smoothed gaussian noise of standard deviation ``sigma``, in place."""
    for channel in affs:
        noise = rng.standard_normal(channel.shape, dtype=np.float32)
        if correlation_vx > 0:
            ndimage.gaussian_filter(noise, correlation_vx, output=noise, mode="reflect")
        std = float(np.sqrt(np.mean(np.square(noise, dtype=np.float64))))
        if std > 0:
            noise *= np.float32(sigma / std)
        channel += noise


def _read_labels(path: Path, dataset: str) -> tuple[NDArray[np.integer], dict[str, Any]]:
    """Read a label volume and its attributes from an HDF5 file or a zarr container."""
    name = f"{path}:{dataset}"
    if not path.exists():
        raise InputError(f"labels file {path} does not exist")
    if path.is_file():
        import h5py

        if not h5py.is_hdf5(path):
            raise InputError(f"{path} is neither an HDF5 file nor a zarr container (a directory)")
        with h5py.File(path, "r") as handle:
            obj = handle.get(dataset)
            if not isinstance(obj, h5py.Dataset):
                names: list[str] = []
                handle.visititems(
                    lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None
                )
                raise InputError(f"{path} has no dataset {dataset!r}; it has {sorted(names)}")
            _check_label_array(name, tuple(obj.shape), np.dtype(obj.dtype))
            labels = np.asarray(obj[...])
            attrs = dict(obj.attrs)
    else:
        try:
            root = zarr.open_group(str(path), mode="r")
        except (zarr.errors.GroupNotFoundError, ValueError) as e:
            raise InputError(f"{path} is not a readable zarr container: {e}") from None
        obj = root.get(dataset)
        if not isinstance(obj, zarr.Array):
            arrays: list[str] = []
            root.visititems(lambda n, o: arrays.append(n) if isinstance(o, zarr.Array) else None)
            raise InputError(
                f"zarr container {path} has no dataset {dataset!r}; it has {sorted(arrays)}"
            )
        _check_label_array(name, tuple(obj.shape), np.dtype(obj.dtype))
        labels = np.asarray(obj[...])
        attrs = dict(obj.attrs)
    if np.issubdtype(labels.dtype, np.signedinteger) and labels.min() < 0:
        raise InputError(f"{name} has negative labels (min {labels.min()}); expected ids >= 0")
    return labels, attrs


def _check_label_array(name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if len(shape) != 3:
        raise InputError(f"{name} has shape {shape}; expected a 3D label volume (z, y, x)")
    if any(s == 0 for s in shape):
        raise InputError(f"{name} is empty (shape {shape})")
    if not np.issubdtype(dtype, np.integer):
        raise InputError(f"{name} has dtype {dtype}; expected integer labels")


def _numeric_resolution(attrs: dict[str, Any]) -> list[int] | list[float] | None:
    """The voxel size (nm) from the first attribute holding three positive numbers."""
    for key in RESOLUTION_ATTRS:
        if key not in attrs:
            continue
        value = np.asarray(attrs[key])
        if value.dtype.kind not in "iuf" or value.size != 3:
            logger.debug("attribute %s=%r is not three numbers", key, attrs[key])
            continue
        numbers = value.astype(np.float64).ravel()
        if not (np.all(np.isfinite(numbers)) and np.all(numbers > 0)):
            continue
        if np.all(numbers == np.round(numbers)):
            return [int(v) for v in numbers]
        return [float(v) for v in numbers]
    return None
