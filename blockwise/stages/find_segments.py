"""Stage 3: one fragment -> segment lookup table per threshold, in one pass.

Edges with a merge score are fed in increasing merge score into a union-find
over all fragments; whenever the scores reach the next threshold the current
components are written out as that threshold's table, so every threshold comes
from the same single pass. A segment's id is the smallest fragment id it
contains, so tables do not depend on the order in which equal-scored edges
arrive.

Where the merge scores come from is the ``segments.method``:

- ``hierarchical``: the merge records of every octree task
  (:mod:`blockwise.stages.hierarchy`), cut at each threshold exactly.
- ``global``: the whole region graph is merged once more from the edge
  statistics the blocks stored (the same kernel, on a graph instead of a
  volume), so merges no longer depend on where block faces lie; memory O(edges).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable

import numpy as np
from numpy.typing import NDArray

from blockwise.errors import InputError, StoreError
from blockwise.hierarchical import segment_tables as tables_from_records
from blockwise.hierarchy_files import read_records
from blockwise.kernels.region_merging import merge_graph
from blockwise.kernels.union_find import UnionFind
from blockwise.lut import SegmentTable, save_table
from blockwise.run_context import RunContext
from blockwise.scoring import scoring_from_config
from blockwise.stage import Stage, StageBlock, Tiling, single_function
from blockwise.stitching import CUT_MERGE_SCORE
from blockwise.store import EdgeTable

logger = logging.getLogger(__name__)

NAME = "find_segments"


def segment_tables(
    ids: NDArray[np.uint64],
    chunks: Iterable[EdgeTable],
    thresholds: list[float],
    source: str,
) -> list[SegmentTable]:
    """Lookup tables for every threshold (ascending), from one pass over merged edges.

    Args:
        ids: every fragment id, sorted.
        chunks: edges with a merge score, in increasing merge score across chunks.
        thresholds: an edge joins its fragments at threshold t iff its merge score < t.
        source: names where the edges come from, for messages.

    Raises:
        StoreError: if an edge names a fragment that is not in ``ids``.
    """
    union_find = UnionFind(len(ids))
    pending = sorted(thresholds)
    tables: list[SegmentTable] = []

    def snapshot(threshold: float) -> None:
        smallest = union_find.components()
        tables.append(SegmentTable(threshold, ids, ids[smallest]))

    num_edges = 0
    for chunk in chunks:
        u = np.searchsorted(ids, chunk.u)
        v = np.searchsorted(ids, chunk.v)
        for name, idx, values in (("u", u, chunk.u), ("v", v, chunk.v)):
            bad = (idx >= len(ids)) | (ids[np.minimum(idx, max(len(ids) - 1, 0))] != values)
            if np.any(bad):
                raise StoreError(
                    f"{source}: edge endpoint {name}={values[bad][0]} is not a node; "
                    "was extract_fragments re-run without agglomerate?"
                )
        start = 0
        scores = chunk.merge_score
        while pending:
            stop = int(np.searchsorted(scores, pending[0], side="left"))
            union_find.union(u[start:stop], v[start:stop])
            start = stop
            if stop < len(scores):
                snapshot(pending.pop(0))
            else:
                break
        num_edges += len(chunk)
    for threshold in pending:
        snapshot(threshold)
    logger.info(
        "find_segments: %d fragments, %d merged edges, %d thresholds",
        len(ids),
        num_edges,
        len(tables),
    )
    return tables


def merge_globally(ctx: RunContext) -> EdgeTable:
    """The store's whole region graph merged again from its edge statistics.

    Edges the blocks marked as one basin cut by a block face
    (``CUT_MERGE_SCORE``) are merged first. Returns the merged edges, by increasing merge score.

    Raises:
        StoreError: if an edge was stored without statistics.
    """
    store = ctx.store
    edges = store.read_edges(with_statistics=True)
    stats = edges.statistics or ()
    missing = [i for i, s in enumerate(stats) if not s]
    if missing:
        i = missing[0]
        raise StoreError(
            f"graph store {store.uri}: edge ({edges.u[i]}, {edges.v[i]}) has no statistics "
            "(written by agglomerate with another segments.method?); re-run agglomerate"
        )
    graph = merge_graph(
        edges.u,
        edges.v,
        stats,
        ctx.config.merge_until,
        scoring_from_config(ctx.config.agglomerate.scoring),
        forced=edges.merge_score == CUT_MERGE_SCORE,
    )
    merged = np.flatnonzero(~np.isnan(graph.merge_score))
    order = merged[np.argsort(graph.merge_score[merged], kind="stable")]
    return EdgeTable(graph.u[order], graph.v[order], graph.score[order], graph.merge_score[order])


def hierarchical_tables(ctx: RunContext) -> list[SegmentTable]:
    """Tables from the merge records of every hierarchy task, in one union-find pass."""
    thresholds = ctx.config.segments.thresholds
    ids = ctx.store.node_ids()
    records = read_records(ctx)
    try:
        tables = tables_from_records(ids, records, thresholds)
    except InputError as e:
        raise StoreError(
            f"graph store {ctx.store.uri} and the hierarchy's records disagree ({e}); was "
            "extract_fragments re-run without agglomerate and hierarchy?"
        ) from e
    logger.info(
        "find_segments: %d fragments, %d merge records, %d thresholds",
        len(ids),
        len(records),
        len(thresholds),
    )
    return [SegmentTable(t, ids, table) for t, table in zip(thresholds, tables, strict=True)]


def run(ctx: RunContext) -> list[SegmentTable]:
    """Compute and save the lookup tables of every configured threshold."""
    cfg = ctx.config.segments
    if cfg.method == "hierarchical":
        tables = hierarchical_tables(ctx)
    else:
        merged = merge_globally(ctx)
        tables = segment_tables(
            ctx.store.node_ids(), [merged], cfg.thresholds, f"graph store {ctx.store.uri}"
        )
    for table in tables:
        save_table(ctx.lut_path(table.threshold), table)
    return tables


def process_block(ctx: RunContext, block: StageBlock) -> None:
    """The one whole-volume block: every lookup table."""
    del block
    run(ctx)


def tiling(ctx: RunContext) -> Tiling:
    """One block covering the data."""
    return Tiling(ctx.data_roi, ctx.voxel_size)


def clear_outputs(ctx: RunContext) -> None:
    """Remove every lookup table."""
    shutil.rmtree(ctx.layout.lut_dir, ignore_errors=True)


STAGE = Stage(
    name=NAME,
    sections=("segments",),
    upstream=("agglomerate", "hierarchy"),
    tiling=tiling,
    setup=single_function(process_block),
    clear_outputs=clear_outputs,
)
