"""Arrays in world units: zarr containers and HDF5 files (CREMI layout included).

A :class:`Volume` knows its voxel size and ROI in nm and reads or writes
sub-ROIs, so that stages never compute slices by hand. Arrays may carry a
leading channel axis (affinities are ``(channels, z, y, x)``).

A zarr chunk that is missing reads as the fill value in zarr itself; here it
is an error naming the chunk file, unless the volume's ``missing_chunks`` is
``fill_value`` (an input whose config says so). A chunk that cannot be
decoded is an error naming the array and the chunk file. Output arrays write
every chunk (empty ones too), so a finished block's chunks always exist.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
from funlib.geometry import Coordinate, Roi

from blockwise.config import DatasetConfig
from blockwise.errors import InputError
from blockwise.geometry import roi_slices
from blockwise.hdf5_chunks import ChunkCache, deflate_only, read_deflate
from blockwise.zarr_chunks import DecodedChunks, cacheable, read_cached

logger = logging.getLogger(__name__)

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
# attribute names that hold the voxel size, in the order they are tried
VOXEL_SIZE_ATTRS = ("voxel_size", "resolution_nm", "resolution")
# attribute names that hold an affinity array's neighbourhood offsets (voxels)
OFFSETS_ATTRS = ("offsets", "neighborhood", "affinity_neighborhood")

# piece size (voxels per axis) in which contiguous HDF5 datasets are scanned
CONTIGUOUS_PIECE_VX = 64

MissingChunks = Literal["error", "fill_value"]
#: HDF5 chunk cache per open input (bytes), and its hash slots (a prime ~100x the chunks it holds)
HDF5_CHUNK_CACHE_BYTES = 64 << 20
#: decoded zarr chunks a volume keeps between reads (blockwise.zarr_chunks): the
#: fragments of FIB-25 (250^3 uint64, 125 MB) fit whole
ZARR_CHUNK_CACHE_BYTES = 128 << 20
HDF5_CHUNK_CACHE_SLOTS = 10007


def is_hdf5(path: Path) -> bool:
    """Whether ``path`` names an HDF5 file (by suffix)."""
    return path.suffix.lower() in HDF5_SUFFIXES


def _open_array(path: Path, dataset: str, mode: str) -> Any:
    if not path.exists():
        raise InputError(f"input file {path} does not exist")
    if is_hdf5(path):
        import h5py

        try:
            # a chunk cache that holds the chunks a block and its neighbours share:
            # neighbouring blocks read by one worker decompress each chunk once
            # (h5py's default of 1 MiB holds about one chunk of a typical input)
            handle = h5py.File(
                path, "r", rdcc_nbytes=HDF5_CHUNK_CACHE_BYTES, rdcc_nslots=HDF5_CHUNK_CACHE_SLOTS
            )
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
    found = _stated_voxel_size(attrs)
    return None if found is None else found[1]


def _stated_voxel_size(attrs: Any) -> tuple[str, tuple[int, ...]] | None:
    """The first attribute stating a numeric voxel size, and its value (rounded to nm)."""
    for key in VOXEL_SIZE_ATTRS:
        if key in attrs:
            value = attrs[key]
            try:
                return key, tuple(round(float(v)) for v in np.asarray(value).ravel())
            except (TypeError, ValueError):
                logger.debug("attribute %s=%r is not numeric", key, value)
    return None


def _chunk_ranges(
    slices: tuple[slice, ...], shape: tuple[int, ...], chunks: tuple[int, ...]
) -> list[range]:
    """Per axis, the chunk indices that ``slices`` (with explicit bounds) touch."""
    ranges = []
    for sl, size, chunk in zip(slices, shape, chunks, strict=True):
        start = 0 if sl.start is None else sl.start
        stop = size if sl.stop is None else sl.stop
        ranges.append(range(start // chunk, -(-stop // chunk)) if stop > start else range(0))
    return ranges


@dataclass
class Volume:
    """An array with a voxel size and an offset in nm.

    Attributes:
        path: the zarr container or HDF5 file.
        dataset: the array's path inside it.
        voxel_size: nm per voxel, (z, y, x).
        roi: the spatial extent in nm.
        num_channels: size of the leading channel axis, or None for a plain volume.
        dtype: the array's dtype.
        array: the open zarr array or HDF5 dataset.
        missing_chunks: what a missing zarr chunk means when read: ``error``, or
            ``fill_value`` (zarr's default reading).
        is_output: whether the run writes this array (changes the hint of errors).
    """

    path: Path
    dataset: str
    voxel_size: Coordinate
    roi: Roi
    num_channels: int | None
    dtype: np.dtype
    array: Any = field(repr=False)
    missing_chunks: MissingChunks = "error"
    is_output: bool = False

    @property
    def name(self) -> str:
        """``file:dataset``, for messages."""
        return f"{self.path}:{self.dataset}"

    @property
    def is_zarr(self) -> bool:
        """Whether the array is a zarr array (chunks are files)."""
        return isinstance(self.array, zarr.Array)

    @cached_property
    def _inflates_chunks(self) -> bool:
        """Whether reads go through :func:`~blockwise.hdf5_chunks.read_deflate` (HDF5
        with deflate as its only filter)."""
        return not self.is_zarr and deflate_only(self.array)

    @cached_property
    def _chunk_cache(self) -> ChunkCache:
        """The inflated chunks kept between this volume's reads (as HDF5's chunk cache)."""
        return ChunkCache(HDF5_CHUNK_CACHE_BYTES)

    @cached_property
    def _decodes_cached(self) -> bool:
        """Whether reads go through :func:`~blockwise.zarr_chunks.read_cached` (zarr, chunks
        are files)."""
        return self.is_zarr and cacheable(self.array)

    @cached_property
    def _decoded_chunks(self) -> DecodedChunks:
        """The decoded chunks kept between this volume's reads, while their files are unchanged."""
        return DecodedChunks(ZARR_CHUNK_CACHE_BYTES)

    def chunk_file(self, chunk: tuple[int, ...]) -> Path:
        """The file holding zarr chunk ``chunk`` (grid coordinates, channel axis included)."""
        return self.path / self.array._chunk_key(tuple(chunk))

    def chunk_shape_vx(self) -> tuple[int, ...]:
        """The array's chunk shape (channel axis included).

        A contiguous (unchunked) HDF5 dataset is read in pieces of at most
        ``CONTIGUOUS_PIECE_VX`` voxels per spatial axis, so that no check reads
        it whole.
        """
        chunks = self.array.chunks
        if chunks is not None:
            return tuple(chunks)
        shape = tuple(self.array.shape)
        spatial = tuple(min(s, CONTIGUOUS_PIECE_VX) for s in shape[-3:])
        return (*shape[:-3], *spatial)

    def chunks_of(self, roi: Roi) -> list[tuple[int, ...]]:
        """Grid coordinates of the chunks (channel axis included) that ``roi`` touches."""
        ranges = _chunk_ranges(self._slices(roi), tuple(self.array.shape), self.chunk_shape_vx())
        return [
            tuple(r[i] for r, i in zip(ranges, c, strict=True))
            for c in np.ndindex(*[len(r) for r in ranges])
        ]

    def chunk_roi(self, chunk: tuple[int, ...]) -> Roi:
        """The spatial region (nm) of one chunk, cut to the volume."""
        spatial = chunk[-3:]
        shape = Coordinate(self.chunk_shape_vx()[-3:])
        begin = self.roi.begin + Coordinate(spatial) * shape * self.voxel_size
        return Roi(begin, shape * self.voxel_size).intersect(self.roi)

    def missing_chunks_in(self, roi: Roi) -> list[tuple[int, ...]]:
        """The zarr chunks touched by ``roi`` that have no file (none for HDF5)."""
        if not self.is_zarr:
            return []
        store = self.array.chunk_store if self.array.chunk_store is not None else self.array.store
        return [c for c in self.chunks_of(roi) if self.array._chunk_key(c) not in store]

    def check_chunk(self, chunk: tuple[int, ...]) -> None:
        """Read and decode one whole chunk.

        Raises:
            InputError: naming the array and the chunk file if it is missing
                (and missing chunks are errors) or cannot be decoded.
        """
        roi = self.chunk_roi(chunk)
        if self.missing_chunks == "error" and self.missing_chunks_in(roi):
            raise self._missing_error(chunk, roi)
        try:
            np.asarray(self.array[self._slices(roi)])
        except Exception as e:
            raise self._unreadable_error(chunk, e) from e

    def _missing_error(self, chunk: tuple[int, ...], roi: Roi) -> InputError:
        where = f"{self.name}: chunk file {self.chunk_file(chunk)} (chunk {list(chunk)}, {roi})"
        if self.is_output:
            return InputError(
                f"{where} is missing; the block that wrote it must run again "
                "(`blockwise run` repairs outputs of finished blocks)"
            )
        return InputError(
            f"{where} is missing. zarr would read it as the fill value "
            f"{self.array.fill_value}; if that is what a missing chunk means for this input, "
            "set `missing_chunks: fill_value` on it in the config"
        )

    def _unreadable_error(self, chunk: tuple[int, ...], error: Exception) -> InputError:
        if self.is_zarr:
            where = f"chunk file {self.chunk_file(chunk)}"
        else:
            where = f"HDF5 chunk {list(chunk)} (chunk shape {list(self.chunk_shape_vx())})"
        return InputError(
            f"{self.name}: {where} cannot be read ({type(error).__name__}: {error}); "
            "the file is damaged"
        )

    def _slices(self, roi: Roi) -> tuple[slice, ...]:
        if not self.roi.contains(roi):
            raise InputError(f"ROI {roi} is not inside {self.name} (which covers {self.roi})")
        spatial = roi_slices(roi, self.roi, self.voxel_size)
        return spatial if self.num_channels is None else (slice(None), *spatial)

    def read(self, roi: Roi) -> np.ndarray:
        """Read the voxels of ``roi`` (nm, voxel-aligned, inside the volume).

        Raises:
            InputError: naming the array and the chunk file if a zarr chunk is
                missing (and missing chunks are errors) or a chunk cannot be decoded.
        """
        slices = self._slices(roi)
        if self.missing_chunks == "error":
            missing = self.missing_chunks_in(roi)
            if missing:
                raise self._missing_error(missing[0], roi)
        try:
            if self._inflates_chunks:
                return read_deflate(self.array, slices, self._chunk_cache)
            if self._decodes_cached:
                return read_cached(self.array, slices, self._decoded_chunks)
            return np.asarray(self.array[slices])
        except Exception as e:
            # find the chunk that does not decode, to name its file
            for chunk in self.chunks_of(roi):
                try:
                    np.asarray(self.array[self._slices(self.chunk_roi(chunk))])
                except Exception as chunk_error:
                    raise self._unreadable_error(chunk, chunk_error) from e
            raise

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
        config: file, dataset and what a missing chunk means.
        voxel_size: nm per voxel, for files that state none; where the file
            states one too, the two must agree.
        mode: ``"r"`` or ``"r+"`` (zarr only).

    Raises:
        InputError: if the file or dataset is missing, the array is not 3D (or
            4D with channels), empty, has no usable voxel size, or states a
            voxel size other than ``voxel_size``.
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
    stated = _stated_voxel_size(array.attrs)
    if voxel_size is not None and stated is not None and stated[1] != tuple(voxel_size):
        raise InputError(
            f"{name} states voxel size {list(stated[1])} nm (attribute {stated[0]!r}) but the "
            f"config says {list(voxel_size)} nm; they must agree (remove inputs.voxel_size to "
            "use the file's, or fix the file's attribute)"
        )
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
    return Volume(
        config.file,
        config.dataset,
        vs,
        roi,
        num_channels,
        np.dtype(array.dtype),
        array,
        missing_chunks=config.missing_chunks,
    )


