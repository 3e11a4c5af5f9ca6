"""The stages of a run, one module each.

Block-wise stages expose ``process_block(ctx, read_roi, write_roi)``: the
function a worker, a test and a notebook all call. Whole-volume stages
(one block covering everything) expose ``run(ctx)``.
"""

from __future__ import annotations

from funlib.geometry import Roi

from blockwise.run_context import RunContext
from blockwise.stages import agglomerate, evaluate, extract_fragments, find_segments, relabel

STAGE_ORDER = ("extract_fragments", "agglomerate", "find_segments", "relabel", "evaluate")
BLOCKWISE_STAGES = ("extract_fragments", "agglomerate", "relabel")


def process(ctx: RunContext, stage: str, read_roi: Roi, write_roi: Roi) -> None:
    """Run one block of ``stage``.

    Raises:
        ValueError: if ``stage`` is not a stage name.
    """
    if stage == extract_fragments.NAME:
        extract_fragments.process_block(ctx, read_roi, write_roi)
    elif stage == agglomerate.NAME:
        agglomerate.process_block(ctx, read_roi, write_roi)
    elif stage == relabel.NAME:
        relabel.process_block(ctx, read_roi, write_roi)
    elif stage == find_segments.NAME:
        find_segments.run(ctx)
    elif stage == evaluate.NAME:
        evaluate.run(ctx)
    else:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGE_ORDER}")


def block_index(ctx: RunContext, stage: str, write_roi: Roi) -> int:
    """The index of a stage's block (0 for whole-volume stages)."""
    if stage in BLOCKWISE_STAGES:
        return ctx.grid.block_index(write_roi.intersect(ctx.data_roi))
    return 0
