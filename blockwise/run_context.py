"""What a run reads and writes, opened once per process.

A :class:`RunContext` holds the validated config, the run's :class:`RunLayout`,
the input volumes (raw, or affinities predicted elsewhere; mask; ground
truth), the output arrays and the graph store. The driver builds one to
validate the run before any block starts; every worker builds its own from
the run's resolved config file (open handles never travel between processes).

Affinities are either an input (``inputs.affinities``) or predict's output
(``output.zarr/affinities``); the data ROI follows from whichever is
declared: the affinities' ROI, or the raw ROI (shrunk by the network context
when ``predict.padding`` is ``none``), cut to ``inputs.roi``.
"""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path

import numpy as np
from funlib.geometry import Coordinate, Roi

from blockwise.config import RunConfig, load_config
from blockwise.errors import ConfigError, InputError
from blockwise.geometry import BlockGrid, FragmentIds
from blockwise.layout import AFFINITIES_DATASET, FRAGMENTS_DATASET, RunLayout
from blockwise.store import GraphStore, open_store
from blockwise.volume import Volume, create_zarr_volume, open_volume

logger = logging.getLogger(__name__)

AFFINITY_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32), np.dtype(np.float64))
LABEL_DTYPES_KINDS = "iu"


class RunContext:
    """Opened resources of one run; cheap to construct, opens lazily.

    Args:
        config: the validated run config.
    """

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.layout = RunLayout(config.run_dir)
        self.run_dir = config.run_dir
        self._segmentations: dict[float, Volume] = {}

    @classmethod
    def from_file(cls, path: str | Path) -> RunContext:
        """Open the run described by a (resolved) config file."""
        return cls(load_config(path))

    # -- inputs -----------------------------------------------------------

    @cached_property
    def raw(self) -> Volume | None:
        """The raw EM volume (z, y, x), uint8, if configured."""
        if self.config.inputs.raw is None:
            return None
        volume = open_volume(self.config.inputs.raw, self.config.inputs.voxel_size)
        if volume.num_channels is not None:
            raise InputError(
                f"raw {volume.name} has shape {volume.array.shape}; expected 3 dimensions "
                "(z, y, x) without a channel axis"
            )
        if volume.dtype != np.uint8:
            raise InputError(
                f"raw {volume.name} has dtype {volume.dtype}; expected uint8 (8-bit EM)"
            )
        return volume

    @property
    def predicts(self) -> bool:
        """Whether affinities are predicted by this run (from raw)."""
        return self.config.predict is not None

    @cached_property
    def affinities(self) -> Volume:
        """The affinity volume, (channels, z, y, x): the input, or predict's output."""
        if self.config.predict is not None:
            return self.predicted_affinities
        assert self.config.inputs.affinities is not None  # the config validator ensures it
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
    def source(self) -> Volume:
        """The declared input that fixes the voxel size and extent: raw or affinities."""
        if self.config.predict is not None:
            assert self.raw is not None  # the config validator ensures it
            return self.raw
        return self.affinities

    @property
    def voxel_size(self) -> Coordinate:
        """nm per voxel (z, y, x)."""
        return self.source.voxel_size

    @cached_property
    def network(self) -> NetworkGeometry | None:
        """The predict network's shapes (None without predict)."""
        if self.config.predict is None:
            return None
        return NetworkGeometry.of(self.config)

    @cached_property
    def data_roi(self) -> Roi:
        """The region processed, in nm (see the module docstring)."""
        roi = self.source.roi
        network = self.network
        predict = self.config.predict
        if network is not None and predict is not None and predict.padding == "none":
            roi = network.unpadded_roi(roi, self.voxel_size)
        if self.config.inputs.roi is not None:
            wanted = Roi(self.config.inputs.roi.offset_nm, self.config.inputs.roi.shape_nm)
            vs = list(self.voxel_size)
            if any(v % s for v, s in zip([*wanted.offset, *wanted.shape], vs + vs, strict=True)):
                raise ConfigError(
                    f"inputs.roi {wanted} is not aligned to the voxel size {self.voxel_size}"
                )
            if not roi.contains(wanted):
                raise ConfigError(
                    f"inputs.roi {wanted} is not inside {self.source.name}'s processable "
                    f"region {roi}"
                )
            roi = wanted
        block_nm = Coordinate(self.config.extract_fragments.block_shape_vx) * self.voxel_size
        if any(s < b for s, b in zip(roi.shape, block_nm, strict=True)):
            raise InputError(
                f"the volume to process ({roi.shape / self.voxel_size} voxels of "
                f"{self.source.name}) is smaller than one block "
                f"({list(self.config.extract_fragments.block_shape_vx)} voxels); "
                "reduce extract_fragments.block_shape_vx"
            )
        return roi

    @cached_property
    def grid(self) -> BlockGrid:
        """The extract_fragments write grid (also relabel's)."""
        return BlockGrid(
            self.data_roi, self.voxel_size, Coordinate(self.config.extract_fragments.block_shape_vx)
        )

    @cached_property
    def fragment_ids(self) -> FragmentIds:
        """The id allocator: which ids each extract_fragments block may hand out."""
        return FragmentIds(self.grid)

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
                f"{what} {volume.name} has voxel size {volume.voxel_size}, the "
                f"{'raw' if self.predicts else 'affinities'} {self.voxel_size}; they must match"
            )

    def read_affinities(self, roi: Roi, *, keep_uint8: bool = False) -> np.ndarray:
        """Affinities of ``roi`` as float32 in [0, 1].

        With ``keep_uint8``, uint8 affinities come as stored (value / 255), for
        a consumer that takes them as they are; other dtypes are converted and
        checked as always.

        Raises:
            InputError: if the values are not finite or outside [0, 1].
        """
        raw = self.affinities.read(roi)
        if raw.dtype == np.uint8 and keep_uint8:
            return raw
        if raw.dtype == np.uint8:
            # divided in place: the bytes of ``raw.astype(np.float32) / 255`` without
            # a second float32 copy of the region
            affs = raw.astype(np.float32)
            np.divide(affs, np.float32(255.0), out=affs)
            return affs
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
        """The run's zarr container (affinities, fragments, segmentations)."""
        return self.layout.output_zarr

    @cached_property
    def predicted_affinities(self) -> Volume:
        """predict's output, uint8 (value/255), one chunk per network output; created once."""
        network = self.network
        if network is None:
            raise ConfigError("this run predicts nothing (no `predict` section)")
        return create_zarr_volume(
            self.output_path,
            AFFINITIES_DATASET,
            self.data_roi,
            self.voxel_size,
            np.uint8,
            network.output_shape_vx,
            num_channels=len(self.config.inputs.offsets),
        )

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
        if threshold not in self._segmentations:
            self._segmentations[threshold] = create_zarr_volume(
                self.output_path,
                self.layout.segmentation_dataset(threshold),
                self.data_roi,
                self.voxel_size,
                np.uint64,
                self.config.output.chunk_shape_vx,
            )
        return self._segmentations[threshold]

    def lut_path(self, threshold: float) -> Path:
        """The lookup table file of one threshold."""
        return self.layout.lut_path(threshold)

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


