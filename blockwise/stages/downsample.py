"""Stage 5: OME-Zarr scale pyramids of every volume the run wrote, block by block.

For predict's affinities (``mean``), the fragments and every threshold's
segmentation (``mode``) the stage writes one OME-Zarr (NGFF 0.4) image
``output.zarr/multiscale/NAME`` with levels ``s0`` (the full-resolution
volume, with the nested chunk keys NGFF requires), ``s1``, ... each
``downsample.factor`` times coarser, and its ``multiscales`` metadata
(:mod:`blockwise.ngff`). Raw EM is an input, not written by the run, and gets
no pyramid.

A block covers ``output.chunk_shape_vx * factor**levels`` voxels from the data
ROI's origin, so at every level a block writes whole chunks (no two blocks
share one) and each coarse voxel's fine voxels lie in one block: the
block-wise pyramid equals the whole-volume one (:func:`blockwise.downsample.downsample_levels`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import zarr
from funlib.geometry import Coordinate

from blockwise.config import RunConfig
from blockwise.downsample import Method, downsample_levels, pyramid_shapes, require_pyramid
from blockwise.errors import ConfigError
from blockwise.layout import AFFINITIES_DATASET, FRAGMENTS_DATASET, MULTISCALE_GROUP
from blockwise.run_context import RunContext
from blockwise.stage import BlockFunction, Stage, StageBlock, Tiling
from blockwise.volume import Volume, remove_dataset

logger = logging.getLogger(__name__)

NAME = "downsample"
# the group of output.zarr holding one OME-Zarr image per volume
# a block reads and holds this many level-0 voxels at most (1 GiB of uint64)
MAX_BLOCK_VOXELS = 2**27


@dataclass(frozen=True)
class PyramidSource:
    """One volume the run writes and how its pyramid is made.

    Attributes:
        name: the image's group inside :data:`MULTISCALE_GROUP` (the volume's dataset).
        volume: the full-resolution volume.
        method: ``mean`` (affinities) or ``mode`` (labels).
    """

    name: str
    volume: Volume
    method: Method


def sources(ctx: RunContext) -> list[PyramidSource]:
    """Every volume the run writes, with its downsampling method."""
    found = []
    if ctx.predicts:
        found.append(PyramidSource(AFFINITIES_DATASET, ctx.predicted_affinities, "mean"))
    found.append(PyramidSource(FRAGMENTS_DATASET, ctx.fragments, "mode"))
    for threshold in ctx.config.segments.thresholds:
        found.append(
            PyramidSource(
                ctx.layout.segmentation_dataset(threshold), ctx.segmentation(threshold), "mode"
            )
        )
    return found


def num_levels(ctx: RunContext) -> int:
    """Levels of every pyramid, level 0 included.

    Raises:
        ConfigError: if ``downsample.levels`` levels do not fit the data, or need
            blocks of more than :data:`MAX_BLOCK_VOXELS` voxels.
    """
    cfg = ctx.config.downsample
    chunk = ctx.config.output.chunk_shape_vx
    shape = ctx.data_roi.shape / ctx.voxel_size
    fitting = len(pyramid_shapes(shape, chunk, cfg.factor)) - 1
    bounded = 0
    while _block_voxels(chunk, cfg.factor, bounded + 1) <= MAX_BLOCK_VOXELS:
        bounded += 1
    if cfg.levels is None:
        return 1 + min(fitting, bounded)
    try:
        pyramid_shapes(shape, chunk, cfg.factor, cfg.levels + 1)
    except ValueError as e:
        raise ConfigError(f"downsample.levels {cfg.levels}: {e}") from None
    if cfg.levels > bounded:
        raise ConfigError(
            f"downsample.levels {cfg.levels} with factor {list(cfg.factor)} and "
            f"output.chunk_shape_vx {list(chunk)} needs blocks of "
            f"{_block_voxels(chunk, cfg.factor, cfg.levels)} voxels (chunk x factor**levels); "
            f"at most {MAX_BLOCK_VOXELS} are allowed: use at most {bounded} levels or "
            "smaller chunks"
        )
    return 1 + cfg.levels


def _block_voxels(chunk: tuple[int, int, int], factor: tuple[int, int, int], levels: int) -> int:
    total = 1
    for c, f in zip(chunk, factor, strict=True):
        total *= c * f**levels
    return total


def block_shape_vx(ctx: RunContext) -> Coordinate:
    """A block's write shape: one chunk of the coarsest level, in level-0 voxels."""
    levels = num_levels(ctx) - 1
    chunk = ctx.config.output.chunk_shape_vx
    return Coordinate(
        c * f**levels for c, f in zip(chunk, ctx.config.downsample.factor, strict=True)
    )


def open_pyramids(ctx: RunContext) -> list[tuple[PyramidSource, list[Volume]]]:
    """Create (or open) the pyramid of every source; safe from several workers at once."""
    root = zarr.open_group(str(ctx.output_path), mode="a")
    try:
        group = root.require_group(MULTISCALE_GROUP)
    except zarr.errors.ContainsGroupError:
        # another worker created it between zarr's check and its creation
        group = root[MULTISCALE_GROUP]
    levels = num_levels(ctx)
    pyramids = []
    for source in sources(ctx):
        volume = source.volume
        pyramids.append(
            (
                source,
                require_pyramid(
                    group,
                    source.name,
                    volume.roi,
                    volume.voxel_size,
                    volume.dtype,
                    volume.num_channels,
                    ctx.config.downsample.factor,
                    ctx.config.output.chunk_shape_vx,
                    levels,
                    source.method,
                ),
            )
        )
    return pyramids


def downsample_run_block(
    pyramids: list[tuple[PyramidSource, list[Volume]]],
    factor: tuple[int, int, int],
    block: StageBlock,
) -> None:
    """Write the block's part of every level of every pyramid."""
    for source, levels in pyramids:
        data = source.volume.read(block.write_roi)
        downsample_levels(levels, data, block.write_roi, factor, source.method)


@contextmanager
def setup(ctx: RunContext) -> Iterator[BlockFunction]:
    """Create or open every pyramid once per worker."""
    pyramids = open_pyramids(ctx)
    factor = ctx.config.downsample.factor
    yield lambda block: downsample_run_block(pyramids, factor, block)


def tiling(ctx: RunContext) -> Tiling:
    """Blocks of one coarsest-level chunk, from the data ROI's origin, without context."""
    return Tiling(ctx.data_roi, ctx.voxel_size, block_shape_vx(ctx))


def check(ctx: RunContext) -> None:
    """The levels fit the data and a block's size is bounded (writes nothing)."""
    num_levels(ctx)


def is_enabled(config: RunConfig) -> bool:
    """Downsample runs unless ``downsample.enabled`` is false."""
    return config.downsample.enabled


def clear_outputs(ctx: RunContext) -> None:
    """Remove every pyramid (the full-resolution volumes stay)."""
    remove_dataset(ctx.output_path, MULTISCALE_GROUP)


# one source block (uint64 at most), its downsampled levels (1/7 more) and the mode's sort
STAGE = Stage(
    name=NAME,
    sections=("downsample",),
    upstream=("relabel",),
    tiling=tiling,
    setup=setup,
    bytes_per_voxel=24,
    is_enabled=is_enabled,
    check=check,
    clear_outputs=clear_outputs,
)
