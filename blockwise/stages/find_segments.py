"""Stage 3: one fragment -> segment lookup table per threshold, in one pass.

Edges are streamed from the graph store in increasing merge score, in bounded
chunks, into a union-find over all fragments; whenever the scores reach the
next threshold the current components are written out as that threshold's
table. Memory is O(fragments), whatever the number of edges. A segment's id is
the smallest fragment id it contains, so tables do not depend on the order in
which equal-scored edges arrive.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from blockwise.errors import StoreError
from blockwise.kernels.union_find import UnionFind
from blockwise.run_context import RunContext
from blockwise.store import GraphStore

logger = logging.getLogger(__name__)

NAME = "find_segments"


@dataclass(frozen=True)
class SegmentTable:
    """Fragment ids (sorted) and the segment id of each at one threshold."""

    threshold: float
    fragment_ids: NDArray[np.uint64]
    segment_ids: NDArray[np.uint64]

    @property
    def num_segments(self) -> int:
        """Number of distinct segments."""
        return len(np.unique(self.segment_ids))


def find_segments(
    store: GraphStore, thresholds: list[float], edges_per_chunk: int
) -> list[SegmentTable]:
    """Lookup tables for every threshold (ascending), from one pass over the edges.

    An edge joins its fragments at threshold t iff its merge score < t.

    Raises:
        StoreError: if an edge names a fragment that is not a node of the store.
    """
    ids = store.node_ids()
    union_find = UnionFind(len(ids))
    pending = sorted(thresholds)
    tables: list[SegmentTable] = []

    def snapshot(threshold: float) -> None:
        smallest = union_find.components()
        tables.append(SegmentTable(threshold, ids, ids[smallest]))

    num_edges = 0
    for chunk in store.stream_merged_edges(edges_per_chunk):
        u = np.searchsorted(ids, chunk.u)
        v = np.searchsorted(ids, chunk.v)
        for name, idx, values in (("u", u, chunk.u), ("v", v, chunk.v)):
            bad = (idx >= len(ids)) | (ids[np.minimum(idx, len(ids) - 1)] != values)
            if np.any(bad):
                raise StoreError(
                    f"graph store {store.uri}: edge endpoint {name}={values[bad][0]} is not a "
                    "node; was extract_fragments reset without agglomerate?"
                )
        start = 0
        scores = chunk.merge_score
        while pending:
            stop = int(np.searchsorted(scores, pending[0], side="left"))
            union_find.union(u[start:stop].astype(np.int64), v[start:stop].astype(np.int64))
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


def save_table(ctx: RunContext, table: SegmentTable) -> None:
    """Write a lookup table where relabel finds it (atomically)."""
    path = ctx.lut_path(table.threshold)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, fragment_ids=table.fragment_ids, segment_ids=table.segment_ids)
    tmp.replace(path)


def load_table(ctx: RunContext, threshold: float) -> SegmentTable:
    """Read the lookup table of one threshold."""
    with np.load(ctx.lut_path(threshold)) as data:
        return SegmentTable(threshold, data["fragment_ids"], data["segment_ids"])


def run(ctx: RunContext) -> list[SegmentTable]:
    """Compute and save the lookup tables of every configured threshold."""
    cfg = ctx.config.segments
    tables = find_segments(ctx.store, cfg.thresholds, cfg.edges_per_chunk)
    for table in tables:
        save_table(ctx, table)
    return tables
