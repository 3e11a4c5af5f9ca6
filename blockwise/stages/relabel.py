"""Stage 4: fragments -> segmentation, one zarr array per threshold, block by block."""

from __future__ import annotations

import logging
from typing import cast

from funlib.geometry import Roi

from blockwise.kernels.relabel import relabel
from blockwise.run_context import RunContext
from blockwise.stages.find_segments import SegmentTable, load_table

logger = logging.getLogger(__name__)

NAME = "relabel"


def cached_table(ctx: RunContext, threshold: float) -> SegmentTable:
    """The lookup table of ``threshold``, loaded once per worker (it is O(fragments))."""
    key = f"segment_table:{threshold}"
    if key not in ctx.cache:
        ctx.cache[key] = load_table(ctx, threshold)
    return cast(SegmentTable, ctx.cache[key])


def process_block(ctx: RunContext, read_roi: Roi, write_roi: Roi) -> None:
    """Write the segmentation of ``write_roi`` for every threshold.

    Args:
        ctx: the run.
        read_roi: unused (relabel needs no context); kept for a uniform signature.
        write_roi: the block's write ROI (nm); cut to the data here.
    """
    del read_roi
    write_roi = write_roi.intersect(ctx.data_roi)
    fragments = ctx.fragments.read(write_roi)
    for threshold in ctx.config.segments.thresholds:
        table = cached_table(ctx, threshold)
        segmentation = relabel(fragments, table.fragment_ids, table.segment_ids)
        ctx.segmentation(threshold).write(write_roi, segmentation)
