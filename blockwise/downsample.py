"""Downsampling kernels and the per-block function that builds a scale pyramid.

Level ``k`` of a pyramid has voxel size ``voxel_size * factor**k`` and the same
world offset (nm) as level 0: its voxel ``i`` covers exactly the ``factor``
voxels ``i * factor .. (i + 1) * factor - 1`` of level ``k - 1`` (voxels are
boxes whose corner is at ``offset + index * voxel_size``, the funlib/daisy
convention). A level covers only whole coarse voxels: an axis of ``n`` voxels
becomes ``n // factor`` (a remainder at the high end is dropped). Because each
coarse voxel depends only on its own fine voxels, downsampling blocks whose
write ROIs are aligned to the coarse grid gives exactly the whole-volume
result. How the levels appear in OME-Zarr metadata: :mod:`blockwise.ngff`.

Kernels:

- ``mean`` (raw EM, affinities): the mean of the ``prod(factor)`` voxels. For
  integer data it is computed exactly in int64 and rounded half up,
  ``(sum + n // 2) // n``, so that uint8 stays uint8 without bias towards
  dark (truncation would lower the mean by 0.5 grey values per level) and
  without float rounding differences between machines. Floats are averaged
  in float64 and cast back. 64-bit integers are refused (labels want
  ``mode``; their sums could overflow).
- ``mode`` (labels): the most frequent label; a tie goes to the smallest
  label. Every label counts, 0 included (nothing is ignored), so a region
  mostly background stays background.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
from funlib.geometry import Coordinate, Roi
from numpy.typing import NDArray

from blockwise.errors import InputError
from blockwise.ngff import write_multiscales
from blockwise.volume import Volume

logger = logging.getLogger(__name__)

Method = Literal["mean", "mode"]
# NGFF 0.4 requires nested chunk keys ("0/1/2"); readers find no chunk otherwise
DIMENSION_SEPARATOR = "/"
METHODS: tuple[Method, ...] = ("mean", "mode")
# pyramid levels are written with write_empty_chunks=False: a missing chunk is all zeros
_WRITTEN_HERE: dict[str, Any] = {"missing_chunks": "fill_value", "is_output": True}


def _factor3(factor: int | Sequence[int]) -> tuple[int, int, int]:
    values: tuple[int, ...]
    if isinstance(factor, int | np.integer):
        values = (int(factor),) * 3
    else:
        values = tuple(int(f) for f in factor)
    if len(values) != 3 or any(f < 1 for f in values):
        raise ValueError(f"downsampling factor {factor} must be one or three positive integers")
    return values[0], values[1], values[2]


def _blocks_view(data: NDArray[Any], factor: tuple[int, int, int]) -> NDArray[Any]:
    """``(..., Z, Y, X)`` cropped to whole blocks, as ``(..., Z', fz, Y', fy, X', fx)``."""
    if data.ndim < 3:
        raise ValueError(f"expected an array (..., z, y, x), got shape {data.shape}")
    lead = data.shape[:-3]
    out = tuple(s // f for s, f in zip(data.shape[-3:], factor, strict=True))
    if any(o == 0 for o in out):
        raise ValueError(
            f"array of spatial shape {data.shape[-3:]} is smaller than one downsampled voxel "
            f"(factor {factor})"
        )
    crop: tuple[Any, ...] = (..., *(slice(0, o * f) for o, f in zip(out, factor, strict=True)))
    cropped = data[crop]
    return cropped.reshape(*lead, out[0], factor[0], out[1], factor[1], out[2], factor[2])


def downsample_mean(data: NDArray[Any], factor: int | Sequence[int]) -> NDArray[Any]:
    """Mean over each ``factor`` box of the last three axes, in the input dtype.

    Args:
        data: ``(..., z, y, x)``; leading axes (channels) are kept.
        factor: voxels per output voxel along z, y, x (one int for all).

    Returns:
        ``(..., z // fz, y // fy, x // fx)``; integers rounded half up.

    Raises:
        ValueError: for 64-bit integer or non-numeric data, or a bad factor.
    """
    f = _factor3(factor)
    dtype = data.dtype
    blocks = _blocks_view(data, f)
    n = f[0] * f[1] * f[2]
    axes = (-5, -3, -1)
    if np.issubdtype(dtype, np.floating):
        return np.asarray(blocks.mean(axis=axes, dtype=np.float64), dtype=dtype)
    if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
        if dtype.itemsize >= 8:
            raise ValueError(
                f"mean downsampling of {dtype} is not supported (sums may overflow); "
                "use 'mode' for label volumes"
            )
        info = np.iinfo(dtype) if dtype != np.bool_ else np.iinfo(np.uint8)
        largest = max(abs(int(info.min)), int(info.max)) * n + n
        # the narrowest exact accumulator is the fastest (uint8 boxes of 8: int32)
        accumulator = np.int32 if largest < 2**31 else np.int64
        total = blocks.sum(axis=axes, dtype=accumulator)
        return np.asarray((total + n // 2) // n, dtype=dtype)
    raise ValueError(f"cannot mean-downsample dtype {dtype}")


def downsample_mode(labels: NDArray[Any], factor: int | Sequence[int]) -> NDArray[Any]:
    """Most frequent label in each ``factor`` box; ties go to the smallest label.

    Args:
        labels: ``(z, y, x)`` integer labels; every value counts (0 too).
        factor: voxels per output voxel along z, y, x (one int for all).

    Returns:
        ``(z // fz, y // fy, x // fx)`` labels of the input dtype.

    Raises:
        ValueError: if ``labels`` is not 3D, or a bad factor.
    """
    f = _factor3(factor)
    if labels.ndim != 3:
        raise ValueError(f"mode downsampling expects labels (z, y, x), got shape {labels.shape}")
    blocks = _blocks_view(labels, f)
    out_shape = (blocks.shape[0], blocks.shape[2], blocks.shape[4])
    k = f[0] * f[1] * f[2]
    boxes = blocks.transpose(0, 2, 4, 1, 3, 5).reshape(-1, k)
    out = boxes[:, 0].copy()
    # inside objects most boxes hold one label; only the others need sorting
    mixed = np.flatnonzero(np.any(boxes != boxes[:, :1], axis=1))
    if mixed.size == 0:
        return out.reshape(out_shape)
    values = np.sort(boxes[mixed], axis=1)
    # run[:, j]: how many equal values end at column j; the first maximum of a
    # sorted row ends the run of the smallest among the most frequent labels
    run = np.ones(values.shape, dtype=np.int32)
    for j in range(1, k):
        same = values[:, j] == values[:, j - 1]
        run[:, j] = np.where(same, run[:, j - 1] + 1, 1)
    best = np.argmax(run, axis=1)
    out[mixed] = values[np.arange(values.shape[0]), best]
    return out.reshape(out_shape)


def downsample(data: NDArray[Any], factor: int | Sequence[int], method: Method) -> NDArray[Any]:
    """:func:`downsample_mean` or :func:`downsample_mode`, by ``method``."""
    if method == "mean":
        return downsample_mean(data, factor)
    if method == "mode":
        return downsample_mode(data, factor)
    raise ValueError(f"downsampling method {method!r} is not one of {METHODS}")


def volume_of_array(array: Any, name: str = "array") -> Volume:
    """A :class:`Volume` over a zarr array with ``offset``/``resolution`` attributes (nm).

    A missing chunk reads as the array's fill value, as zarr itself reads it
    (pyramid levels are written without their all-zero chunks).

    Raises:
        InputError: if the attributes are missing.
    """
    attrs = array.attrs
    if "resolution" not in attrs:
        raise InputError(f"zarr array {name} has no 'resolution' attribute (nm per voxel)")
    voxel_size = Coordinate(int(v) for v in attrs["resolution"])
    offset = Coordinate(int(v) for v in attrs.get("offset", [0, 0, 0]))
    shape = tuple(array.shape)
    num_channels = shape[0] if len(shape) == 4 else None
    roi = Roi(offset, voxel_size * Coordinate(shape[-3:]))
    return Volume(
        path=_store_path(array),
        dataset=str(getattr(array, "path", name)),
        voxel_size=voxel_size,
        roi=roi,
        num_channels=num_channels,
        dtype=np.dtype(array.dtype),
        array=array,
        missing_chunks="fill_value",
    )


def _as_volume(data: Volume | Any, what: str) -> Volume:
    if isinstance(data, Volume):
        return data
    if isinstance(data, zarr.Array):
        return volume_of_array(data, what)
    raise TypeError(f"{what} must be a Volume or a zarr array, got {type(data).__name__}")


def downsample_block(
    source: Volume | zarr.Array,
    target: Volume | zarr.Array,
    write_roi: Roi,
    factor: int | Sequence[int],
    method: Method,
) -> None:
    """Write one block of a coarser level: ``target[write_roi] = downsample(source[write_roi])``.

    The source and target share their world frame (nm): the target's voxel
    size is the source's times ``factor``. ``write_roi`` must be aligned to
    the target's voxels; then the block reads exactly the source voxels its
    output covers, and blocks tiling the target give the whole-volume result.

    Args:
        source: the finer level.
        target: the coarser level (created beforehand, e.g. by
            :func:`create_pyramid_levels`).
        write_roi: the block, in nm, inside the target.
        factor: the target's voxel size over the source's, per axis.
        method: ``"mean"`` (raw, affinities) or ``"mode"`` (labels).

    Raises:
        InputError: if the voxel sizes do not differ by ``factor``, the
            channel counts differ, or ``write_roi`` is misaligned or outside.
    """
    src = _as_volume(source, "source")
    dst = _as_volume(target, "target")
    f = Coordinate(_factor3(factor))
    if src.voxel_size * f != dst.voxel_size:
        raise InputError(
            f"target {dst.name} has voxel size {dst.voxel_size} nm; expected the source's "
            f"{src.voxel_size} nm times the factor {tuple(f)}"
        )
    if src.num_channels != dst.num_channels:
        raise InputError(
            f"source {src.name} has {src.num_channels} channels, target {dst.name} "
            f"{dst.num_channels}; they must match"
        )
    relative = write_roi.begin - dst.roi.begin
    if any(r % v for r, v in zip(relative, dst.voxel_size, strict=True)) or any(
        s % v for s, v in zip(write_roi.shape, dst.voxel_size, strict=True)
    ):
        raise InputError(
            f"write ROI {write_roi} is not aligned to the voxels ({dst.voxel_size} nm, from "
            f"{dst.roi.begin}) of {dst.name}"
        )
    if not dst.roi.contains(write_roi) or not src.roi.contains(write_roi):
        raise InputError(
            f"write ROI {write_roi} is not inside both the target {dst.name} ({dst.roi}) and "
            f"the source {src.name} ({src.roi})"
        )
    dst.write(write_roi, downsample(src.read(write_roi), f, method))


def pyramid_shapes(
    shape_vx: Sequence[int],
    chunk_shape_vx: Sequence[int],
    factor: int | Sequence[int] = 2,
    num_levels: int | None = None,
) -> list[tuple[int, int, int]]:
    """Spatial shapes of levels 0, 1, ... of a pyramid.

    Args:
        shape_vx: level 0's spatial shape.
        chunk_shape_vx: the chunk shape of every level.
        factor: per-level downsampling factor (z, y, x).
        num_levels: levels in total, level 0 included; None for as many as
            fit: stop before a level whose shape along any downsampled axis
            would be smaller than one chunk.

    Raises:
        ValueError: if ``num_levels`` asks for a level smaller than one voxel.
    """
    f = _factor3(factor)
    shapes = [(int(shape_vx[0]), int(shape_vx[1]), int(shape_vx[2]))]
    if all(v == 1 for v in f):
        return shapes
    while num_levels is None or len(shapes) < num_levels:
        last = shapes[-1]
        nxt = (last[0] // f[0], last[1] // f[1], last[2] // f[2])
        if num_levels is None:
            if any(n < c for n, c, fa in zip(nxt, chunk_shape_vx, f, strict=True) if fa > 1):
                break
        elif any(n == 0 for n in nxt):
            raise ValueError(
                f"{num_levels} levels of factor {f} do not fit a volume of {tuple(shape_vx)} "
                f"voxels (level {len(shapes)} would be {nxt})"
            )
        shapes.append(nxt)
    return shapes


def create_pyramid_levels(
    group: zarr.Group,
    name: str,
    level0: Volume,
    factor: int | Sequence[int],
    chunk_shape_vx: Sequence[int],
    method: Method,
    num_levels: int | None = None,
) -> list[Volume]:
    """Create the empty coarser levels ``name/s1 ...`` of an existing level 0 and its metadata.

    Level 0 must already be ``group[name + "/s0"]``. Each level gets the
    funlib attributes ``offset`` and ``resolution`` (nm) and the group ``name``
    gets NGFF multiscales metadata (:mod:`blockwise.ngff`).

    Returns:
        The levels as volumes, level 0 first.
    """
    f = _factor3(factor)
    shapes = pyramid_shapes(level0.roi.shape / level0.voxel_size, chunk_shape_vx, f, num_levels)
    levels = [level0]
    vs = level0.voxel_size
    channels = level0.num_channels
    for k, shape in enumerate(shapes[1:], start=1):
        vs = vs * Coordinate(f)
        full = shape if channels is None else (channels, *shape)
        chunks = tuple(chunk_shape_vx) if channels is None else (channels, *chunk_shape_vx)
        path = f"{name}/s{k}"
        if path in group:
            array = group[path]
            if tuple(array.shape) != full or array.dtype != level0.dtype:
                raise InputError(
                    f"{path} exists with shape {array.shape} and dtype {array.dtype}; expected "
                    f"{full} and {level0.dtype}"
                )
        else:
            array = group.create_dataset(
                path,
                shape=full,
                chunks=chunks,
                dtype=level0.dtype,
                fill_value=0,
                write_empty_chunks=False,
                dimension_separator=DIMENSION_SEPARATOR,
            )
        array.attrs["offset"] = list(level0.roi.offset)
        array.attrs["resolution"] = list(vs)
        roi = Roi(level0.roi.offset, vs * Coordinate(shape))
        levels.append(
            Volume(level0.path, path, vs, roi, channels, level0.dtype, array, **_WRITTEN_HERE)
        )
    write_multiscales(
        group.require_group(name),
        voxel_size=tuple(level0.voxel_size),
        offset=tuple(level0.roi.offset),
        num_levels=len(levels),
        factor=f,
        has_channels=channels is not None,
        method=method,
    )
    return levels


def _require_level_array(
    group: zarr.Group,
    path: str,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dtype: np.dtype,
) -> zarr.Array:
    """The level array ``path``: created, or opened if it is there with this shape and dtype.

    Safe when several workers call it at once: a creation that loses the race
    opens the winner's array (identical metadata).

    Raises:
        InputError: if an array of another shape or dtype is there.
    """
    try:
        array = group.create_dataset(
            path,
            shape=shape,
            chunks=chunks,
            dtype=dtype,
            fill_value=0,
            write_empty_chunks=False,
            dimension_separator=DIMENSION_SEPARATOR,
            overwrite=False,
        )
    except (zarr.errors.ContainsArrayError, zarr.errors.ContainsGroupError):
        array = group[path]
    if (
        not isinstance(array, zarr.Array)
        or tuple(array.shape) != shape
        or np.dtype(array.dtype) != np.dtype(dtype)
    ):
        found = (
            f"shape {array.shape} and dtype {array.dtype}"
            if isinstance(array, zarr.Array)
            else "a group"
        )
        raise InputError(
            f"{_store_path(group)}:{group.path}/{path} holds {found}; expected an array of "
            f"shape {shape} and dtype {np.dtype(dtype)} (remove it, or reset the downsample stage)"
        )
    return array


def require_pyramid(
    group: zarr.Group,
    name: str,
    roi: Roi,
    voxel_size: Coordinate,
    dtype: np.dtype | type,
    num_channels: int | None,
    factor: int | Sequence[int],
    chunk_shape_vx: Sequence[int],
    num_levels: int,
    method: Method,
) -> list[Volume]:
    """Create (or open) every level ``name/s0 .. s{num_levels - 1}`` of a pyramid and its metadata.

    Unlike :func:`create_pyramid_levels` level 0 is created here too, so a
    stage can copy a volume into an OME-Zarr image block by block. Idempotent
    and safe to call from several workers at once.

    Args:
        group: the zarr group holding the image group ``name``.
        name: the image group, e.g. ``"fragments"``.
        roi: level 0's extent (nm).
        voxel_size: level 0's voxel size (nm).
        dtype: the arrays' dtype.
        num_channels: the leading channel axis' size, or None.
        factor: per-level factor (z, y, x).
        chunk_shape_vx: spatial chunk shape of every level.
        num_levels: levels in total, level 0 included.
        method: ``"mean"`` or ``"mode"`` (recorded in the metadata).

    Returns:
        The levels as volumes, level 0 first.

    Raises:
        InputError: if an existing level has another shape or dtype.
        ValueError: if ``num_levels`` levels do not fit the volume.
    """
    f = _factor3(factor)
    vs = Coordinate(voxel_size)
    shapes = pyramid_shapes(roi.shape / vs, chunk_shape_vx, f, num_levels)
    levels = []
    for k, shape in enumerate(shapes):
        full = shape if num_channels is None else (num_channels, *shape)
        chunks = tuple(int(c) for c in chunk_shape_vx)
        if num_channels is not None:
            chunks = (num_channels, *chunks)
        path = f"{name}/s{k}"
        array = _require_level_array(group, path, full, chunks, np.dtype(dtype))
        array.attrs.update({"offset": list(roi.offset), "resolution": list(vs)})
        levels.append(
            Volume(
                _store_path(group),
                f"{group.path}/{path}".lstrip("/"),
                vs,
                Roi(roi.offset, vs * Coordinate(shape)),
                num_channels,
                np.dtype(dtype),
                array,
                **_WRITTEN_HERE,
            )
        )
        vs = vs * Coordinate(f)
    image = group[name]
    write_multiscales(
        image,
        voxel_size=tuple(voxel_size),
        offset=tuple(roi.offset),
        num_levels=len(levels),
        factor=f,
        has_channels=num_channels is not None,
        method=method,
    )
    return levels


def downsample_levels(
    levels: Sequence[Volume],
    data: NDArray[Any],
    write_roi: Roi,
    factor: int | Sequence[int],
    method: Method,
) -> None:
    """Write one block of every level of a pyramid from the block's full-resolution data.

    Level ``k``'s part of the block is ``write_roi`` cut to level ``k``'s
    extent, computed from level ``k - 1``'s part in memory, exactly as
    :func:`downsample_block` would compute it from the stored level. When
    ``write_roi`` starts on the coarsest level's voxel grid (counted from level
    0's offset), blocks tiling the volume give the whole-volume pyramid.

    Args:
        levels: the pyramid's levels, level 0 first (e.g. from :func:`require_pyramid`).
        data: level 0's voxels of ``write_roi``.
        write_roi: the block (nm), inside level 0.
        factor: per-level factor (z, y, x).
        method: ``"mean"`` or ``"mode"``.

    Raises:
        InputError: if ``write_roi`` does not start on the coarsest level's voxel grid.
    """
    f = _factor3(factor)
    coarsest = levels[-1]
    relative = write_roi.begin - levels[0].roi.begin
    if any(r % v for r, v in zip(relative, coarsest.voxel_size, strict=True)):
        raise InputError(
            f"block {write_roi} does not start on the voxel grid of the coarsest level "
            f"{coarsest.name} ({coarsest.voxel_size} nm from {levels[0].roi.begin}); its "
            "coarse voxels would be split between blocks"
        )
    levels[0].write(write_roi, data)
    for level in levels[1:]:
        part = write_roi.intersect(level.roi)
        if part.empty:
            break
        data = downsample(data, f, method)
        expected = tuple(part.shape / level.voxel_size)
        if tuple(data.shape[-3:]) != expected:
            raise InputError(
                f"block {write_roi}: level {level.name} expects {expected} voxels but "
                f"downsampling gave {data.shape[-3:]}"
            )
        level.write(part, data)


def write_pyramid(
    group: zarr.Group,
    name: str,
    data: NDArray[Any],
    voxel_size: Sequence[int],
    offset: Sequence[int],
    method: Method,
    factor: int | Sequence[int] = 2,
    chunk_shape_vx: Sequence[int] = (64, 64, 64),
    num_levels: int | None = None,
) -> list[Volume]:
    """Write a whole in-memory array and every coarser level as an OME-Zarr multiscale image.

    Levels are computed from the previous level (not from level 0), exactly
    as the block-wise :func:`downsample_block` does.

    Args:
        group: the zarr group to write into (zarr v2).
        name: the multiscale image's group, e.g. ``"raw"``; levels are
            ``name/s0``, ``name/s1``, ...
        data: ``(z, y, x)`` or ``(channels, z, y, x)``.
        voxel_size: nm per voxel of level 0.
        offset: world position (nm) of level 0's first voxel corner.
        method: ``"mean"`` or ``"mode"``.
        factor: per-level factor (z, y, x).
        chunk_shape_vx: spatial chunk shape of every level.
        num_levels: levels in total; None: see :func:`pyramid_shapes`.

    Returns:
        The levels as volumes, level 0 first.
    """
    if data.ndim not in (3, 4):
        raise InputError(f"expected (z, y, x) or (channels, z, y, x) data, got {data.shape}")
    vs = Coordinate(int(v) for v in voxel_size)
    channels = data.shape[0] if data.ndim == 4 else None
    chunks = tuple(chunk_shape_vx) if channels is None else (channels, *chunk_shape_vx)
    path = f"{name}/s0"
    if path in group:
        del group[path]
    array = group.create_dataset(
        path,
        data=data,
        chunks=chunks,
        fill_value=0,
        write_empty_chunks=False,
        dimension_separator=DIMENSION_SEPARATOR,
    )
    array.attrs["offset"] = [int(o) for o in offset]
    array.attrs["resolution"] = list(vs)
    roi = Roi(Coordinate(int(o) for o in offset), vs * Coordinate(data.shape[-3:]))
    level0 = Volume(
        _store_path(group), path, vs, roi, channels, np.dtype(data.dtype), array, **_WRITTEN_HERE
    )
    levels = create_pyramid_levels(group, name, level0, factor, chunk_shape_vx, method, num_levels)
    current = data
    for level in levels[1:]:
        current = downsample(current, factor, method)
        level.array[...] = current
    logger.info("wrote %d levels of %s", len(levels), name)
    return levels


def _store_path(node: zarr.Group | zarr.Array) -> Path:
    """The file-system path of a zarr node's store (its repr for in-memory stores)."""
    root = getattr(node.store, "path", None)
    return Path(root) if root is not None else Path(type(node.store).__name__)
