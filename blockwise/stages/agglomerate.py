"""Stage 2: measuring the region graph block by block; no block merges by score.

With ``segments.method: hierarchical`` a block measures the integer edge
statistics of the pairs it owns and the levels of its fragments for the
hierarchy stage (:func:`measure_block`). With ``global``:

A block reads the fragments of its read ROI (write ROI + context), finds the
basins that block faces cut into several fragments (:mod:`blockwise.stitching`,
in the flood extract_fragments saved), builds the region graph of the write
ROI grown by one offset with each edge's statistic for the configured
scoring, and writes the edges (u, v), u < v,
whose fragment u belongs to this block (fragment ids encode their block),
with their initial score and statistic; the halves of a cut basin are marked
with the merge score -1 (merged unconditionally). find_segments merges the
whole graph once.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from funlib.geometry import Coordinate, Roi

from blockwise.basin_files import BasinFileError, load_basins
from blockwise.contacts import contact_statistics, quantise_affinities
from blockwise.geometry import roi_slices
from blockwise.hierarchy_files import octree_of, save_leaf, save_seams
from blockwise.kernels.region_merging import merge_regions
from blockwise.kernels.relabel import unique_nonzero
from blockwise.run_context import RunContext
from blockwise.scoring import scoring_from_config
from blockwise.stage import BlockFunction, Stage, StageBlock, Tiling
from blockwise.stitching import CUT_MERGE_SCORE, cut_pairs, is_pair, owned_cut_pairs
from blockwise.store import EdgeTable

logger = logging.getLogger(__name__)

NAME = "agglomerate"
#: merge threshold that no edge's score is below (scores are 1 - affinity >= 0)
NO_SCORED_MERGES = 0.0


def _saved_flood(
    ctx: RunContext, block: StageBlock, fragments: np.ndarray
) -> tuple[Roi, np.ndarray, np.ndarray]:
    """The flood extract_fragments saved for ``block``: its ROI, labels, and the fragments there."""
    flood_roi, flood = load_basins(ctx.layout, block.index, block.write_roi)
    if not block.read_roi.contains(flood_roi):
        raise BasinFileError(
            f"{ctx.layout.basin_path(block.index)}: the flood covers {flood_roi}, beyond "
            f"agglomerate block {block.index}'s read ROI {block.read_roi}"
        )
    inside = roi_slices(flood_roi, block.read_roi, ctx.voxel_size)
    return flood_roi, flood, np.ascontiguousarray(fragments[inside])


def cut_basins(
    ctx: RunContext, block: StageBlock, fragments: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (u, v) of fragments from different blocks that are one basin cut by a face.

    The basins are extract_fragments' flood of this block's read ROI, saved by
    that block (:mod:`blockwise.basin_files`): the region is not flooded a
    second time. The agglomerate block's read ROI covers it (:func:`tiling`).

    Args:
        ctx: the run.
        block: the agglomerate block (the extract_fragments block of the same index).
        fragments: the global fragment ids of ``block.read_roi``.
    """
    if ctx.grid.num_blocks == 1:
        empty = np.zeros(0, dtype=np.uint64)
        return empty, empty
    _, flood, region = _saved_flood(ctx, block, fragments)
    return cut_pairs(region, flood, ctx.fragment_ids.block_of_id)


