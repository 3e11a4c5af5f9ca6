"""The only module that builds daisy tasks: one per active stage, chained into a pipeline.

Every stage's tiling comes from its :class:`~blockwise.stage.Stage`: block-wise
stages tile the data ROI with their own block shape and context, whole-volume
stages are one block covering their region. daisy derives block dependencies
from the ROIs: an agglomerate block waits for the fragment blocks its read ROI
touches, an extract_fragments block for the predict blocks it reads, and so on.
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

from blockwise.execution import StageWorker
from blockwise.run_context import RunContext
from blockwise.stage import Stage
from blockwise.stages import stage_hash

logger = logging.getLogger(__name__)

WORKER_MODULE = "blockwise_workers.block_worker"


@dataclass(frozen=True)
class LocalWorker:
    """Starts one worker program on this machine (daisy calls it once per worker slot).

    The program is the same one a cluster node runs: it reads the run config,
    connects to the scheduler named by ``DAISY_CONTEXT`` (inherited) and
    processes blocks until none are left. A GPU stage's worker sees one device:
    ``CUDA_VISIBLE_DEVICES`` is the worker's slot modulo the GPUs given.
    """

    config_path: str
    stage: str
    gpu_ids: tuple[str, ...] = ()

    def __call__(self, *, context: Any = None) -> None:
        command = [sys.executable, "-m", WORKER_MODULE, self.config_path, self.stage]
        env = dict(os.environ)
        if self.gpu_ids:
            worker_id = int(context["worker_id"]) if context is not None else 0
            env["CUDA_VISIBLE_DEVICES"] = self.gpu_ids[worker_id % len(self.gpu_ids)]
        result = subprocess.run(command, env=env, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"worker {' '.join(command)} exited with {result.returncode}")


class InProcessBlock:
    """Processes one block in this process (serial mode: tests, notebooks, pdb).

    A failing block is recorded and marked failed (daisy's serial mode would
    otherwise abort the whole run on the first exception).
    """

    def __init__(self, worker: StageWorker) -> None:
        self.worker = worker

    def __call__(self, block: Any) -> None:
        try:
            self.worker.process(block.read_roi, block.write_roi)
        except Exception:
            block.status = daisy.BlockStatus.FAILED


def tracking_path(ctx: RunContext, stage: str) -> Path:
    """Where daisy keeps a stage's done markers, keyed by the stage's cumulative hash."""
    return ctx.layout.tracking_dir(stage, stage_hash(ctx.config, stage))


def visible_gpus() -> tuple[str, ...]:
    """The GPUs local workers may use: ``CUDA_VISIBLE_DEVICES`` or every device torch sees."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return tuple(d.strip() for d in listed.split(",") if d.strip())
    import torch

    return tuple(str(i) for i in range(torch.cuda.device_count()))


def build_task(
    ctx: RunContext,
    stage: Stage,
    function: Callable[..., None],
) -> Any:
    """The daisy task of one stage."""
    cfg = ctx.config
    tiling = stage.tiling(ctx)
    workers = stage.resources(cfg).num_workers or cfg.execution.num_workers
    common = {
        "process_function": function,
        "read_write_conflict": False,
        "max_retries": cfg.execution.max_retries,
        "timeout": cfg.execution.block_timeout_s,
        "tracking_path": str(tracking_path(ctx, stage.name)),
    }
    if tiling.block_shape_vx is None:
        data = tiling.data_roi
        return daisy.Task(
            stage.name,
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
        stage.name,
        total_roi=tiling.data_roi.grow(context, context),
        read_roi=block.grow(context, context),
        write_roi=block,
        fit="shrink",
        max_workers=workers,
        **common,
    )


def build_pipeline(
    ctx: RunContext,
    stages: list[Stage],
    config_path: Path,
    multiprocessing: bool = True,
) -> tuple[Any, list[StageWorker]]:
    """The daisy pipeline of a run, and the in-process workers to close after it.

    Args:
        ctx: the validated run.
        stages: the stages to run, in pipeline order.
        config_path: the resolved config workers read.
        multiprocessing: run blocks in worker processes; False runs them here.
    """
    in_process: list[StageWorker] = []
    tasks = []
    for stage in stages:
        function: Callable[..., None]
        if multiprocessing:
            gpus = visible_gpus() if stage.resources(ctx.config).gpus else ()
            function = LocalWorker(str(config_path), stage.name, gpus)
        else:
            worker = StageWorker(ctx, stage)
            in_process.append(worker)
            function = InProcessBlock(worker)
        tasks.append(build_task(ctx, stage, function))
    pipeline = tasks[0]
    for task in tasks[1:]:
        pipeline = pipeline + task
    return pipeline, in_process
