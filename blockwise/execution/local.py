"""The local profile: worker processes on this machine, the same program a cluster node runs."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blockwise.execution import worker_command
from blockwise.run_context import RunContext
from blockwise.stage import StageTask


@dataclass(frozen=True)
class LocalWorker:
    """Starts one worker program on this machine (daisy calls it once per worker slot).

    The program reads the run config, connects to the scheduler named by
    ``DAISY_CONTEXT`` (inherited) and processes blocks until none are left. A
    GPU stage's worker sees one device: ``CUDA_VISIBLE_DEVICES`` is the
    worker's slot modulo the GPUs given.
    """

    config_path: str
    stage: str
    gpu_ids: tuple[str, ...] = ()

    def __call__(self, *, context: Any = None) -> None:
        command = worker_command(self.config_path, self.stage)
        env = dict(os.environ)
        if self.gpu_ids:
            worker_id = int(context["worker_id"]) if context is not None else 0
            env["CUDA_VISIBLE_DEVICES"] = self.gpu_ids[worker_id % len(self.gpu_ids)]
        result = subprocess.run(command, env=env, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"worker {' '.join(command)} exited with {result.returncode}")


def visible_gpus() -> tuple[str, ...]:
    """The GPUs local workers may use: ``CUDA_VISIBLE_DEVICES`` or every device torch sees."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return tuple(d.strip() for d in listed.split(",") if d.strip())
    import torch

    return tuple(str(i) for i in range(torch.cuda.device_count()))


class LocalProfile:
    """Worker processes on this machine, listening on loopback.

    Args:
        config_path: the resolved config every worker reads.
    """

    multiprocessing = True
    host = "127.0.0.1"

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path

    def process_function(self, ctx: RunContext, task: StageTask) -> Callable[..., Any]:
        """A worker-starting function; GPU stages spread their workers over the GPUs."""
        gpus = visible_gpus() if task.stage.resources(ctx.config).gpus else ()
        return LocalWorker(str(self.config_path), task.name, gpus)

    def teardown(self) -> None:
        """Nothing to stop: daisy ends its worker processes with the run."""
