"""The block worker: ``python -m blockwise_workers.block_worker CONFIG STAGE``.

Connects to the daisy scheduler named by the ``DAISY_CONTEXT`` environment
variable, processes blocks of STAGE until the scheduler has none left, and
exits 0 (or, started by a local slot with a control socket, waits for the
next stage of the run: :mod:`blockwise.execution.worker_pool`). The stage's
per-worker setup (models, stores, tables) is entered once, at the first block.
A failed block is logged with its ROI and traceback, recorded in the run
directory, reported to the scheduler as failed, and the worker goes on.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys

import daisy.v2 as daisy

from blockwise.execution import local, probe, worker_pool
from blockwise.execution.allocator import keep_freed_memory
from blockwise.run_context import RunContext
from blockwise.stage import split_task_name
from blockwise.stage_worker import StageWorker
from blockwise.stages import get_stage

logger = logging.getLogger("blockwise.worker")


def serve(ctx: RunContext, stage_name: str) -> bool:
    """Process blocks of ``stage_name`` until none are left for this worker.

    ``stage_name`` is a daisy task id: a stage's name, or ``NAME_level_L`` for
    octree level ``L`` of a stage run by levels. The scheduler is the one named
    by ``DAISY_CONTEXT``.

    Returns:
        False if the scheduler went away (the run ended or was stopped).
    """
    name, level = split_task_name(stage_name)
    worker = StageWorker(ctx, get_stage(name), level)
    client = daisy.Client()
    # what was imported and opened so far lives as long as this process: keep the
    # garbage collector from scanning it again (a full collection of this heap takes
    # tens of milliseconds, which one block of thousands a second would wait for; in
    # a worker forked from the fork server it would also copy every page it touches)
    gc.freeze()
    done = failed = 0
    scheduler_listens = True
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
                scheduler_listens = False
                break
    finally:
        worker.close()
        # leave the scheduler now, not when the client is collected: a worker that
        # goes on to another stage must not be seen still connected to this one
        # (daisy 2.0.0's Client keeps its connection as ``_client``)
        connection = getattr(client, "_client", None)
        if connection is not None:
            connection.disconnect()
    logger.info("worker for %s: %d blocks done, %d failed", stage_name, done, failed)
    return scheduler_listens


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
    # block after block, arrays of the same sizes: reuse their pages, do not fault
    # them in again (blockwise.execution.allocator)
    keep_freed_memory()
    # a local slot may send this worker on to other stages of the run when it is
    # done with this one (blockwise.execution.worker_pool): the run is opened once
    control = worker_pool.control_channel()
    ctx = RunContext.from_file(args.config)
    stage: str | None = args.stage
    try:
        while stage is not None:
            if not serve(ctx, stage) or control is None:
                break
            stage = worker_pool.next_stage(control, stage)
    finally:
        ctx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
