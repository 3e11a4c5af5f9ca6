"""The only module that builds daisy tasks: one per active stage, chained into a pipeline.

Every stage's tiling comes from its :class:`~blockwise.stage.Stage`: block-wise
stages tile the data ROI with their own block shape and context, whole-volume
stages are one block covering their region. daisy derives block dependencies
from the ROIs: an agglomerate block waits for the fragment blocks its read ROI
touches, an extract_fragments block for the predict blocks it reads, and so on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import daisy.v2 as daisy
from funlib.geometry import Coordinate, Roi

from blockwise.execution import ExecutionProfile
from blockwise.run_context import RunContext
from blockwise.stage import Stage, StageTask, stage_execution, stage_tasks

logger = logging.getLogger(__name__)


def tracking_path(ctx: RunContext, task: StageTask) -> Path:
    """Where daisy keeps a task's done markers (valid for the hash in the run state).

    The levels of a stage run by levels keep theirs in ``level_L`` below the stage's.
    """
    path = ctx.layout.tracking_dir(task.stage.name)
    return path if task.level is None else path / f"level_{task.level}"


def build_task(
    ctx: RunContext,
    task: StageTask | Stage,
    function: Callable[..., None],
) -> Any:
    """The daisy task of one stage, or of one octree level of a stage run by levels."""
    if not isinstance(task, StageTask):
        task = StageTask(task)
    cfg = ctx.config
    stage = task.stage
    tiling = task.tiling(ctx)
    execution = stage_execution(cfg, stage)
    workers = execution.num_workers
    common = {
        "process_function": function,
        "read_write_conflict": False,
        "max_retries": execution.max_retries,
        "max_worker_restarts": cfg.execution.max_worker_restarts,
        "timeout": execution.block_timeout_s,
        "tracking_path": str(tracking_path(ctx, task)),
    }
    if tiling.block_shape_vx is None:
        data = tiling.data_roi
        return daisy.Task(
            task.name,
            total_roi=data,
            read_roi=data,
            write_roi=data,
            fit="valid",
            max_workers=1,
            **common,
        )
    context = tiling.context_nm
    block = Roi((0, 0, 0), Coordinate(tiling.block_shape_vx) * tiling.voxel_size)
    return daisy.Task(
        task.name,
        total_roi=tiling.data_roi.grow(context, context),
        read_roi=block.grow(context, context),
        write_roi=block,
        fit="shrink",
        max_workers=workers,
        **common,
    )


def build_pipeline(ctx: RunContext, stages: list[Stage], profile: ExecutionProfile) -> Any:
    """The daisy pipeline of a run: one task per stage (per level), chained in order.

    Args:
        ctx: the validated run.
        stages: the stages to run, in pipeline order.
        profile: how each stage's blocks are run.
    """
    tasks = [
        build_task(ctx, task, profile.process_function(ctx, task))
        for stage in stages
        for task in stage_tasks(ctx, stage)
    ]
    pipeline = tasks[0]
    for task in tasks[1:]:
        pipeline = pipeline + task
    return pipeline