def owned_cut_basins(
    ctx: RunContext, block: StageBlock, fragments: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The pairs of :func:`cut_basins` whose u < v is a fragment of ``block`` (cheaper)."""
    if ctx.grid.num_blocks == 1:
        empty = np.zeros(0, dtype=np.uint64)
        return empty, empty
    flood_roi, flood, region = _saved_flood(ctx, block, fragments)
    return owned_cut_pairs(region, flood, roi_slices(block.write_roi, flood_roi, ctx.voxel_size))


def contact_region(ctx: RunContext, block: StageBlock, offsets: Sequence[Sequence[int]]) -> Roi:
    """The block's write ROI grown by the longest offset, cut to its read ROI.

    Every contact of the block's fragments (a voxel of the block and one an
    offset away) lies inside, with the affinity that measures it.
    """
    reach = Coordinate(max(abs(o[axis]) for o in offsets) for axis in range(3))
    near = block.write_roi.grow(reach * ctx.voxel_size, reach * ctx.voxel_size)
    return near.intersect(block.read_roi)


def agglomerate_block(ctx: RunContext, block: StageBlock) -> EdgeTable:
    """``segments.method: global``: the edges owned by ``block`` with their statistics.

    No edge is merged by score here (the global merge in find_segments redoes
    every merge from the statistics, so merges inside a block were work thrown
    away): the threshold is 0, below every score. Cut basins are marked
    (``CUT_MERGE_SCORE``); every other edge's merge score is NaN. Writes nothing.
    """
    fragments = ctx.fragments.read(block.read_roi)
    cut = cut_basins(ctx, block, fragments)
    near = contact_region(ctx, block, ctx.config.inputs.offsets[:3])
    affs = ctx.read_affinities(near)
    graph = merge_regions(
        np.ascontiguousarray(affs[:3]),
        np.ascontiguousarray(fragments[roi_slices(near, block.read_roi, ctx.voxel_size)]),
        NO_SCORED_MERGES,
        scoring_from_config(ctx.config.agglomerate.scoring),
        forced_pairs=cut,
        with_statistics=True,
    )
    own = np.flatnonzero(ctx.fragment_ids.block_of_id(graph.u) == block.index)
    u, v = graph.u[own], graph.v[own]
    merge_score = graph.merge_score[own].copy()
    merge_score[is_pair(u, v, cut)] = CUT_MERGE_SCORE
    stats = None
    if graph.statistics is not None:
        stats = tuple(graph.statistics[i] for i in own.tolist())
    return EdgeTable(u, v, graph.score[own], merge_score, stats)


def measured_affinities(ctx: RunContext, roi: Roi) -> np.ndarray:
    """The affinities of ``roi`` as uint8 (for the edge statistics)."""
    raw = ctx.affinities.read(roi)
    if raw.dtype == np.uint8:
        return raw
    return quantise_affinities(ctx.read_affinities(roi))  # checks the values


def measure_block(ctx: RunContext, block: StageBlock) -> EdgeTable:
    """``segments.method: hierarchical``: measure, do not merge.

    Counts, for every pair of touching fragments whose smaller id belongs to
    this block, the sum ``S`` of the uint8 affinities on their contacts and
    their number ``N`` (:mod:`blockwise.contacts`; every contact of the
    block's fragments lies within one offset of the block, inside the read
    ROI), and the level of every fragment of the block (the highest octree
    level of an edge of it). Pairs that are one basin cut by a block face are
    found as for the other methods and marked forced: the hierarchy merges
    them before anything else, which gives the whole-volume basin's statistics.
    Writes the leaf and seam files the hierarchy reads; returns the edges for
    the store (score = 1 - mean affinity, merge score NaN or
    ``CUT_MERGE_SCORE``).
    """
    fragments = ctx.fragments.read(block.read_roi)
    offsets = ctx.config.inputs.offsets
    if not ctx.config.agglomerate.long_range_edges:
        offsets = offsets[:3]
    near = contact_region(ctx, block, offsets)
    inner = roi_slices(near, block.read_roi, ctx.voxel_size)
    stats = contact_statistics(
        np.ascontiguousarray(fragments[inner]), measured_affinities(ctx, near), offsets
    )
    block_u = ctx.fragment_ids.block_of_id(stats.u)
    block_v = ctx.fragment_ids.block_of_id(stats.v)
    octree = octree_of(ctx)
    own_ids = unique_nonzero(
        np.ascontiguousarray(fragments[roi_slices(block.write_roi, block.read_roi, ctx.voxel_size)])
    )
    touching = (block_u == block.index) | (block_v == block.index)
    edge_levels = octree.lca_level(block_u[touching], block_v[touching])
    levels = np.zeros(own_ids.size, dtype=np.int64)
    for ends in (stats.u[touching], stats.v[touching]):
        mine = np.isin(ends, own_ids)
        np.maximum.at(levels, np.searchsorted(own_ids, ends[mine]), edge_levels[mine])
    owned = np.flatnonzero(block_u == block.index)
    u, v, s, n = stats.u[owned], stats.v[owned], stats.s[owned], stats.n[owned]
    forced = is_pair(u, v, owned_cut_basins(ctx, block, fragments))
    save_leaf(ctx.layout, block.index, own_ids, levels)
    save_seams(
        ctx.layout,
        block.index,
        octree.lca_level(block_u[owned], block_v[owned]),
        {"u": u, "v": v, "s": s, "n": n, "forced": forced},
        octree.n_levels,
    )
    score = (1.0 - s.astype(np.float64) / (255.0 * n.astype(np.float64))).astype(np.float32)
    merge_score = np.where(forced, np.float32(CUT_MERGE_SCORE), np.float32(np.nan))
    return EdgeTable(u, v, score, merge_score.astype(np.float32))


def process_block(ctx: RunContext, block: StageBlock) -> None:
    """Agglomerate (or, for ``hierarchical``, measure) one block; write the edges it owns."""
    if ctx.config.segments.method == "hierarchical":
        edges = measure_block(ctx, block)
    else:
        edges = agglomerate_block(ctx, block)
    ctx.store.write_edges(ctx.fragment_ids.id_range(block.index), edges)
    logger.debug("block %s: %d edges", block.write_roi, len(edges))


def tiling(ctx: RunContext) -> Tiling:
    """The extract_fragments grid (edge ownership follows fragment ids) with more context.

    The context is ``agglomerate.context_vx``, and at least extract_fragments'
    context: the cut-basin search reads the fragments of the whole region the
    block's saved flood covers (and daisy then waits for the blocks that wrote them).
    """
    context = Coordinate(
        max(a, e)
        for a, e in zip(
            ctx.config.agglomerate.context_vx, ctx.config.extract_fragments.context_vx, strict=True
        )
    )
    return Tiling(
        ctx.data_roi,
        ctx.voxel_size,
        Coordinate(ctx.config.extract_fragments.block_shape_vx),
        context,
    )


@contextmanager
def setup(ctx: RunContext) -> Iterator[BlockFunction]:
    """Open the fragments array and the store once per worker."""
    _ = ctx.fragments, ctx.store
    yield lambda block: process_block(ctx, block)


def clear_outputs(ctx: RunContext) -> None:
    """Remove every edge (and the hierarchy's leaf and seam files)."""
    ctx.store.clear("edges")
    for name in ("leaves", "edges"):
        shutil.rmtree(ctx.layout.hierarchy_dir / name, ignore_errors=True)


# global: affinities float32 x3, fragments, the saved flood, region graph
STAGE = Stage(
    name=NAME,
    # segments.method decides whether edges carry their statistics
    sections=("agglomerate", "segments"),
    upstream=("extract_fragments",),
    tiling=tiling,
    setup=setup,
    bytes_per_voxel=40,
    inputs=("affinities",),
    clear_outputs=clear_outputs,
)
