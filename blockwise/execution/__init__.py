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

import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pathlib import Path

    from blockwise.config import RunConfig
    from blockwise.execution.forkserver import ForkServer
    from blockwise.run_context import RunContext
    from blockwise.stage import StageTask

logger = logging.getLogger(__name__)

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


def start_fork_server(config: RunConfig, in_process: bool = False) -> ForkServer | None:
    """The local profile's fork server, started early (its imports overlap the run's checks).

    None when the run does not use one (in-process, slurm, switched off, not Linux).
    """
    if in_process or config.execution.profile != "local":
        return None
    return start_local_fork_server()


def start_local_fork_server(fork: bool = False) -> ForkServer | None:
    """A fork server for local workers; None where it is switched off or cannot start.

    Args:
        fork: fork it from this process (which must have imported what workers
            import, and run no other thread) instead of starting a new interpreter
            (:class:`~blockwise.execution.forkserver.ForkServer`).
    """
    from blockwise.execution import forkserver

    if not forkserver.enabled():
        return None
    try:
        return forkserver.ForkServer(fork=fork)
    except (forkserver.ForkServerError, OSError) as e:
        logger.warning("no fork server (%s): every worker starts a new interpreter", e)
        return None


def open_profile(
    ctx: RunContext, in_process: bool = False, fork_server: ForkServer | None = None
) -> ExecutionProfile:
    """The profile a run uses: ``execution.profile``, or in-process when asked.

    Args:
        ctx: the run.
        in_process: run blocks in this process.
        fork_server: the local profile's fork server (:func:`start_fork_server`),
            handed to it; a profile that does not use it stops it.

    Raises:
        ConfigError, SlurmError: if the slurm profile cannot run this config here.
    """
    if fork_server is not None and (in_process or ctx.config.execution.profile != "local"):
        fork_server.stop(wait_s=0.0)
        fork_server = None
    if in_process:
        from blockwise.execution.in_process import InProcessProfile

        return InProcessProfile()
    if ctx.config.execution.profile == "slurm":
        from blockwise.execution.slurm import SlurmProfile

        return SlurmProfile(ctx)
    from blockwise.execution import forkserver
    from blockwise.execution.local import LocalProfile

    if fork_server is not None:
        try:
            fork_server.wait_ready()
        except forkserver.ForkServerError as e:
            logger.warning("no fork server (%s): every worker starts a new interpreter", e)
            fork_server = None
    return LocalProfile(
        ctx.layout.config_path, fork_server, ctx.config.execution.longest_block_timeout_s
    )
