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

import numpy as np
from funlib.geometry import Roi

from blockwise.kernels.region_merging import Scoring, merge_regions
from blockwise.run_context import RunContext
from blockwise.stages.extract_fragments import flood
from blockwise.stitching import CUT_MERGE_SCORE, cut_pairs, is_pair
from blockwise.store import EdgeTable

logger = logging.getLogger(__name__)

NAME = "agglomerate"


def scoring(ctx: RunContext) -> Scoring:
    """The kernel's scoring function from the run config."""
    s = ctx.config.agglomerate.scoring
    return Scoring(kind=s.kind, quantile=s.quantile, k=s.k, init_with_max=s.init_with_max)


def cut_basins(
    ctx: RunContext, fragments: np.ndarray, affs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (u, v) of fragments from different blocks that are one basin cut by a face."""
    basins = flood(ctx, affs, fragments != 0)
    return cut_pairs(fragments, basins, ctx.grid.block_of_id)


def agglomerate_block(ctx: RunContext, read_roi: Roi, write_roi: Roi) -> EdgeTable:
    """The edges owned by the block writing ``write_roi``; writes nothing.

    Cut basins are merged first (stored with ``CUT_MERGE_SCORE``). With ``segments.method:
    global`` each edge also carries its affinity statistic for the global merge.
    """
    fragments = ctx.fragments.read(read_roi)
    affs = ctx.read_affinities(read_roi)
    cut = cut_basins(ctx, fragments, affs)
    graph = merge_regions(
        np.ascontiguousarray(affs[:3]),
        fragments,
        ctx.config.merge_until,
        scoring(ctx),
        forced_pairs=cut,
        with_statistics=ctx.config.segments.method == "global",
    )
    grid = ctx.grid
    own = np.flatnonzero(grid.block_of_id(graph.u) == grid.block_index(write_roi))
    u, v = graph.u[own], graph.v[own]
    merge_score = graph.merge_score[own].copy()
    merge_score[is_pair(u, v, cut)] = CUT_MERGE_SCORE
    stats = None
    if graph.statistics is not None:
        stats = tuple(graph.statistics[i] for i in own.tolist())
    return EdgeTable(u, v, graph.score[own], merge_score, stats)


def process_block(ctx: RunContext, read_roi: Roi, write_roi: Roi) -> None:
    """Agglomerate one block and write the edges it owns.

    Args:
        ctx: the run.
        read_roi: the block's read ROI (nm); cut to the data here.
        write_roi: the block's write ROI (nm); cut to the data here.
    """
    read_roi = read_roi.intersect(ctx.data_roi)
    write_roi = write_roi.intersect(ctx.data_roi)
    edges = agglomerate_block(ctx, read_roi, write_roi)
    ctx.store.write_edges(ctx.grid.id_range(ctx.grid.block_index(write_roi)), edges)
    logger.debug("block %s: %d edges", write_roi, len(edges))
