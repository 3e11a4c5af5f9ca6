"""Stage 1: fragments (supervoxels) from affinities, block by block.

A block floods the affinities of its read ROI (write ROI + context, cut to the
data), keeps the part inside its write ROI, numbers those fragments 1..n and
offsets them by the block's id range, so fragment ids are unique across blocks
and no fragment crosses a write ROI. Each fragment becomes a graph node with
its centre (nm) and size (voxels).
"""

from __future__ import annotations

import logging

import numpy as np
from funlib.geometry import Roi

from blockwise.fragments import fragments_from_affinities
from blockwise.geometry import BlockGrid, roi_slices
from blockwise.kernels.relabel import consecutive
from blockwise.run_context import RunContext
from blockwise.store import NodeTable

logger = logging.getLogger(__name__)

NAME = "extract_fragments"


def fragment_nodes(fragments: np.ndarray, roi: Roi, voxel_size: tuple[int, ...]) -> NodeTable:
    """Nodes (id, centre in nm, size) of the non-zero fragments of an array covering ``roi``.

    The centre is the mean of the fragment's voxel offsets in world units.
    """
    flat = fragments.ravel()
    ids, inverse, sizes = np.unique(flat, return_inverse=True, return_counts=True)
    coords = np.indices(fragments.shape).reshape(3, -1)
    centers = np.stack(
        [np.bincount(inverse, weights=c, minlength=len(ids)) / sizes for c in coords], axis=1
    )
    centers = centers * np.asarray(voxel_size, dtype=np.float64) + np.asarray(
        roi.begin, dtype=np.float64
    )
    keep = ids != 0
    return NodeTable(ids[keep].astype(np.uint64), centers[keep], sizes[keep].astype(np.int64))


def flood(ctx: RunContext, affs: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The run's fragment algorithm on one array (local ids 1..n), with its parameters."""
    params = ctx.config.extract_fragments
    vs = ctx.voxel_size
    fragments, _ = fragments_from_affinities(
        affs,
        (vs[0], vs[1], vs[2]),
        boundary_threshold=params.boundary_threshold,
        min_seed_distance_nm=params.min_seed_distance_nm,
        seeds_per_section=params.seeds_per_section,
        min_fragment_size_vx=params.min_fragment_size_vx,
        mask=mask,
    )
    return fragments


def extract_block(
    ctx: RunContext, read_roi: Roi, write_roi: Roi, grid: BlockGrid
) -> tuple[np.ndarray, NodeTable]:
    """Fragments (global ids) of ``write_roi`` and their nodes; writes nothing."""
    local = flood(ctx, ctx.read_affinities(read_roi), ctx.read_mask(read_roi))
    cropped, _ = consecutive(
        np.ascontiguousarray(local[roi_slices(write_roi, read_roi, ctx.voxel_size)])
    )
    id_range = grid.id_range(grid.block_index(write_roi))
    fragments = np.where(cropped != 0, cropped + np.uint64(id_range.first - 1), np.uint64(0))
    return fragments.astype(np.uint64), fragment_nodes(fragments, write_roi, ctx.voxel_size)


def process_block(ctx: RunContext, read_roi: Roi, write_roi: Roi) -> None:
    """Extract the fragments of one block, write them and their nodes.

    Args:
        ctx: the run.
        read_roi: the block's read ROI (nm); cut to the data here.
        write_roi: the block's write ROI (nm); cut to the data here.
    """
    read_roi = read_roi.intersect(ctx.data_roi)
    write_roi = write_roi.intersect(ctx.data_roi)
    grid = ctx.grid
    fragments, nodes = extract_block(ctx, read_roi, write_roi, grid)
    ctx.fragments.write(write_roi, fragments)
    ctx.store.write_nodes(grid.id_range(grid.block_index(write_roi)), nodes)
    logger.debug("block %s: %d fragments", write_roi, len(nodes))