class NetworkGeometry:
    """The predict network's tile shapes in voxels (arithmetic only; no torch).

    Attributes:
        input_shape_vx: network input per tile.
        output_shape_vx: network output per tile.
        context_vx: (input - output) / 2 per side.
    """

    def __init__(
        self,
        input_shape_vx: Coordinate,
        output_shape_vx: Coordinate,
        context_vx: Coordinate,
        tiles_per_block: Coordinate,
    ) -> None:
        self.input_shape_vx = input_shape_vx
        self.output_shape_vx = output_shape_vx
        self.context_vx = context_vx
        self.tiles_per_block = tiles_per_block

    @classmethod
    def of(cls, config: RunConfig) -> NetworkGeometry:
        """The geometry of a run's ``predict`` network.

        Raises:
            ConfigError: if the input shape is not valid for the architecture.
        """
        from blockwise.nn.architecture import output_shape

        predict = config.predict
        if predict is None:
            raise ConfigError("this run predicts nothing (no `predict` section)")
        out = Coordinate(output_shape(predict.unet, predict.input_shape_vx))
        inp = Coordinate(predict.input_shape_vx)
        return cls(inp, out, (inp - out) / 2, Coordinate(predict.tiles_per_block))

    @property
    def block_shape_vx(self) -> Coordinate:
        """A predict block's write shape: whole network outputs."""
        return self.output_shape_vx * self.tiles_per_block

    def unpadded_roi(self, raw_roi: Roi, voxel_size: Coordinate) -> Roi:
        """The part of ``raw_roi`` predictable without padding, in whole network outputs."""
        inner = raw_roi.grow(-self.context_vx * voxel_size, -self.context_vx * voxel_size)
        tile_nm = self.output_shape_vx * voxel_size
        if inner.empty or any(s < t for s, t in zip(inner.shape, tile_nm, strict=True)):
            raise InputError(
                f"raw covering {raw_roi} is too small for the network without padding: it "
                f"needs at least {list(self.input_shape_vx)} voxels; set predict.padding to "
                "reflect or zero"
            )
        shape = Coordinate(s // t * t for s, t in zip(inner.shape, tile_nm, strict=True))
        return Roi(inner.offset, shape)