def stated_offsets(volume: Volume) -> tuple[str, list[tuple[int, ...]]] | None:
    """The affinity offsets an array's attributes state (attribute name, offsets), if any."""
    for key in OFFSETS_ATTRS:
        if key in volume.array.attrs:
            value = volume.array.attrs[key]
            try:
                rows = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError):
                logger.debug("attribute %s=%r is not numeric", key, value)
                continue
            if rows.ndim != 2 or not np.all(rows == np.round(rows)):
                logger.debug("attribute %s=%r is not a list of integer offsets", key, value)
                continue
            return key, [tuple(int(v) for v in row) for row in rows]
    return None


def _spatial_chunk_ranges(volume: Volume, roi: Roi) -> list[range]:
    """Per spatial axis, the chunk indices ``roi`` touches."""
    slices = volume._slices(roi)[-3:]
    return _chunk_ranges(slices, tuple(volume.array.shape[-3:]), volume.chunk_shape_vx()[-3:])


def count_chunks(volume: Volume, roi: Roi) -> int:
    """Number of chunk regions (spatial) that ``roi`` touches."""
    return int(np.prod([len(r) for r in _spatial_chunk_ranges(volume, roi)], dtype=np.int64))


def chunk_grid_rois(volume: Volume, roi: Roi) -> list[Roi]:
    """The spatial regions of the chunks touched by ``roi``, cut to ``roi``, in C order."""
    return list(iter_chunk_rois(volume, roi))


