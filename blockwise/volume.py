"""Arrays in world units: zarr containers and HDF5 files (CREMI layout included).

A :class:`Volume` knows its voxel size and ROI in nm and reads or writes
sub-ROIs, so that stages never compute slices by hand. Arrays may carry a
leading channel axis (affinities are ``(channels, z, y, x)``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from funlib.geometry import Coordinate, Roi

from blockwise.config import DatasetConfig
from blockwise.errors import InputError
from blockwise.geometry import roi_slices

logger = logging.getLogger(__name__)

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
# attribute names that hold the voxel size, in the order they are tried
VOXEL_SIZE_ATTRS = ("voxel_size", "resolution_nm", "resolution")


def is_hdf5(path: Path) -> bool:
    """Whether ``path`` names an HDF5 file (by suffix)."""
    return path.suffix.lower() in HDF5_SUFFIXES


def _open_array(path: Path, dataset: str, mode: str) -> Any:
    if not path.exists():
        raise InputError(f"input file {path} does not exist")
    if is_hdf5(path):
        import h5py

        try:
            handle = h5py.File(path, "r")
        except OSError as e:
            raise InputError(f"{path} is not a readable HDF5 file: {e}") from None
        if dataset not in handle:
            keys = sorted(_h5_datasets(handle))
            handle.close()
            raise InputError(f"{path} has no dataset {dataset!r}; it has {keys}")
        return handle[dataset]
    try:
        group = zarr.open(str(path), mode=mode)
    except (ValueError, zarr.errors.FSPathExistNotDir) as e:
        raise InputError(f"{path} is not a readable zarr container: {e}") from None
    if isinstance(group, zarr.Array):
        raise InputError(f"{path} is a single zarr array; name a container and a dataset")
    if dataset not in group:
        raise InputError(f"zarr container {path} has no dataset {dataset!r}")
    return group[dataset]


def _h5_datasets(handle: Any) -> list[str]:
    import h5py

    names: list[str] = []
    handle.visititems(
        lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None
    )
    return names


def _attr_voxel_size(attrs: Any) -> tuple[int, ...] | None:
    for key in VOXEL_SIZE_ATTRS:
        if key in attrs:
            value = attrs[key]
            try:
                return tuple(round(float(v)) for v in np.asarray(value).ravel())
            except (TypeError, ValueError):
                logger.debug("attribute %s=%r is not numeric", key, value)
    return None


@dataclass
class Volume:
    """An array with a voxel size and an offset in nm.

    Attributes:
        path: the zarr container or HDF5 file.
        dataset: the array's path inside it.
        voxel_size: nm per voxel, (z, y, x).
        roi: the spatial extent in nm.
        num_channels: size of the leading channel axis, or None for a plain volume.
    """

    path: Path
    dataset: str
    voxel_size: Coordinate
    roi: Roi
    num_channels: int | None
    dtype: np.dtype
    array: Any = field(repr=False)

    @property
    def name(self) -> str:
        """``file:dataset``, for messages."""
        return f"{self.path}:{self.dataset}"

    def _slices(self, roi: Roi) -> tuple[slice, ...]:
        if not self.roi.contains(roi):
            raise InputError(f"ROI {roi} is not inside {self.name} (which covers {self.roi})")
        spatial = roi_slices(roi, self.roi, self.voxel_size)
        return spatial if self.num_channels is None else (slice(None), *spatial)

    def read(self, roi: Roi) -> np.ndarray:
        """Read the voxels of ``roi`` (nm, voxel-aligned, inside the volume)."""
        return np.asarray(self.array[self._slices(roi)])

    def write(self, roi: Roi, data: np.ndarray) -> None:
        """Write ``data`` into ``roi`` (nm, voxel-aligned, inside the volume)."""
        self.array[self._slices(roi)] = data


def open_volume(
    config: DatasetConfig,
    voxel_size: tuple[int, int, int] | None = None,
    mode: str = "r",
) -> Volume:
    """Open an array named by a config entry.

    Args:
        config: file and dataset.
        voxel_size: nm per voxel; overrides (and is checked against nothing in)
            the file's attributes. Needed where the file does not state one.
        mode: ``"r"`` or ``"r+"`` (zarr only).

    Raises:
        InputError: if the file or dataset is missing, the array is not 3D (or
            4D with channels), empty, or has no usable voxel size.
    """
    array = _open_array(config.file, config.dataset, mode)
    name = f"{config.file}:{config.dataset}"
    shape = tuple(array.shape)
    if len(shape) not in (3, 4):
        raise InputError(f"{name} has shape {shape}; expected (z, y, x) or (channels, z, y, x)")
    if any(s == 0 for s in shape):
        raise InputError(f"{name} is empty (shape {shape})")
    spatial_shape = shape[-3:]
    num_channels = shape[0] if len(shape) == 4 else None
    if voxel_size is None:
        found = _attr_voxel_size(array.attrs)
        if found is None or len(found) != 3 or min(found) <= 0:
            raise InputError(
                f"{name} states no voxel size (attributes {list(VOXEL_SIZE_ATTRS)} missing or "
                "not three positive numbers); set inputs.voxel_size in the config"
            )
        voxel_size = (found[0], found[1], found[2])
    vs = Coordinate(voxel_size)
    offset_attr = array.attrs.get("offset", None)
    offset = Coordinate(int(v) for v in offset_attr) if offset_attr is not None else vs * 0
    roi = Roi(offset, vs * Coordinate(spatial_shape))
    return Volume(config.file, config.dataset, vs, roi, num_channels, np.dtype(array.dtype), array)


def create_zarr_volume(
    path: Path,
    dataset: str,
    roi: Roi,
    voxel_size: Coordinate,
    dtype: np.dtype | type,
    chunk_shape: tuple[int, ...],
    num_channels: int | None = None,
) -> Volume:
    """Create (or reopen, if it matches) a zarr array covering ``roi``.

    Attributes ``offset`` and ``resolution`` (nm) follow the daisy/funlib
    convention, so that neuroglancer and funlib tools read the array in place.

    Raises:
        InputError: if an array of another shape or dtype is already there.
    """
    shape = tuple(int(s) for s in roi.shape / voxel_size)
    if num_channels is not None:
        shape = (num_channels, *shape)
        chunk_shape = (num_channels, *chunk_shape)
    root = zarr.open_group(str(path), mode="a")
    if dataset in root:
        array = root[dataset]
        if tuple(array.shape) != shape or np.dtype(array.dtype) != np.dtype(dtype):
            raise InputError(
                f"{path}:{dataset} exists with shape {array.shape} and dtype {array.dtype}; "
                f"this run needs shape {shape} and dtype {np.dtype(dtype)} (use a new run_dir)"
            )
    else:
        array = root.create_dataset(
            dataset,
            shape=shape,
            chunks=chunk_shape,
            dtype=dtype,
            fill_value=0,
            write_empty_chunks=False,
        )
        array.attrs["offset"] = list(roi.offset)
        array.attrs["resolution"] = list(voxel_size)
        array.attrs["axis_names"] = (["c^"] if num_channels else []) + ["z", "y", "x"]
    return Volume(path, dataset, voxel_size, roi, num_channels, np.dtype(dtype), array)


def remove_dataset(path: Path, dataset: str) -> None:
    """Delete an array (or group) of a zarr container, if it is there."""
    if not path.exists():
        return
    root = zarr.open_group(str(path), mode="a")
    if dataset in root:
        del root[dataset]
