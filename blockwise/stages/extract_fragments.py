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
import math
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from funlib.geometry import Coordinate, Roi

from blockwise.basin_files import save_basins
from blockwise.fragments import fragments_for_config
from blockwise.geometry import roi_slices
from blockwise.kernels.relabel import consecutive
from blockwise.layout import FRAGMENTS_DATASET
from blockwise.run_context import RunContext
from blockwise.stage import BlockFunction, Stage, StageBlock, Tiling
from blockwise.store import NodeTable
from blockwise.volume import remove_dataset

logger = logging.getLogger(__name__)

NAME = "extract_fragments"


def fragment_nodes(
    labels: np.ndarray, count: int, first_id: int, roi: Roi, voxel_size: tuple[int, ...]
) -> NodeTable:
    """Nodes (id, centre in nm, size) of the fragments of an array covering ``roi``.

    Args:
        labels: the block's fragments numbered 1..``count`` (0: none), as
            :func:`~blockwise.kernels.relabel.consecutive` returns them; label
            ``k`` is fragment id ``first_id + k - 1``.
        count: the number of fragments.
        first_id: the id of label 1.
        roi: the region ``labels`` covers, nm.
        voxel_size: nm per voxel.

    The centre is the mean of the fragment's voxel offsets in world units.
    """
    # Integer coordinates summed in float64 are exact (sums stay far below
    # 2**53), so summing slab by slab gives the bytes of one sum over the volume,
    # without a coordinate array (8 bytes per voxel) per axis. A slab holds at
    # least as many voxels as there are labels, so the per-slab bincounts never
    # cost more than the voxels they count.
    sizes = np.zeros(count + 1, dtype=np.int64)
    centers = np.zeros((count + 1, 3), dtype=np.float64)
    depth, height, width = labels.shape
    if labels.size == 0:
        return NodeTable(
            np.zeros(0, np.uint64), np.zeros((0, 3), np.float64), np.zeros(0, np.int64)
        )
    thickness = min(depth, max(1, math.ceil((count + 1) / (height * width))))
    grid = np.indices((thickness, height, width), dtype=np.float64).reshape(3, -1)
    for z in range(0, depth, thickness):
        slab = labels[z : z + thickness].ravel().astype(np.intp)
        used = slab.size
        sizes += np.bincount(slab, minlength=count + 1)
        centers[:, 0] += np.bincount(slab, weights=grid[0, :used] + z, minlength=count + 1)
        centers[:, 1] += np.bincount(slab, weights=grid[1, :used], minlength=count + 1)
        centers[:, 2] += np.bincount(slab, weights=grid[2, :used], minlength=count + 1)
    centers = centers[1:] / sizes[1:, None]
    centers = centers * np.asarray(voxel_size, dtype=np.float64) + np.asarray(
        roi.begin, dtype=np.float64
    )
    ids = np.arange(first_id, first_id + count, dtype=np.uint64)
    return NodeTable(ids, centers, sizes[1:].astype(np.int64))


def extract_block(ctx: RunContext, block: StageBlock) -> tuple[np.ndarray, NodeTable, np.ndarray]:
    """Fragments (global ids) of the block's write ROI, their nodes, and the flood of its
    read ROI (local ids); writes nothing."""
    local = fragments_for_config(
        ctx.read_affinities(block.read_roi),
        ctx.voxel_size,
        ctx.config.extract_fragments,
        ctx.read_mask(block.read_roi),
    )
    cropped, count = consecutive(
        np.ascontiguousarray(local[roi_slices(block.write_roi, block.read_roi, ctx.voxel_size)])
    )
    id_range = ctx.fragment_ids.id_range(block.index)
    fragments = np.where(cropped != 0, cropped + np.uint64(id_range.first - 1), np.uint64(0))
    nodes = fragment_nodes(cropped, count, id_range.first, block.write_roi, ctx.voxel_size)
    return fragments.astype(np.uint64), nodes, local


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
