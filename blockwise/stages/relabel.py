"""Stage 4: fragments -> segmentation, one zarr array per threshold, block by block.

Each worker loads every threshold's lookup table once (O(fragments), keys
already sorted by find_segments) and relabels its blocks through all of them
in one pass (:class:`~blockwise.lut.PreparedTables`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from funlib.geometry import Coordinate

from blockwise.layout import SEGMENTATION_GROUP
from blockwise.lut import PreparedTable, PreparedTables
from blockwise.run_context import RunContext
from blockwise.stage import BlockFunction, Stage, StageBlock, Tiling
from blockwise.volume import remove_dataset

logger = logging.getLogger(__name__)

NAME = "relabel"


def relabel_block(ctx: RunContext, tables: PreparedTables, block: StageBlock) -> None:
    """Write the segmentation of the block's write ROI for every threshold."""
    fragments = ctx.fragments.read(block.write_roi)
    for table, segmentation in zip(tables.tables, tables.relabel(fragments), strict=True):
        ctx.segmentation(table.table.threshold).write(block.write_roi, segmentation)
        del segmentation  # written: not held while the next is made


def tiling(ctx: RunContext) -> Tiling:
    """The extract_fragments grid, without context."""
    return Tiling(
        ctx.data_roi, ctx.voxel_size, Coordinate(ctx.config.extract_fragments.block_shape_vx)
    )


@contextmanager
def setup(ctx: RunContext) -> Iterator[BlockFunction]:
    """Load every threshold's table once per worker."""
    tables = PreparedTables.of(
        [PreparedTable.load(ctx.lut_path(t), t) for t in ctx.config.segments.thresholds]
    )
    yield lambda block: relabel_block(ctx, tables, block)


def clear_outputs(ctx: RunContext) -> None:
    """Remove every segmentation."""
    remove_dataset(ctx.output_path, SEGMENTATION_GROUP)


# fragments and one segmentation, uint64 each, plus the relabel output
STAGE = Stage(
    name=NAME,
    sections=(),
    upstream=("extract_fragments", "find_segments"),
    tiling=tiling,
    setup=setup,
    bytes_per_voxel=24,
    clear_outputs=clear_outputs,
)
