"""The in-process profile: blocks run one by one in the driver (tests, notebooks, pdb)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import daisy.v2 as daisy

from blockwise.run_context import RunContext
from blockwise.stage import StageTask
from blockwise.stage_worker import StageWorker


class InProcessBlock:
    """Processes one block in this process.

    A failing block is recorded and marked failed (daisy's serial mode would
    otherwise abort the whole run on the first exception).
    """

    def __init__(self, worker: StageWorker) -> None:
        self.worker = worker

    def __call__(self, block: Any) -> None:
        try:
            self.worker.process_daisy(block)
        except Exception:
            block.status = daisy.BlockStatus.FAILED


class InProcessProfile:
    """Every stage's blocks in the driver; each stage set up once, at its first block."""

    multiprocessing = False
    host = "127.0.0.1"

    def __init__(self) -> None:
        self._workers: list[StageWorker] = []

    def process_function(self, ctx: RunContext, task: StageTask) -> Callable[..., Any]:
        """A block function running ``task``'s blocks here."""
        worker = StageWorker(ctx, task.stage, task.level)
        self._workers.append(worker)
        return InProcessBlock(worker)

    def teardown(self, interrupted: bool = False) -> None:
        """Leave every stage's setup."""
        for worker in self._workers:
            worker.close()
