"""Everything a stage needs to process blocks of one run, opened once per worker.

A :class:`RunContext` holds the validated config, the input volumes, the
output arrays, the block grid and the graph store. The driver builds one to
validate the run before any block starts; every worker builds its own from the
run's resolved config file (open handles never travel between processes).
"""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path
from typing import cast

import numpy as np
from funlib.geometry import Coordinate, Roi

from blockwise.config import RunConfig, load_config
from blockwise.errors import ConfigError, InputError
from blockwise.geometry import BlockGrid
from blockwise.store import GraphStore, open_store
from blockwise.volume import Volume, create_zarr_volume, open_volume

logger = logging.getLogger(__name__)

AFFINITY_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32), np.dtype(np.float64))
LABEL_DTYPES_KINDS = "iu"
OUTPUT_ZARR = "output.zarr"
FRAGMENTS_DATASET = "fragments"


def threshold_name(threshold: float) -> str:
    """The dataset/file name used for one segmentation threshold."""
    return f"threshold_{threshold:.4f}"


class RunContext:
    """Opened resources of one run; cheap to construct, opens lazily.

    Args:
        config: the validated run config.
    """

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.run_dir = config.run_dir
        # per-worker memo of things loaded once and reused by many blocks
        self.cache: dict[str, object] = {}

    @classmethod
    def from_file(cls, path: str | Path) -> RunContext:
        """Open the run described by a (resolved) config file."""
        return cls(load_config(path))

    # -- inputs -----------------------------------------------------------

    @cached_property
    def affinities(self) -> Volume:
        """The affinity volume, (channels, z, y, x)."""
        volume = open_volume(self.config.inputs.affinities, self.config.inputs.voxel_size)
        expected = len(self.config.inputs.offsets)
        if volume.num_channels != expected:
            found = (
                "no channel axis"
                if volume.num_channels is None
                else f"{volume.num_channels} channels"
            )
            raise InputError(
                f"affinities {volume.name} have {found} but the config lists {expected} "
                "offsets; they must match"
            )
        if volume.dtype not in AFFINITY_DTYPES:
            raise InputError(
                f"affinities {volume.name} have dtype {volume.dtype}; expected uint8 "
                "(value/255) or float32/float64 in [0, 1]"
            )
        return volume

    @property
    def voxel_size(self) -> Coordinate:
        """nm per voxel (z, y, x)."""
        return self.affinities.voxel_size

    @cached_property
    def data_roi(self) -> Roi:
        """The region processed: the affinities' ROI, cut to the configured ROI."""
        roi = self.affinities.roi
        if self.config.inputs.roi is not None:
            wanted = Roi(self.config.inputs.roi.offset_nm, self.config.inputs.roi.shape_nm)
            vs = list(self.voxel_size)
            if any(v % s for v, s in zip([*wanted.offset, *wanted.shape], vs + vs, strict=True)):
                raise ConfigError(
                    f"inputs.roi {wanted} is not aligned to the voxel size {self.voxel_size}"
                )
            if not roi.contains(wanted):
                raise ConfigError(
                    f"inputs.roi {wanted} is not inside the affinities "
                    f"{self.affinities.name}, which cover {roi}"
                )
            roi = wanted
        block_nm = Coordinate(self.config.extract_fragments.block_shape_vx) * self.voxel_size
        if any(s < b for s, b in zip(roi.shape, block_nm, strict=True)):
            raise InputError(
                f"the volume to process ({roi.shape / self.voxel_size} voxels of "
                f"{self.affinities.name}) is smaller than one block "
                f"({list(self.config.extract_fragments.block_shape_vx)} voxels); "
                "reduce extract_fragments.block_shape_vx"
            )
        return roi

    @cached_property
    def grid(self) -> BlockGrid:
        """The write-block grid shared by every block-wise stage."""
        return BlockGrid(
            self.data_roi, self.voxel_size, Coordinate(self.config.extract_fragments.block_shape_vx)
        )

    @cached_property
    def mask(self) -> Volume | None:
        """The mask volume (non-zero = process), if configured."""
        if self.config.inputs.mask is None:
            return None
        volume = open_volume(self.config.inputs.mask, self.config.inputs.voxel_size)
        self._check_label_volume(volume, "mask", allow_bool=True)
        return volume

    @cached_property
    def ground_truth(self) -> Volume | None:
        """The ground-truth label volume, if configured."""
        if self.config.inputs.ground_truth is None:
            return None
        volume = open_volume(self.config.inputs.ground_truth, self.config.inputs.voxel_size)
        self._check_label_volume(volume, "ground truth")
        return volume

    def _check_label_volume(self, volume: Volume, what: str, allow_bool: bool = False) -> None:
        if volume.num_channels is not None:
            raise InputError(f"{what} {volume.name} must be (z, y, x), got a channel axis")
        if volume.dtype.kind not in LABEL_DTYPES_KINDS and not (
            allow_bool and volume.dtype == np.bool_
        ):
            raise InputError(
                f"{what} {volume.name} has dtype {volume.dtype}; expected an integer type"
            )
        if volume.voxel_size != self.voxel_size:
            raise InputError(
                f"{what} {volume.name} has voxel size {volume.voxel_size}, the affinities "
                f"{self.voxel_size}; they must match"
            )

    def read_affinities(self, roi: Roi) -> np.ndarray:
        """Affinities of ``roi`` as float32 in [0, 1].

        Raises:
            InputError: if the values are not finite or outside [0, 1].
        """
        raw = self.affinities.read(roi)
        if raw.dtype == np.uint8:
            return raw.astype(np.float32) / np.float32(255.0)
        affs = raw.astype(np.float32, copy=False)
        if not np.all(np.isfinite(affs)):
            raise InputError(f"affinities {self.affinities.name} hold NaN or inf in {roi}")
        if affs.size and (affs.min() < 0.0 or affs.max() > 1.0):
            raise InputError(
                f"affinities {self.affinities.name} must lie in [0, 1]; in {roi} they range "
                f"from {affs.min()} to {affs.max()}"
            )
        return affs

    def read_mask(self, roi: Roi) -> np.ndarray | None:
        """The mask of ``roi`` as bool, or None without a mask."""
        if self.mask is None:
            return None
        return self.mask.read(roi).astype(bool)

    # -- outputs ----------------------------------------------------------

    @property
    def output_path(self) -> Path:
        """The run's zarr container (fragments and segmentations)."""
        return self.run_dir / OUTPUT_ZARR

    @cached_property
    def fragments(self) -> Volume:
        """The fragments array (uint64), created on first use."""
        return create_zarr_volume(
            self.output_path,
            FRAGMENTS_DATASET,
            self.data_roi,
            self.voxel_size,
            np.uint64,
            self.config.output.chunk_shape_vx,
        )

    def segmentation(self, threshold: float) -> Volume:
        """The segmentation array (uint64) for one threshold, created or opened once."""
        key = f"segmentation:{threshold}"
        if key not in self.cache:
            self.cache[key] = self._open_segmentation(threshold)
        return cast(Volume, self.cache[key])

    def _open_segmentation(self, threshold: float) -> Volume:
        return create_zarr_volume(
            self.output_path,
            f"segmentation/{threshold_name(threshold)}",
            self.data_roi,
            self.voxel_size,
            np.uint64,
            self.config.output.chunk_shape_vx,
        )

    @property
    def lut_dir(self) -> Path:
        """Where find_segments puts its fragment -> segment tables."""
        return self.run_dir / "luts"

    def lut_path(self, threshold: float) -> Path:
        """The lookup table file of one threshold."""
        return self.lut_dir / f"{threshold_name(threshold)}.npz"

    @cached_property
    def store(self) -> GraphStore:
        """The graph store, opened on first use."""
        cfg = self.config.store
        return open_store(
            self.config.store_uri,
            cfg.retry_attempts,
            cfg.retry_first_backoff_s,
            cfg.server_timeout_s,
        )

    def close(self) -> None:
        """Close the graph store if it was opened."""
        if "store" in self.__dict__:
            self.store.close()
            del self.__dict__["store"]
