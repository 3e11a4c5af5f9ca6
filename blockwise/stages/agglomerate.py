"""Stage 2: region merging inside each block, writing the edges the block owns.

A block reads fragments and affinities of its read ROI (write ROI + context),
builds the region graph, merges regions in order of score up to
``merge_until``, and writes the edges (u, v), u < v, whose fragment u belongs
to this block (fragment ids encode their block), with their initial score and
the score at which u and v were merged (NaN if they never were).
"""

from __future__ import annotations

import logging

import numpy as np
from funlib.geometry import Roi

from blockwise.kernels.region_merging import Scoring, merge_regions
from blockwise.run_context import RunContext
from blockwise.store import EdgeTable

logger = logging.getLogger(__name__)

NAME = "agglomerate"


def scoring(ctx: RunContext) -> Scoring:
    """The kernel's scoring function from the run config."""
    s = ctx.config.agglomerate.scoring
    return Scoring(kind=s.kind, quantile=s.quantile, k=s.k, init_with_max=s.init_with_max)


def agglomerate_block(ctx: RunContext, read_roi: Roi, write_roi: Roi) -> EdgeTable:
    """The edges owned by the block writing ``write_roi``; writes nothing."""
    fragments = ctx.fragments.read(read_roi)
    affs = ctx.read_affinities(read_roi)[:3]
    graph = merge_regions(
        np.ascontiguousarray(affs), fragments, ctx.config.merge_until, scoring(ctx)
    )
    grid = ctx.grid
    own = grid.block_of_id(graph.u) == grid.block_index(write_roi)
    return EdgeTable(graph.u[own], graph.v[own], graph.score[own], graph.merge_score[own])


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