def iter_chunk_rois(volume: Volume, roi: Roi, picks: Iterable[int] | None = None) -> Iterator[Roi]:
    """The spatial chunk regions touched by ``roi`` (cut to it), built one at a time.

    Args:
        volume: the array.
        roi: the region, nm.
        picks: C-order indices into the grid of touched chunks (default: all, in order).
    """
    ranges = _spatial_chunk_ranges(volume, roi)
    shape = [len(r) for r in ranges]
    indices = range(int(np.prod(shape, dtype=np.int64))) if picks is None else picks
    for flat in indices:
        position = np.unravel_index(int(flat), shape)
        chunk = tuple(r[int(i)] for r, i in zip(ranges, position, strict=True))
        yield volume.chunk_roi(chunk).intersect(roi)


def find_nonzero(volume: Volume, roi: Roi) -> Roi | None:
    """The first chunk region inside ``roi`` holding a non-zero value, or None if all are zero.

    Reads chunk by chunk and stops at the first non-zero one, so a normal
    volume costs one chunk; an all-zero one costs a full read. zarr chunks
    without a file are skipped when the fill value is 0 (they read as 0).
    """
    fill_is_zero = not volume.is_zarr or not volume.array.fill_value
    for chunk_roi in iter_chunk_rois(volume, roi):
        if volume.is_zarr and fill_is_zero:
            missing = volume.missing_chunks_in(chunk_roi)
            if missing and len(missing) == len(volume.chunks_of(chunk_roi)):
                continue
        data = _read_raw(volume, chunk_roi)
        if np.any(data):
            return chunk_roi
    return None


