"""Stage 1: fragments (supervoxels) from affinities, block by block.

A block floods the affinities of its read ROI (write ROI + context, cut to the
data), keeps the part inside its write ROI, numbers those fragments 1..n and
offsets them by the block's id range, so fragment ids are unique across blocks
and no fragment crosses a write ROI. Each fragment becomes a graph node with
its centre (nm) and size (voxels). With more than one block, the flood of the
whole read ROI is saved too (:mod:`blockwise.basin_files`): agglomerate finds
the basins that block faces cut from it.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from funlib.geometry import Coordinate, Roi

from blockwise.basin_files import save_basins
from blockwise.fragments import fragments_for_config
from blockwise.geometry import roi_slices
from blockwise.kernels.block_numbering import BlockFragments, number_block
from blockwise.layout import FRAGMENTS_DATASET
from blockwise.run_context import RunContext
from blockwise.stage import BlockFunction, Stage, StageBlock, Tiling
from blockwise.store import NodeTable
from blockwise.volume import remove_dataset

logger = logging.getLogger(__name__)

NAME = "extract_fragments"


def nodes_of(numbered: BlockFragments, roi: Roi, voxel_size: tuple[int, ...]) -> NodeTable:
    """Nodes (id, centre in nm, size) of fragments numbered by
    :func:`~blockwise.kernels.block_numbering.number_block` in an array covering ``roi``.

    The centre is the mean of the fragment's voxel offsets in world units. The
    coordinate sums are whole numbers far below 2**53, so the float64 mean is
    the one of an exact sum (the same bytes as a float64 sum in any order).
    """
    sizes = numbered.sizes
    centers = numbered.coordinate_sums.astype(np.float64) / sizes[:, None]
    centers = centers * np.asarray(voxel_size, dtype=np.float64) + np.asarray(
        roi.begin, dtype=np.float64
    )
    first = numbered.first_id
    ids = np.arange(first, first + numbered.n_fragments, dtype=np.uint64)
    return NodeTable(ids, centers.reshape(-1, 3), sizes.astype(np.int64))


def extract_block(ctx: RunContext, block: StageBlock) -> tuple[np.ndarray, NodeTable, np.ndarray]:
    """Fragments (global ids) of the block's write ROI, their nodes, and the flood of its
    read ROI (local ids); writes nothing."""
    local, top = fragments_for_config(
        # uint8 as stored: the flood takes their mean without a float32 copy
        ctx.read_affinities(block.read_roi, keep_uint8=True),
        ctx.voxel_size,
        ctx.config.extract_fragments,
        ctx.read_mask(block.read_roi),
    )
    id_range = ctx.fragment_ids.id_range(block.index)
    # the local ids present in the write ROI, renumbered in increasing order from
    # the block's first id: the ids of consecutive(crop) + first - 1
    numbered = number_block(
        local[roi_slices(block.write_roi, block.read_roi, ctx.voxel_size)], top, id_range.first
    )
    nodes = nodes_of(numbered, block.write_roi, ctx.voxel_size)
    return numbered.ids, nodes, local


def process_block(ctx: RunContext, block: StageBlock) -> None:
    """Extract the fragments of one block, write them, their nodes and the block's flood."""
    fragments, nodes, flood = extract_block(ctx, block)
    if ctx.grid.num_blocks > 1:
        save_basins(ctx.layout, block.index, block.read_roi, flood)
    ctx.fragments.write(block.write_roi, fragments)
    ctx.store.write_nodes(ctx.fragment_ids.id_range(block.index), nodes)
    logger.debug("block %s: %d fragments", block.write_roi, len(nodes))


def tiling(ctx: RunContext) -> Tiling:
    """The extract_fragments grid: it also allocates the fragment ids."""
    cfg = ctx.config.extract_fragments
    return Tiling(
        ctx.data_roi, ctx.voxel_size, Coordinate(cfg.block_shape_vx), Coordinate(cfg.context_vx)
    )


@contextmanager
def setup(ctx: RunContext) -> Iterator[BlockFunction]:
    """Open the fragments array and the store once per worker."""
    _ = ctx.fragments, ctx.store
    yield lambda block: process_block(ctx, block)


def clear_outputs(ctx: RunContext) -> None:
    """Remove the fragments, their nodes and the blocks' floods."""
    remove_dataset(ctx.output_path, FRAGMENTS_DATASET)
    shutil.rmtree(ctx.layout.basin_path(0).parent, ignore_errors=True)
    ctx.store.clear("nodes")


# affinities float32 x3, fragments, surface, distance transform, labels, a heap entry
STAGE = Stage(
    name=NAME,
    sections=("extract_fragments", "output"),
    upstream=("predict",),
    tiling=tiling,
    setup=setup,
    bytes_per_voxel=64,
    inputs=("affinities", "mask"),
    clear_outputs=clear_outputs,
)
