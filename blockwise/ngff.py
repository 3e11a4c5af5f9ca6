"""OME-Zarr (NGFF 0.4, zarr v2) multiscales metadata for scale pyramids.

One multiscale image is a zarr group with levels ``s0``, ``s1``, ... (see
:mod:`blockwise.downsample`) and a ``multiscales`` attribute:

- ``axes``: ``z``, ``y``, ``x`` of type ``space`` in ``nanometer``, preceded
  by a ``c`` axis of type ``channel`` for affinities (``(c, z, y, x)``).
- level arrays with nested chunk keys (``dimension_separator="/"``), as
  NGFF 0.4 requires.
- per level one ``scale`` transform (the level's voxel size in nm; 1 for
  ``c``) followed by one ``translation`` (nm; 0 for ``c``).

The translation convention. NGFF maps an array index to a physical position
``index * scale + translation``, and readers (napari, ome-zarr-py,
neuroglancer) take that position as the voxel's CENTRE. blockwise keeps the
funlib/daisy convention that a voxel is a box whose CORNER is at
``offset + index * voxel_size``, and a coarse voxel covers exactly
``factor`` fine voxels with the same corner offset at every level. We write
level 0's translation as the run's ``offset`` (so a tool shows level 0 at the
numbers users know), which places every voxel centre half a level-0 voxel
below its funlib centre; the same half-voxel shift must then hold for every
level, and the centre of coarse voxel 0 (funlib ``offset + factor**k *
voxel_size / 2``) lands at::

    translation_k = offset + (factor**k - 1) / 2 * voxel_size

so that all levels overlay exactly in any NGFF viewer. :func:`read_multiscales`
inverts this (``offset = translation_k - (scale_k - scale_0) / 2``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zarr
from funlib.geometry import Coordinate

from blockwise.errors import InputError

NGFF_VERSION = "0.4"
SPATIAL_AXES = ("z", "y", "x")
UNIT = "nanometer"


def axes_metadata(has_channels: bool) -> list[dict[str, str]]:
    """The ``axes`` list: an optional channel axis ``c``, then z, y, x in nanometers."""
    axes = [{"name": a, "type": "space", "unit": UNIT} for a in SPATIAL_AXES]
    if has_channels:
        axes.insert(0, {"name": "c", "type": "channel"})
    return axes


def level_transform(
    level: int,
    voxel_size: Sequence[float],
    offset: Sequence[float],
    factor: Sequence[int],
) -> tuple[list[float], list[float]]:
    """Spatial ``(scale, translation)`` of pyramid level ``level`` (nm, z, y, x).

    ``scale = voxel_size * factor**level``;
    ``translation = offset + (factor**level - 1) / 2 * voxel_size`` (see the
    module docstring for why).
    """
    scale = [float(v * f**level) for v, f in zip(voxel_size, factor, strict=True)]
    translation = [
        float(o + (f**level - 1) / 2 * v)
        for o, v, f in zip(offset, voxel_size, factor, strict=True)
    ]
    return scale, translation


def multiscales_metadata(
    voxel_size: Sequence[float],
    offset: Sequence[float],
    num_levels: int,
    factor: Sequence[int],
    has_channels: bool = False,
    method: str = "mean",
    name: str = "",
) -> dict[str, Any]:
    """The ``multiscales`` attribute (a one-element list in a dict) of a pyramid.

    Args:
        voxel_size: level 0's voxel size (nm, z, y, x).
        offset: level 0's offset (nm, z, y, x; funlib corner convention).
        num_levels: levels ``s0 .. s{num_levels - 1}``.
        factor: per-level factor (z, y, x).
        has_channels: whether arrays are ``(c, z, y, x)``.
        method: the downsampling kernel, recorded as ``type`` and in ``metadata``.
        name: the image's name.
    """
    datasets = []
    for k in range(num_levels):
        scale, translation = level_transform(k, voxel_size, offset, factor)
        if has_channels:
            scale = [1.0, *scale]
            translation = [0.0, *translation]
        datasets.append(
            {
                "path": f"s{k}",
                "coordinateTransformations": [
                    {"type": "scale", "scale": scale},
                    {"type": "translation", "translation": translation},
                ],
            }
        )
    return {
        "multiscales": [
            {
                "version": NGFF_VERSION,
                "name": name,
                "axes": axes_metadata(has_channels),
                "datasets": datasets,
                "type": method,
                "metadata": {
                    "method": f"blockwise.downsample.downsample_{method}",
                    "factor": [int(f) for f in factor],
                    "offset_nm": [float(o) for o in offset],
                    "translation": "voxel centres; level 0 translation = offset",
                },
            }
        ]
    }


def write_multiscales(
    group: zarr.Group,
    voxel_size: Sequence[float],
    offset: Sequence[float],
    num_levels: int,
    factor: Sequence[int],
    has_channels: bool = False,
    method: str = "mean",
) -> None:
    """Write :func:`multiscales_metadata` into ``group``'s attributes.

    Raises:
        InputError: if a level array ``s0 ..`` is missing from ``group``.
    """
    for k in range(num_levels):
        if f"s{k}" not in group:
            raise InputError(f"zarr group {group.path!r} has no level array s{k}")
        separator = getattr(group[f"s{k}"], "_dimension_separator", None) or "."
        if separator != "/":
            raise InputError(
                f"level array {group.path}/s{k} has chunk keys separated by {separator!r}; "
                "NGFF 0.4 needs '/' (create it with dimension_separator='/'), or OME-Zarr "
                "readers find none of its chunks"
            )
    name = group.path.rsplit("/", 1)[-1] if group.path else ""
    group.attrs.update(
        multiscales_metadata(voxel_size, offset, num_levels, factor, has_channels, method, name)
    )


@dataclass(frozen=True)
class Level:
    """One level of a multiscale image as read back.

    Attributes:
        path: the level's array, relative to the image group (``s0`` ...).
        scale: voxel size (nm, z, y, x).
        translation: NGFF translation (nm, z, y, x).
        offset: the funlib offset (nm, voxel corner convention).
    """

    path: str
    scale: tuple[float, float, float]
    translation: tuple[float, float, float]
    offset: tuple[float, float, float]

    @property
    def voxel_size(self) -> Coordinate:
        """The scale as integer nm."""
        return Coordinate(round(s) for s in self.scale)


def read_multiscales(group: zarr.Group | str | Path) -> list[Level]:
    """The levels of a multiscale image, finest first.

    Raises:
        InputError: if the group has no NGFF 0.4 ``multiscales`` metadata with
            z, y, x axes, or a level lacks a scale.
    """
    if not isinstance(group, zarr.Group):
        try:
            group = zarr.open_group(str(group), mode="r")
        except (ValueError, zarr.errors.GroupNotFoundError) as e:
            raise InputError(f"{group} is not a zarr group: {e}") from None
    where = f"zarr group {group.store}:{group.path or '/'}"
    multiscales = group.attrs.get("multiscales")
    if not multiscales:
        raise InputError(f"{where} has no 'multiscales' attribute (not an OME-Zarr image)")
    image = multiscales[0]
    names = [a["name"] for a in image.get("axes", [])]
    if names[-3:] != list(SPATIAL_AXES):
        raise InputError(f"{where} has axes {names}; expected [..., 'z', 'y', 'x']")
    levels = []
    first_scale: list[float] | None = None
    for dataset in image["datasets"]:
        transforms = {t["type"]: t for t in dataset.get("coordinateTransformations", [])}
        if "scale" not in transforms:
            raise InputError(f"{where}: level {dataset['path']} has no scale transform")
        scale = [float(s) for s in transforms["scale"]["scale"][-3:]]
        translation = [
            float(t) for t in transforms.get("translation", {}).get("translation", [0.0] * 3)[-3:]
        ]
        if first_scale is None:
            first_scale = scale
        offset = [
            t - (s - s0) / 2 for t, s, s0 in zip(translation, scale, first_scale, strict=True)
        ]
        levels.append(
            Level(
                dataset["path"],
                (scale[0], scale[1], scale[2]),
                (translation[0], translation[1], translation[2]),
                (offset[0], offset[1], offset[2]),
            )
        )
    return levels
