"""Running one block of a stage, recording its failure (ROI + traceback) or success.

Shared by the worker program (``workers/block_worker.py``) and the in-process
mode, so that a failed block is reported the same way whatever ran it.
"""

from __future__ import annotations

import logging
import traceback

from funlib.geometry import Roi

from blockwise import failures, stages
from blockwise.run_context import RunContext

logger = logging.getLogger(__name__)


def run_block(ctx: RunContext, stage: str, read_roi: Roi, write_roi: Roi) -> None:
    """Process one block; on failure, record it and re-raise.

    Raises:
        Exception: whatever the stage raised, after it was recorded.
    """
    index = stages.block_index(ctx, stage, write_roi)
    try:
        stages.process(ctx, stage, read_roi, write_roi)
    except Exception as e:
        failures.record_failure(
            ctx.run_dir, stage, index, read_roi, write_roi, e, traceback.format_exc()
        )
        logger.error("%s block %d (write ROI %s) failed: %s", stage, index, write_roi, e)
        raise
    failures.clear_failure(ctx.run_dir, stage, index)
