"""The block worker: ``python -m blockwise_workers.block_worker CONFIG STAGE``.

Connects to the daisy scheduler named by the ``DAISY_CONTEXT`` environment
variable, processes blocks of STAGE until the scheduler has none left, and
exits 0. The stage's per-worker setup (models, stores, tables) is entered
once, at the first block. A failed block is logged with its ROI and
traceback, recorded in the run directory, reported to the scheduler as
failed, and the worker goes on.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys

import daisy.v2 as daisy

from blockwise.execution import local, probe
from blockwise.execution.allocator import keep_freed_memory
from blockwise.run_context import RunContext
from blockwise.stage import split_task_name
from blockwise.stage_worker import StageWorker
from blockwise.stages import get_stage

logger = logging.getLogger("blockwise.worker")


def serve(config_path: str, stage_name: str) -> int:
    """Process blocks of ``stage_name`` until none are left; returns the number failed.

    ``stage_name`` is a daisy task id: a stage's name, or ``NAME_level_L`` for
    octree level ``L`` of a stage run by levels.
    """
    ctx = RunContext.from_file(config_path)
    name, level = split_task_name(stage_name)
    worker = StageWorker(ctx, get_stage(name), level)
    client = daisy.Client()
    # what was imported and opened so far lives as long as this process: keep the
    # garbage collector from scanning it again (a full collection of this heap takes
    # tens of milliseconds, which one block of thousands a second would wait for; in
    # a worker forked from the fork server it would also copy every page it touches)
    gc.freeze()
    # block after block, arrays of the same sizes: reuse their pages, do not fault
    # them in again (blockwise.execution.allocator)
    keep_freed_memory()
    done = failed = 0
    try:
        while True:
            try:
                with client.acquire_block() as block:
                    if block is None:
                        break
                    try:
                        worker.process_daisy(block)
                        done += 1
                    except Exception:
                        # StageWorker recorded the failure (ROI, error, traceback file in
                        # RUN_DIR/failures/); daisy is told without the traceback, which its
                        # scheduler would print on the driver's terminal for every attempt
                        block.status = daisy.BlockStatus.FAILED
                        failed += 1
            except (RuntimeError, OSError) as e:
                # talking to the scheduler failed: if it is gone, the run ended or was
                # stopped (the block in hand, if any, runs again on resume)
                # (once, from wherever this worker runs: a SLURM task may be on another host)
                context = daisy.Context.from_env()
                refused = probe.connection_refused(context["hostname"], int(context["port"]), 2.0)
                if refused is not True:
                    raise
                logger.warning("the scheduler is gone (%s): the run ended or was stopped", e)
                break
    finally:
        worker.close()
        ctx.close()
    logger.info("worker for %s: %d blocks done, %d failed", stage_name, done, failed)
    return failed


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="blockwise-worker", description=__doc__)
    parser.add_argument("config", help="the run's resolved config (RUN_DIR/config.yaml)")
    parser.add_argument("stage", help="the stage whose blocks to process")
    args = parser.parse_args(argv)
    local.adopt()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s"
    )
    serve(args.config, args.stage)
    return 0


if __name__ == "__main__":
    sys.exit(main())
