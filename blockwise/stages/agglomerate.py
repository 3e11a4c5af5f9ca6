"""Stage 2: region merging inside each block, writing the edges the block owns.

A block reads fragments and affinities of its read ROI (write ROI + context),
re-joins basins that block faces cut into several fragments
(:mod:`blockwise.stitching`), builds the region graph, merges regions in order
of score up to ``merge_until``, and writes the edges (u, v), u < v, whose
fragment u belongs to this block (fragment ids encode their block), with
their initial score and the score at which u and v were merged (NaN if they
never were; -1 for the halves of a cut basin, which merge unconditionally).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from funlib.geometry import Coordinate

from blockwise.fragments import fragments_for_config
from blockwise.kernels.region_merging import merge_regions
from blockwise.run_context import RunContext
from blockwise.scoring import scoring_from_config
from blockwise.stage import BlockFunction, Stage, StageBlock, Tiling
from blockwise.stitching import CUT_MERGE_SCORE, cut_pairs, is_pair
from blockwise.store import EdgeTable

logger = logging.getLogger(__name__)

NAME = "agglomerate"


def cut_basins(
    ctx: RunContext, fragments: np.ndarray, affs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (u, v) of fragments from different blocks that are one basin cut by a face."""
    basins = fragments_for_config(
        affs, ctx.voxel_size, ctx.config.extract_fragments, fragments != 0
    )
    return cut_pairs(fragments, basins, ctx.fragment_ids.block_of_id)


def agglomerate_block(ctx: RunContext, block: StageBlock) -> EdgeTable:
    """The edges owned by ``block``; writes nothing.

    Cut basins are merged first (stored with ``CUT_MERGE_SCORE``). With ``segments.method:
    global`` each edge also carries its affinity statistic for the global merge.
    """
    fragments = ctx.fragments.read(block.read_roi)
    affs = ctx.read_affinities(block.read_roi)
    cut = cut_basins(ctx, fragments, affs)
    graph = merge_regions(
        np.ascontiguousarray(affs[:3]),
        fragments,
        ctx.config.merge_until,
        scoring_from_config(ctx.config.agglomerate.scoring),
        forced_pairs=cut,
        with_statistics=ctx.config.segments.method == "global",
    )
    own = np.flatnonzero(ctx.fragment_ids.block_of_id(graph.u) == block.index)
    u, v = graph.u[own], graph.v[own]
    merge_score = graph.merge_score[own].copy()
    merge_score[is_pair(u, v, cut)] = CUT_MERGE_SCORE
    stats = None
    if graph.statistics is not None:
        stats = tuple(graph.statistics[i] for i in own.tolist())
    return EdgeTable(u, v, graph.score[own], merge_score, stats)


def process_block(ctx: RunContext, block: StageBlock) -> None:
    """Agglomerate one block and write the edges it owns."""
    edges = agglomerate_block(ctx, block)
    ctx.store.write_edges(ctx.fragment_ids.id_range(block.index), edges)
    logger.debug("block %s: %d edges", block.write_roi, len(edges))


def tiling(ctx: RunContext) -> Tiling:
    """The extract_fragments grid (edge ownership follows fragment ids) with more context."""
    return Tiling(
        ctx.data_roi,
        ctx.voxel_size,
        Coordinate(ctx.config.extract_fragments.block_shape_vx),
        Coordinate(ctx.config.agglomerate.context_vx),
    )


@contextmanager
def setup(ctx: RunContext) -> Iterator[BlockFunction]:
    """Open the fragments array and the store once per worker."""
    _ = ctx.fragments, ctx.store
    yield lambda block: process_block(ctx, block)


def clear_outputs(ctx: RunContext) -> None:
    """Remove every edge."""
    ctx.store.clear("edges")


# affinities float32 x3, fragments, basins, region graph
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
