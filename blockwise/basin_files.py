"""The flood of each extract_fragments block's read ROI, kept for the cut-basin search.

An extract_fragments block floods its read ROI (write ROI + context) and keeps
the write ROI; the flood of the context is what shows which of its fragments
continue, as one basin, across a block face. agglomerate needs exactly that
(:func:`blockwise.stitching.cut_pairs`), so instead of flooding the region a
second time it reads the flood extract_fragments saved: one file per block,
``RUN_DIR/basins/block_<index>.npz``, holding the read ROI (nm) and the basin
labels, numbered 1..n as the flood numbered them, zstd-compressed (about
0.1 byte per voxel on FIB-25). Written atomically (a reader sees the whole
file or none) and reproducibly (the same flood gives the same bytes).
"""

from __future__ import annotations

import numcodecs
import numpy as np
from funlib.geometry import Coordinate, Roi
from numpy.typing import NDArray

from blockwise.errors import InputError
from blockwise.hierarchical import HierarchyInputError, read_arrays, write_arrays
from blockwise.layout import RunLayout

BASIN_ARRAYS = ("roi", "shape", "labels", "dtype")
# level 1: 2 ms to write a 96^3 block, 5 ms to read it (FIB-25); higher levels gain little
_CODEC = numcodecs.Zstd(level=1)


class BasinFileError(InputError):
    """A block's saved flood is missing, unreadable or not the one expected."""


def _label_dtype(count: int) -> type[np.unsignedinteger]:
    if count < 1 << 16:
        return np.uint16
    if count < 1 << 32:
        return np.uint32
    return np.uint64


def save_basins(layout: RunLayout, block: int, roi: Roi, basins: NDArray[np.uint64]) -> None:
    """Write block ``block``'s flood of ``roi`` (labels 1..n, 0 outside the mask).

    Args:
        layout: the run directory.
        block: the extract_fragments block index.
        roi: the region the flood covers (the block's read ROI), nm.
        basins: (z, y, x) the flood's labels.
    """
    count = int(basins.max()) if basins.size else 0
    labels = np.ascontiguousarray(basins, dtype=_label_dtype(count))
    packed = np.frombuffer(_CODEC.encode(labels), dtype=np.uint8)
    write_arrays(
        layout.basin_path(block),
        {
            "roi": np.asarray([*roi.offset, *roi.shape], dtype=np.int64),
            "shape": np.asarray(basins.shape, dtype=np.int64),
            # the label width is the stored array's dtype: an empty array of it
            "labels": packed,
            "dtype": np.zeros(0, dtype=labels.dtype),
        },
    )


def load_basins(layout: RunLayout, block: int, write_roi: Roi) -> tuple[Roi, NDArray[np.uint64]]:
    """The flood block ``block`` saved: its ROI (nm) and labels (uint64).

    Args:
        layout: the run directory.
        block: the extract_fragments block index.
        write_roi: the block's write ROI, which the flood must cover.

    Raises:
        BasinFileError: if the file is missing, unreadable, or does not cover
            ``write_roi`` (names the file).
    """
    path = layout.basin_path(block)
    if not path.is_file():
        raise BasinFileError(
            f"{path} is missing: extract_fragments block {block} saves it; "
            "run the same command again (the block is extracted again)"
        )
    try:
        arrays = read_arrays(path, BASIN_ARRAYS)
    except HierarchyInputError as e:
        raise BasinFileError(str(e)) from e
    values = [int(x) for x in arrays["roi"]]
    shape = tuple(int(x) for x in arrays["shape"])
    if len(values) != 6 or len(shape) != 3:
        raise BasinFileError(f"{path}: expected a 3D ROI and shape, found {values} and {shape}")
    roi = Roi(Coordinate(values[:3]), Coordinate(values[3:]))
    if not roi.contains(write_roi):
        raise BasinFileError(
            f"{path}: the flood covers {roi}, not the block's write ROI {write_roi}"
        )
    try:
        raw = _CODEC.decode(arrays["labels"].tobytes())
        labels = np.frombuffer(raw, dtype=arrays["dtype"].dtype).reshape(shape)
    except (RuntimeError, ValueError) as e:
        raise BasinFileError(f"{path}: cannot decode the labels: {e}") from e
    return roi, labels.astype(np.uint64)