def sample_chunk_rois(volume: Volume, roi: Roi, count: int) -> list[Roi]:
    """Up to ``count`` chunk regions inside ``roi``, spread evenly over its chunk grid (C order).

    Only the picked regions are built, so sampling a grid of millions of chunks is cheap.
    """
    total = count_chunks(volume, roi)
    if total <= count:
        return chunk_grid_rois(volume, roi)
    picks = np.unique(np.linspace(0, total - 1, count).round().astype(np.int64))
    return list(iter_chunk_rois(volume, roi, (int(i) for i in picks)))


def _read_raw(volume: Volume, roi: Roi) -> np.ndarray:
    """Read ``roi`` the way zarr does (missing chunks as the fill value), naming bad chunks."""
    lenient = Volume(
        volume.path,
        volume.dataset,
        volume.voxel_size,
        volume.roi,
        volume.num_channels,
        volume.dtype,
        volume.array,
        missing_chunks="fill_value",
        is_output=volume.is_output,
    )
    return lenient.read(roi)


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
    Every chunk is written, empty ones too, so that a finished block's chunks
    exist (:mod:`blockwise.integrity` relies on it) and a missing one is an error.

    Raises:
        InputError: if an array of another shape or dtype is already there.
    """
    shape = tuple(int(s) for s in roi.shape / voxel_size)
    if num_channels is not None:
        shape = (num_channels, *shape)
        chunk_shape = (num_channels, *chunk_shape)
    root = zarr.open_group(str(path), mode="a")
    if dataset in root:
        array = zarr.open_array(str(path), mode="r+", path=dataset, write_empty_chunks=True)
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
            write_empty_chunks=True,
        )
        array.attrs["offset"] = list(roi.offset)
        array.attrs["resolution"] = list(voxel_size)
        array.attrs["axis_names"] = (["c^"] if num_channels else []) + ["z", "y", "x"]
    return Volume(
        path, dataset, voxel_size, roi, num_channels, np.dtype(dtype), array, is_output=True
    )


def remove_dataset(path: Path, dataset: str) -> None:
    """Delete an array (or group) of a zarr container, if it is there."""
    if not path.exists():
        return
    root = zarr.open_group(str(path), mode="a")
    if dataset in root:
        del root[dataset]
