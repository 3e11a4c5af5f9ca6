"""Stage 2: region merging inside each block, writing the edges the block owns.

A block reads fragments and affinities of its read ROI (write ROI + context),
re-joins basins that block faces cut into several fragments
(:mod:`blockwise.stitching`), builds the region graph, merges regions in order
of score up to ``merge_until``, and writes the edges (u, v), u < v, whose
fragment u belongs to this block (fragment ids encode their block), with
their initial score and the score at which u and v were merged (NaN if they
never were; 0 for the halves of a cut basin).
"""

from __future__ import annotations

import logging

import numpy as np
from funlib.geometry import Roi

from blockwise.fragments import fragments_from_affinities
from blockwise.kernels.region_merging import Scoring, merge_regions
from blockwise.kernels.relabel import relabel
from blockwise.kernels.union_find import UnionFind
from blockwise.run_context import RunContext
from blockwise.stitching import cut_pairs
from blockwise.store import EdgeTable

logger = logging.getLogger(__name__)

NAME = "agglomerate"


def scoring(ctx: RunContext) -> Scoring:
    """The kernel's scoring function from the run config."""
    s = ctx.config.agglomerate.scoring
    return Scoring(kind=s.kind, quantile=s.quantile, k=s.k, init_with_max=s.init_with_max)


def join_cut_basins(
    ctx: RunContext, fragments: np.ndarray, affs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fragments with every cut basin relabelled to one id (its smallest fragment id).

    Returns:
        the relabelled fragments, the sorted fragment ids, and each one's representative.
    """
    ids = np.unique(fragments)
    ids = ids[ids != 0]
    params = ctx.config.extract_fragments
    vs = ctx.voxel_size
    basins, _ = fragments_from_affinities(
        affs,
        (vs[0], vs[1], vs[2]),
        boundary_threshold=params.boundary_threshold,
        min_seed_distance_nm=params.min_seed_distance_nm,
        seeds_per_section=params.seeds_per_section,
        min_fragment_size_vx=params.min_fragment_size_vx,
        mask=fragments != 0,
    )
    u, v = cut_pairs(fragments, basins, ctx.grid.block_of_id)
    union_find = UnionFind(len(ids))
    union_find.union(np.searchsorted(ids, u), np.searchsorted(ids, v))
    representative = ids[union_find.components()]
    if len(u) == 0:
        return fragments, ids, representative
    return relabel(fragments, ids, representative), ids, representative


def agglomerate_block(ctx: RunContext, read_roi: Roi, write_roi: Roi) -> EdgeTable:
    """The edges owned by the block writing ``write_roi``; writes nothing."""
    fragments = ctx.fragments.read(read_roi)
    affs = ctx.read_affinities(read_roi)
    nn_affs = np.ascontiguousarray(affs[:3])
    joined, ids, representative = join_cut_basins(ctx, fragments, affs)
    graph = merge_regions(nn_affs, joined, ctx.config.merge_until, scoring(ctx))
    if joined is not fragments:
        # the joined graph's merge scores, spread back onto the fragment edges
        fragment_graph = merge_regions(nn_affs, fragments, 0.0, scoring(ctx))
        ru = representative[np.searchsorted(ids, fragment_graph.u)]
        rv = representative[np.searchsorted(ids, fragment_graph.v)]
        lo, hi = np.minimum(ru, rv), np.maximum(ru, rv)
        # look each fragment edge's representative pair up among the joined edges
        n = len(ids)
        dense_joined = np.searchsorted(ids, graph.u) * n + np.searchsorted(ids, graph.v)
        dense_wanted = np.searchsorted(ids, lo) * n + np.searchsorted(ids, hi)
        position = np.minimum(np.searchsorted(dense_joined, dense_wanted), len(dense_joined) - 1)
        merge_score = np.where(
            lo == hi, np.float32(0.0), graph.merge_score[position] if len(graph.u) else np.nan
        ).astype(np.float32)
        u, v, score = fragment_graph.u, fragment_graph.v, fragment_graph.score
    else:
        u, v, score, merge_score = graph.u, graph.v, graph.score, graph.merge_score
    grid = ctx.grid
    own = grid.block_of_id(u) == grid.block_index(write_roi)
    return EdgeTable(u[own], v[own], score[own], merge_score[own])


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
