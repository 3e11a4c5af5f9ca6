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
from blockwise.stage import BlockFunction, Stage, StageTask, Tiling
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
        self._tiling: Tiling | None = None
        self._function: BlockFunction | None = None
        self._exit = ExitStack()
        #: monotonic seconds when the first block started and the last one ended
        self.first_start: float | None = None
        self.last_end: float | None = None

    @property
    def tiling(self) -> Tiling:
        """The stage's tiling, computed once."""
        if self._tiling is None:
            self._tiling = self.task.tiling(self.ctx)
        return self._tiling

    def process(self, read_roi: Roi, write_roi: Roi) -> None:
        """Process the block daisy handed out; on failure, record it and re-raise.

        Raises:
            Exception: whatever the stage raised, after it was recorded.
        """
        if self.first_start is None:
            self.first_start = time.monotonic()
        try:
            self._process(read_roi, write_roi)
        finally:
            self.last_end = time.monotonic()

    def _process(self, read_roi: Roi, write_roi: Roi) -> None:
        block = self.tiling.block(self.stage.name, read_roi, write_roi, self.task.level or 0)
        earlier = failures.read_failure(self.ctx.run_dir, self.name, block.index)
        if earlier is not None and earlier.is_deterministic:
            # this run already saw the block fail for a reason a retry repeats
            raise BlockFailedError(f"{self.name} block {block.index} not retried: {earlier.error}")
        started = time.time()
        try:
            if self._function is None:
                self._function = self._exit.enter_context(self.stage.setup(self.ctx))
            self._function(block)
        except Exception as e:
            full = as_disk_full(e, self.ctx.run_dir)
            try:
                failures.record_failure(
                    self.ctx.run_dir,
                    self.name,
                    block.index,
                    block.read_roi,
                    block.write_roi,
                    e if full is None else full,
                    traceback.format_exc(),
                    # a full disk stays full for the rest of this run; the next
                    # run clears every record (failures.clear_all) and retries
                    is_deterministic=full is not None or isinstance(e, DETERMINISTIC_ERRORS),
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
                e if full is None else full,
            )
            if full is None or full is e:
                raise
            raise full from e
        self._times.record(block.index, started, time.time())
        if earlier is not None:  # an earlier attempt failed for a passing reason
            failures.clear_failure(self.ctx.run_dir, self.name, block.index)

    def close(self) -> None:
        """Leave the stage's setup (close models, tables, stores it opened)."""
        self._times.close()
        self._exit.close()
