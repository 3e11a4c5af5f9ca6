"""The only module that builds daisy tasks: one per stage, chained into a pipeline.

Block-wise stages share one write grid (``extract_fragments.block_shape_vx``)
and differ in context; whole-volume stages are one block covering the data.
daisy derives block dependencies from the ROIs: an agglomerate block waits for
the fragment blocks its read ROI touches, find_segments for every agglomerate
block, and so on.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import daisy.v2 as daisy
from funlib.geometry import Coordinate, Roi

from blockwise.execution import run_block
from blockwise.run_context import RunContext

logger = logging.getLogger(__name__)

# config sections whose change invalidates a stage's finished blocks (cumulative:
# a stage is stale when anything upstream of it changed)
STAGE_SECTIONS = {
    "extract_fragments": ("extract_fragments", "output"),
    "agglomerate": ("extract_fragments", "output", "agglomerate", "segments"),
    "find_segments": ("extract_fragments", "output", "agglomerate", "segments"),
    "relabel": ("extract_fragments", "output", "agglomerate", "segments"),
    "evaluate": ("extract_fragments", "output", "agglomerate", "segments", "evaluate"),
}
WORKER_MODULE = "blockwise_workers.block_worker"


@dataclass(frozen=True)
class LocalWorker:
    """Starts one worker program on this machine (daisy calls it once per worker slot).

    The program is the same one a cluster node runs: it reads the run config,
    connects to the scheduler named by ``DAISY_CONTEXT`` (inherited) and
    processes blocks until none are left.
    """

    config_path: str
    stage: str

    def __call__(self) -> None:
        command = [sys.executable, "-m", WORKER_MODULE, self.config_path, self.stage]
        result = subprocess.run(command, env=dict(os.environ), check=False)
        if result.returncode != 0:
            raise RuntimeError(f"worker {' '.join(command)} exited with {result.returncode}")


@dataclass(frozen=True)
class InProcessBlock:
    """Processes one block in this process (serial mode: tests, notebooks, pdb).

    A failing block is recorded and marked failed (daisy's serial mode would
    otherwise abort the whole run on the first exception).
    """

    ctx: RunContext
    stage: str

    def __call__(self, block: Any) -> None:
        try:
            run_block(self.ctx, self.stage, block.read_roi, block.write_roi)
        except Exception:
            block.status = daisy.BlockStatus.FAILED


def tracking_path(ctx: RunContext, stage: str) -> Path:
    """Where daisy keeps a stage's done markers, keyed by the stage's config hash."""
    return ctx.run_dir / "tracking" / f"{stage}-{ctx.config.stage_hash(*STAGE_SECTIONS[stage])}"


def stage_names(ctx: RunContext) -> list[str]:
    """The stages this run executes, in order."""
    names = ["extract_fragments", "agglomerate", "find_segments", "relabel"]
    if ctx.config.evaluate.enabled and ctx.config.inputs.ground_truth is not None:
        names.append("evaluate")
    return names


def build_pipeline(
    ctx: RunContext, config_path: Path, multiprocessing: bool = True
) -> tuple[Any, list[str]]:
    """The daisy pipeline of a run and its stage names.

    Args:
        ctx: the validated run.
        config_path: the resolved config workers read.
        multiprocessing: run blocks in worker processes; False runs them here.
    """
    cfg = ctx.config
    voxel_size = ctx.voxel_size
    data = ctx.data_roi
    block = Roi((0, 0, 0), ctx.grid.block_shape_nm)
    workers = cfg.execution.num_workers

    def function(stage: str) -> Callable[..., None]:
        if multiprocessing:
            return LocalWorker(str(config_path), stage)
        return InProcessBlock(ctx, stage)

    def blockwise_task(stage: str, context_vx: tuple[int, int, int]) -> Any:
        context = Coordinate(context_vx) * voxel_size
        return daisy.Task(
            stage,
            total_roi=data.grow(context, context),
            read_roi=block.grow(context, context),
            write_roi=block,
            process_function=function(stage),
            read_write_conflict=False,
            fit="shrink",
            max_workers=workers,
            max_retries=cfg.execution.max_retries,
            timeout=cfg.execution.block_timeout_s,
            tracking_path=str(tracking_path(ctx, stage)),
        )

    def whole_task(stage: str) -> Any:
        return daisy.Task(
            stage,
            total_roi=data,
            read_roi=data,
            write_roi=data,
            process_function=function(stage),
            read_write_conflict=False,
            fit="valid",
            max_workers=1,
            max_retries=cfg.execution.max_retries,
            timeout=cfg.execution.block_timeout_s,
            tracking_path=str(tracking_path(ctx, stage)),
        )

    names = stage_names(ctx)
    tasks = [
        blockwise_task("extract_fragments", cfg.extract_fragments.context_vx),
        blockwise_task("agglomerate", cfg.agglomerate.context_vx),
        whole_task("find_segments"),
        blockwise_task("relabel", (0, 0, 0)),
    ]
    if "evaluate" in names:
        tasks.append(whole_task("evaluate"))
    pipeline = tasks[0]
    for task in tasks[1:]:
        pipeline = pipeline + task
    return pipeline, names
