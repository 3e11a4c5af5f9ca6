"""Execution profiles: how a stage's workers are started, and what is torn down after.

One module per profile:

- :mod:`~blockwise.execution.in_process`: blocks run in the driver (tests,
  notebooks, pdb);
- :mod:`~blockwise.execution.local`: worker processes on this machine, the
  worker program ``workers/block_worker.py`` (GPU stages get one device each);
- :mod:`~blockwise.execution.slurm`: one ``sbatch --array`` per stage whose
  tasks run the same worker program as pull workers of the driver's scheduler
  (``execution.profile: slurm``).

A profile gives daisy each stage's process function, names the host the
scheduler listens on, and tears down whatever it started (always: on
completion, failure, Ctrl-C or SIGTERM of the driver).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pathlib import Path

    from blockwise.run_context import RunContext
    from blockwise.stage import StageTask

WORKER_MODULE = "blockwise_workers.block_worker"


def worker_arguments(config_path: Path | str, stage: str) -> list[str]:
    """The worker program's arguments (a fork server passes them to its ``main``)."""
    return [str(config_path), stage]


def worker_command(config_path: Path | str, stage: str) -> list[str]:
    """The worker program's command line: the one place it is spelled out."""
    return [sys.executable, "-m", WORKER_MODULE, *worker_arguments(config_path, stage)]


class ExecutionProfile(Protocol):
    """What the driver needs from a way of running workers."""

    #: whether blocks run in other processes (daisy's ``multiprocessing``)
    multiprocessing: bool
    #: the address the daisy scheduler listens on (routable for cluster profiles)
    host: str

    def process_function(self, ctx: RunContext, task: StageTask) -> Callable[..., Any]:
        """daisy's ``process_function`` for ``task`` (a stage, or one level of it)."""

    def teardown(self, interrupted: bool = False) -> None:
        """Stop everything the profile started; safe to call more than once.

        Args:
            interrupted: the run was stopped (Ctrl-C, SIGTERM): stop at once,
                without waiting for anything to finish by itself.
        """


def open_profile(ctx: RunContext, in_process: bool = False) -> ExecutionProfile:
    """The profile a run uses: ``execution.profile``, or in-process when asked.

    Raises:
        ConfigError, SlurmError: if the slurm profile cannot run this config here.
    """
    if in_process:
        from blockwise.execution.in_process import InProcessProfile

        return InProcessProfile()
    if ctx.config.execution.profile == "slurm":
        from blockwise.execution.slurm import SlurmProfile

        return SlurmProfile(ctx)
    from blockwise.execution.local import LocalProfile

    return LocalProfile(ctx.layout.config_path)
