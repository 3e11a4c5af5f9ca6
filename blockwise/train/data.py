"""The training volume: raw and labels of the training region, checked and in memory.

Only the training region is read from the files, so a held-out evaluation part
of the same volume is never touched. Every check raises
:class:`~blockwise.errors.InputError` naming the file, the dataset, what was
expected and what came, before anything is written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from funlib.geometry import Coordinate, Roi
from numpy.typing import NDArray

from blockwise.config import RoiConfig
from blockwise.errors import InputError
from blockwise.train.config import TrainDataConfig
from blockwise.volume import open_volume

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingVolume:
    """Raw and labels of the training region.

    Attributes:
        raw: uint8 intensities, (z, y, x), covering ``roi``.
        labels: integer instance ids, same shape as ``raw``.
        voxel_size: nm per voxel (z, y, x).
        roi: the training region in nm.
        source: ``file:dataset`` of raw and labels, for messages.
    """

    raw: NDArray[np.uint8]
    labels: NDArray[np.integer]
    voxel_size: Coordinate
    roi: Roi
    source: str


def roi_from_config(roi: RoiConfig) -> Roi:
    """A ``Roi`` (nm) from its config entry."""
    return Roi(Coordinate(roi.offset_nm), Coordinate(roi.shape_nm))


def load_training_volume(config: TrainDataConfig) -> TrainingVolume:
    """Check raw and labels against each other and read the training region.

    Raises:
        InputError: if a file or dataset is missing, raw is not a 3D uint8
            array, labels are not a 3D integer array of raw's shape and voxel
            size, or the training ROI is not voxel-aligned inside the volume.
    """
    raw_vol = open_volume(config.raw, config.voxel_size)
    labels_vol = open_volume(config.labels, config.voxel_size or tuple(raw_vol.voxel_size))
    try:
        raw_shape = tuple(raw_vol.array.shape)
        labels_shape = tuple(labels_vol.array.shape)
        if len(raw_shape) != 3:
            raise InputError(
                f"raw {raw_vol.name} has {len(raw_shape)} dimensions (shape {raw_shape}); "
                "expected a 3D (z, y, x) volume"
            )
        if raw_vol.dtype != np.uint8:
            raise InputError(
                f"raw {raw_vol.name} has dtype {raw_vol.dtype}; expected uint8 intensities "
                "(the network's input convention is raw/255*2-1)"
            )
        if len(labels_shape) != 3 or not np.issubdtype(labels_vol.dtype, np.integer):
            raise InputError(
                f"labels {labels_vol.name} have shape {labels_shape} and dtype "
                f"{labels_vol.dtype}; expected a 3D (z, y, x) volume of integer ids"
            )
        if labels_shape != raw_shape:
            raise InputError(
                f"labels {labels_vol.name} have shape {labels_shape} but raw {raw_vol.name} "
                f"has shape {raw_shape}; they must match voxel for voxel"
            )
        if labels_vol.voxel_size != raw_vol.voxel_size or labels_vol.roi != raw_vol.roi:
            raise InputError(
                f"labels {labels_vol.name} cover {labels_vol.roi} at voxel size "
                f"{tuple(labels_vol.voxel_size)} nm but raw {raw_vol.name} covers {raw_vol.roi} "
                f"at {tuple(raw_vol.voxel_size)} nm; they must match"
            )
        voxel_size = raw_vol.voxel_size
        roi = raw_vol.roi if config.roi is None else roi_from_config(config.roi)
        if roi.offset % voxel_size != voxel_size * 0 or roi.shape % voxel_size != voxel_size * 0:
            raise InputError(
                f"data.roi {roi} is not a multiple of the voxel size {tuple(voxel_size)} nm"
            )
        if not raw_vol.roi.contains(roi):
            raise InputError(
                f"data.roi {roi} is not inside {raw_vol.name}, which covers {raw_vol.roi}"
            )
        logger.info("reading the training region %s of %s", roi, raw_vol.name)
        raw = raw_vol.read(roi)
        labels = labels_vol.read(roi)
    finally:
        for vol in (raw_vol, labels_vol):
            handle = getattr(vol.array, "file", None)
            if handle is not None and hasattr(handle, "close"):
                handle.close()
    return TrainingVolume(
        raw=np.ascontiguousarray(raw),
        labels=np.ascontiguousarray(labels),
        voxel_size=voxel_size,
        roi=roi,
        source=f"{raw_vol.name} / {labels_vol.name}",
    )
