"""Running one block of a stage, recording its failure (ROI + traceback) or success.

Shared by the worker program (``workers/block_worker.py``) and the in-process
mode, so that a block is cut, indexed and reported the same way whatever ran
it. :class:`StageWorker` enters a stage's per-worker setup at the first block
(a downstream stage's tables may not exist before its first block is ready).
"""

from __future__ import annotations

import logging
import time
import traceback
from contextlib import ExitStack
from typing import Any

from funlib.geometry import Roi

from blockwise import failures
from blockwise.errors import (
    BlockFailedError,
    CheckpointError,
    ConfigError,
    DiskFullError,
    InputError,
    as_disk_full,
)
from blockwise.run_context import RunContext
from blockwise.stage import BlockFunction, Stage, StageBlock, StageTask, Tiling
from blockwise.summary import BlockTimeLog

logger = logging.getLogger(__name__)

# errors a retry of the same block would only repeat: bad input values, a corrupt
# chunk, a config or checkpoint that does not fit (transient ones, such as a
# StoreError while a server restarts, are retried). A full disk (DiskFullError) is
# not retried within the run that hit it either, but a later run retries it.
DETERMINISTIC_ERRORS = (InputError, ConfigError, CheckpointError)


class StageWorker:
    """Processes blocks of one stage in this process, setting the stage up once.

    Args:
        ctx: the run, opened in this process.
        stage: the stage whose blocks arrive.
        level: the octree level of the blocks, for a stage run by levels.
    """

    def __init__(self, ctx: RunContext, stage: Stage, level: int | None = None) -> None:
        self.ctx = ctx
        self.stage = stage
        self.task = StageTask(stage, level)
        #: the daisy task id: the stage's name, with its level for a stage run by levels
        self.name = self.task.name
        self._times = BlockTimeLog(ctx.run_dir, self.name)
        self._failures = failures.StageFailures(ctx.run_dir, self.name)
        self._stage_name = stage.name
        self._level = level or 0
        self._tiling: Tiling | None = None
        self._function: BlockFunction | None = None
        self._exit = ExitStack()
        #: whether a block's ROIs were checked against the index daisy's id gave
        self._checked = False
        #: whether blocks are indexed by daisy's id (False once the id and ROIs disagreed)
        self._by_id = True

    @property
    def tiling(self) -> Tiling:
        """The stage's tiling, computed once."""
        if self._tiling is None:
            self._tiling = self.task.tiling(self.ctx)
        return self._tiling

    def process(self, read_roi: Roi, write_roi: Roi) -> None:
        """Process the block with these ROIs; on failure, record it and re-raise.

        Raises:
            BlockFailedError, Exception: as :meth:`process_daisy`.
        """
        self._process(self.tiling.block(self._stage_name, read_roi, write_roi, self._level))

    def process_daisy(self, daisy_block: Any) -> None:
        """Process the block daisy handed out; on failure, record it and re-raise.

        What a block costs beyond the stage's own work is kept to a few
        microseconds (no-op blocks are scheduled thousands a second): its
        index, from daisy's block id (its ROIs are built only if the stage
        reads them; a worker's first block always checks them against the
        index; where they disagree, the worker says so and indexes every later
        block by its ROIs), one lookup of an earlier failure
        (:class:`~blockwise.failures.StageFailures`) and its times, noted in
        memory (:class:`~blockwise.summary.BlockTimeLog`).

        Raises:
            BlockFailedError: if an earlier attempt of the block failed for a
                reason a retry repeats (a deterministic error).
            Exception: whatever the stage raised, after it was recorded.
        """
        if self._by_id:
            try:
                block = self.tiling.daisy_block(self._stage_name, daisy_block, self._level)
                if not self._checked:
                    _ = block.write_roi  # the index daisy's id gave, checked once per worker
                    self._checked = True
            except ValueError as e:
                # daisy numbers blocks otherwise than expected: the ROIs are the truth
                logger.warning("%s: %s; indexing blocks by their ROIs from here on", self.name, e)
                self._by_id = False
        if not self._by_id:
            block = self.tiling.block(
                self._stage_name, daisy_block.read_roi, daisy_block.write_roi, self._level
            )
        self._process(block)

    def _process(self, block: StageBlock) -> None:
        """Run the stage on ``block``; on failure, record it and re-raise."""
        earlier = self._failures.get(block.index)
        if earlier is not None and earlier.is_deterministic:
            # this run already saw the block fail for a reason a retry repeats
            raise BlockFailedError(f"{self.name} block {block.index} not retried: {earlier.error}")
        started = time.time()
        try:
            if self._function is None:
                self._function = self._exit.enter_context(self.stage.setup(self.ctx))
            self._function(block)
        except Exception as e:
            error = self._record_failure(block, e)
            if error is e:
                raise
            raise error from e
        self._times.record(block.index, started, time.time())
        if earlier is not None:  # an earlier attempt failed for a passing reason
            self._failures.clear(block.index)

    def _record_failure(self, block: StageBlock, error: Exception) -> Exception:
        """Record why ``block`` failed (ROIs, error, traceback); returns the error to raise.

        That is ``error``, or the :class:`~blockwise.errors.DiskFullError` it means.
        """
        full = as_disk_full(error, self.ctx.run_dir)
        try:
            failures.record_failure(
                self.ctx.run_dir,
                self.name,
                block.index,
                block.read_roi,
                block.write_roi,
                error if full is None else full,
                traceback.format_exc(),
                # a full disk stays full for the rest of this run; the next
                # run clears every record (failures.clear_all) and retries
                is_deterministic=full is not None or isinstance(error, DETERMINISTIC_ERRORS),
            )
        except DiskFullError as unrecorded:
            # the record needs space too; daisy still counts the block failed
            logger.error(
                "%s block %d: failure not recorded: %s", self.name, block.index, unrecorded
            )
        logger.error(
            "%s block %d (write ROI %s) failed: %s",
            self.name,
            block.index,
            block.write_roi,
            error if full is None else full,
        )
        return error if full is None else full

    def close(self) -> None:
        """Leave the stage's setup (close models, tables, stores it opened)."""
        self._times.close()
        self._exit.close()
