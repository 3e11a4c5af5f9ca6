"""A real single-node SLURM for the execution-profile tests.

``slurm_cluster`` starts the cluster with ``deploy/slurm/up.sh`` (which installs
slurm-wlm and munge when they are missing, as CI on a fresh machine needs) and
stops it with ``deploy/slurm/down.sh`` at the end of the session, unless it was
already up before the session (then it is left as found). Where no cluster can
be started (not root, no package manager) the tests are skipped, except under
``CI=true``, where they fail: CI must run them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from datafiles import REPO

UP = REPO / "deploy" / "slurm" / "up.sh"
DOWN = REPO / "deploy" / "slurm" / "down.sh"
#: CPUs the test node declares: 8 array tasks run at once on a 2-core machine
CLUSTER_CPUS = 8
#: installing the packages on a fresh machine takes a minute or two
UP_TIMEOUT_S = 600
#: every job the tests submit is named blockwise-<run>-<stage>
JOB_PREFIX = "blockwise-"


def _unavailable(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but no SLURM cluster: {message}")
    pytest.skip(message)


def _is_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    result = subprocess.run(
        ["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, check=False
    )
    return result.returncode == 0 and result.stdout.strip() in {"idle", "mixed", "allocated"}


@dataclass(frozen=True)
class SlurmCluster:
    """The running test cluster."""

    cpus: int

    def jobs(self, states: str = "all", prefix: str = JOB_PREFIX) -> dict[str, str]:
        """Every task of the tests' jobs SLURM lists (``"<job>_<task>"`` -> state).

        Args:
            states: ``squeue --states``.
            prefix: only jobs whose name starts with it (default: every test job).
        """
        out = subprocess.run(
            ["squeue", "--noheader", "--array", f"--states={states}", "--format=%i|%j|%T"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        tasks = {}
        for line in out.splitlines():
            task, name, state = line.strip().split("|")
            if name.startswith(prefix):
                tasks[task] = state
        return tasks

    def live(self, prefix: str = JOB_PREFIX) -> dict[str, str]:
        """The tests' tasks (named ``prefix...``) that are pending, running or still completing."""
        return self.jobs("PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED", prefix)

    def wait_until_idle(self, timeout_s: float) -> dict[str, str]:
        """Wait until no test task is live; returns what is still live (empty on success)."""
        deadline = time.monotonic() + timeout_s
        live = self.live()
        while live and time.monotonic() < deadline:
            time.sleep(0.5)
            live = self.live()
        return live

    def cancel_all(self) -> None:
        """Cancel every test job that is still live (cleanup between tests)."""
        live = {task.split("_")[0] for task in self.live()}
        if live:
            subprocess.run(["scancel", *sorted(live)], check=False)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A single-node SLURM cluster on 127.0.0.1, started for this session if needed."""
    if _is_up():
        yield SlurmCluster(CLUSTER_CPUS)
        return
    if os.geteuid() != 0:
        _unavailable("starting the test SLURM cluster needs root (deploy/slurm/up.sh)")
    log = tmp_path_factory.mktemp("slurm") / "up.log"
    env = dict(os.environ, SLURM_CPUS=str(CLUSTER_CPUS))
    with open(log, "w") as out:
        try:
            result = subprocess.run(
                ["bash", str(UP)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=UP_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            subprocess.run(["bash", str(DOWN)], check=False)
            _unavailable(f"deploy/slurm/up.sh did not finish in {UP_TIMEOUT_S} s; see {log}")
    if result.returncode != 0 or not _is_up():
        subprocess.run(["bash", str(DOWN)], check=False)
        _unavailable(f"deploy/slurm/up.sh failed: {Path(log).read_text()[-2000:]}")
    try:
        yield SlurmCluster(CLUSTER_CPUS)
    finally:
        subprocess.run(["bash", str(DOWN)], check=False)


@pytest.fixture
def slurm(slurm_cluster: SlurmCluster) -> Iterator[SlurmCluster]:
    """The cluster, with every job a test left behind cancelled after it."""
    yield slurm_cluster
    slurm_cluster.cancel_all()
