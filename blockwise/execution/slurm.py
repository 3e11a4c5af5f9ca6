"""The slurm profile: one ``sbatch --array`` per stage, whose tasks are the stage's workers.

How it meets daisy. daisy calls a stage's 0-argument worker function once
per worker slot, each call in its own subprocess of the driver, and counts a
worker alive for exactly as long as that call blocks. :class:`SlurmWorker`
is that function:

- the first call of a stage submits ONE array with all N tasks of the stage
  (N: the stage's workers, capped by its number of blocks; split into
  several arrays only beyond the cluster's ``MaxArraySize``);
- every call, the first included, claims one task of that array (in order)
  and blocks until that task ends, so daisy's worker accounting follows the
  real SLURM tasks: a task that exits 0 is a clean worker exit, one that
  fails, times out or is cancelled by someone else is a dirty exit, which
  daisy answers with a new call (within ``max_worker_restarts``), and that
  call claims the next unclaimed task or, when none is left, submits a
  one-task array;
- every task is a pull worker: it runs :func:`~blockwise.execution.worker_command`
  with ``DAISY_CONTEXT`` naming the stage's scheduler, and takes blocks until
  none are left. Its context carries no worker id (``-1``), so daisy does not
  tie it to one slot: tasks whose slot daisy never opens (a stage with few
  ready blocks at first) still pull blocks, and daisy does not mistake a
  task that outlives a slot for a fire-and-forget submission.

A task that exits 0 has been told that its stage has no block left, so its
stage is *drained*: the stage's still-pending tasks are cancelled then.
:meth:`SlurmProfile.teardown` (on completion, failure, Ctrl-C or SIGTERM of
the driver) cancels every job of the run that is still pending or running.
A waiting call returns as soon as the driver's scheduler stops listening
(checked every 2 s), and when the driver process itself is gone (killed, so
no teardown comes) it cancels every job of its stage first: no job waits in
the queue for a driver that will never answer. A task that starts after its
driver is gone finds nobody at the address and exits 0 (daisy's client
treats a refused connection at start as the end of the run).

Stopping the driver (SIGINT, SIGTERM, Ctrl-C to its whole process group).
daisy closes its scheduler at once and waits for every worker slot; each
slot returns when it sees the scheduler gone (or, signalled itself, cancels
its task first), and submits nothing more; then the teardown cancels every
job in the ledger, including arrays submitted while the signal came. A task
that was mid-block loses its scheduler and its worker fails at the next
request: the batch script then checks the scheduler's address, and when
nobody listens there it exits 0 (the run was stopped, not the task; the
block runs again on resume), so the run's jobs end COMPLETED or CANCELLED,
never FAILED. A second signal during the teardown cuts its grace period
short, never the cancelling. SLURM commands run in a session of their own,
so a Ctrl-C cannot kill an ``sbatch`` whose job would go unrecorded.

State shared by the calls (they are separate processes) lives in the run
directory, under a file lock: ``slurm_jobs.json`` lists every job the run
submitted (written atomically), ``slurm/<session>/<stage>.json`` the
arrays, claims and the latest ``squeue`` answer of one stage (one query per
stage per ``poll_interval_s``, however many workers wait). Task logs go to
``logs/slurm/<stage>-<array job>_<task>.out``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blockwise.errors import BlockwiseError, ConfigError
from blockwise.execution import probe, worker_command

if TYPE_CHECKING:
    # types only: daisy's worker subprocesses import this module to unpickle a
    # SlurmWorker, and need none of these (nor zarr, numpy, pydantic behind them)
    from blockwise.config import RunConfig, SlurmStageResources
    from blockwise.run_context import RunContext
    from blockwise.stage import StageTask

logger = logging.getLogger(__name__)

#: the run directory's record of every job the run submitted
JOBS_FILE = "slurm_jobs.json"
#: the run directory's folder of per-session scripts, claims and exit codes
STATE_DIR = "slurm"
#: the cluster's array-size limit when ``scontrol show config`` does not say
DEFAULT_MAX_ARRAY_SIZE = 1001
#: SLURM commands the profile runs
COMMANDS = ("sbatch", "squeue", "scancel", "scontrol")
#: job states after which a task runs no more (``squeue --states=all``)
FINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "PREEMPTED",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
        "SPECIAL_EXIT",
        "REVOKED",
    }
)
#: seconds between checks that the driver's scheduler still listens
PROBE_INTERVAL_S = 2.0
#: seconds a check that the driver's scheduler listens waits for an answer
PROBE_TIMEOUT_S = 5.0
#: seconds between looks at a task's exit-code file
MARKER_INTERVAL_S = 0.25
#: seconds a SLURM command may take before the profile gives up on it
COMMAND_TIMEOUT_S = 60.0
#: seconds a running task gets to exit by itself after a clean run, before it is cancelled
TEARDOWN_GRACE_S = 15.0


class SlurmError(BlockwiseError):
    """A SLURM command failed or a stage's array task ended badly (the message names the stage)."""


# --------------------------------------------------------------------------- SLURM commands


def run_slurm(args: list[str], what: str, timeout: float = COMMAND_TIMEOUT_S) -> str:
    """Run a SLURM command and return its standard output.

    Args:
        args: the command line.
        what: what the command is for, for the error message (e.g. "submit stage x").
        timeout: seconds to wait for it.

    Raises:
        SlurmError: if the command is missing, times out or exits non-zero (with its stderr).
    """
    try:
        # its own session: a Ctrl-C in the driver's terminal reaches every process of the
        # foreground group, and must not kill an sbatch between submitting and answering
        # (a job nobody recorded) nor an scancel of the teardown
        result = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise SlurmError(
            f"cannot {what}: `{args[0]}` is not on PATH; run the driver where the SLURM "
            "client commands are installed"
        ) from None
    except subprocess.TimeoutExpired:
        raise SlurmError(
            f"cannot {what}: `{shlex.join(args)}` did not answer in {timeout:.0f} s"
        ) from None
    if result.returncode != 0:
        message = (result.stderr.strip() or result.stdout.strip()).replace("\n", "; ")
        raise SlurmError(
            f"cannot {what}: `{shlex.join(args)}` exited with {result.returncode}: {message}"
        )
    return result.stdout


def check_commands() -> None:
    """Fail clearly when the SLURM client commands are missing.

    Raises:
        SlurmError: naming the missing commands and the PATH searched.
    """
    missing = [c for c in COMMANDS if shutil.which(c) is None]
    if missing:
        raise SlurmError(
            f"execution.profile is slurm, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not on PATH "
            f"({os.environ.get('PATH', '')}); run the driver on a machine that can submit "
            "SLURM jobs (a login node), or use execution.profile: local"
        )


def cluster_max_array_size() -> int:
    """The cluster's ``MaxArraySize`` (``scontrol show config``), or 1001 when unknown."""
    try:
        text = run_slurm(["scontrol", "show", "config"], "read the SLURM configuration")
    except SlurmError as e:
        logger.warning("%s; assuming MaxArraySize=%d", e, DEFAULT_MAX_ARRAY_SIZE)
        return DEFAULT_MAX_ARRAY_SIZE
    match = re.search(r"^\s*MaxArraySize\s*=\s*(\d+)", text, re.MULTILINE)
    return int(match.group(1)) if match else DEFAULT_MAX_ARRAY_SIZE


def sbatch_options(resources: SlurmStageResources, gpus: int) -> list[str]:
    """The ``sbatch`` options for one stage's tasks (resources, placement, extras).

    Args:
        resources: the stage's merged SLURM resources.
        gpus: GPUs per task (``resources.gpus`` or the stage's own need).
    """
    options = []
    if resources.cpus_per_task is not None:
        options.append(f"--cpus-per-task={resources.cpus_per_task}")
    if resources.mem is not None:
        options.append(f"--mem={resources.mem}")
    if gpus > 0:
        options.append(f"--gres=gpu:{gpus}")
    if resources.partition is not None:
        options.append(f"--partition={resources.partition}")
    if resources.time is not None:
        options.append(f"--time={resources.time}")
    if resources.account is not None:
        options.append(f"--account={resources.account}")
    options.extend(resources.extra_sbatch_args)
    return options


def array_spec(size: int, max_parallel: int | None) -> str:
    """``--array``'s value for ``size`` tasks, at most ``max_parallel`` running at once."""
    spec = f"0-{size - 1}"
    return spec if max_parallel is None else f"{spec}%{max_parallel}"


def split_array(size: int, max_array_size: int) -> list[int]:
    """Split ``size`` tasks into arrays of at most ``max_array_size`` tasks."""
    full, rest = divmod(size, max_array_size)
    return [max_array_size] * full + ([rest] if rest else [])


def queue_states(job_ids: list[str]) -> dict[str, str]:
    """The state of every task of the given array jobs, keyed ``"<job>_<task>"``.

    Tasks SLURM no longer lists (finished longer than ``MinJobAge`` ago) are absent.

    Raises:
        SlurmError: if ``squeue`` fails.
    """
    if not job_ids:
        return {}
    out = run_slurm(
        [
            "squeue",
            "--noheader",
            "--array",
            "--states=all",
            f"--jobs={','.join(job_ids)}",
            "--format=%F|%K|%T",
        ],
        "ask squeue about the run's jobs",
    )
    states = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and parts[1].isdigit():
            states[f"{parts[0]}_{parts[1]}"] = parts[2]
    return states


def live_jobs(jobs: list[dict[str, Any]], state: str | None = None) -> list[str]:
    """The ledger jobs SLURM still lists under their recorded name, with a task not finished.

    Args:
        jobs: ledger entries (``job_id``, ``name``).
        state: count only tasks in this state (e.g. ``"RUNNING"``); None: pending or running.

    Raises:
        SlurmError: if ``squeue`` fails for another reason than every job being gone.
    """
    names = {str(j["job_id"]): str(j["name"]) for j in jobs}
    if not names:
        return []
    command = ["squeue", "--noheader", f"--jobs={','.join(sorted(names))}", "--format=%F|%j"]
    if state is not None:
        command.append(f"--states={state}")
    try:
        out = run_slurm(command, "ask squeue about the run's jobs")
    except SlurmError as e:
        if "Invalid job id" in str(e):
            return []
        raise
    live = set()
    for line in out.splitlines():
        parts = line.strip().split("|")
        # a job id SLURM reused for someone else's job (after a controller reset) is not ours
        if len(parts) == 2 and names.get(parts[0]) == parts[1]:
            live.add(parts[0])
    return sorted(live)


# --------------------------------------------------------------------------- shared state


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_json(path: Path, default: dict[str, Any]) -> dict[str, Any]:
    """A JSON object from ``path``, or ``default`` when the file does not exist."""
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return default
    return data


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically (a reader sees the old or the new file, whole)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


@dataclass(frozen=True)
class JobLedger:
    """``RUN_DIR/slurm_jobs.json``: every job a run submitted, across driver sessions.

    Attributes:
        path: the ledger file.
    """

    path: Path

    @property
    def lock_path(self) -> Path:
        """The lock serialising writers."""
        return self.path.with_name(f".{self.path.name}.lock")

    def jobs(self) -> list[dict[str, Any]]:
        """Every recorded job (``job_id``, ``stage``, ``session``, ``name``, ``tasks``, ...)."""
        jobs: list[dict[str, Any]] = read_json(self.path, {"jobs": []})["jobs"]
        return jobs

    def add(self, entry: dict[str, Any]) -> None:
        """Record a submitted job."""
        with locked(self.lock_path):
            data = read_json(self.path, {"jobs": []})
            data["jobs"].append(entry)
            write_json(self.path, data)


def describe_jobs(run_dir: Path) -> list[str]:
    """Lines for ``blockwise status``: the run's SLURM jobs and the states of their tasks.

    Empty when the run never submitted a job. Tasks ``squeue`` no longer lists
    (finished longer than the cluster's ``MinJobAge`` ago) are counted as such;
    where ``squeue`` cannot answer, the jobs are listed with the reason.
    """
    jobs = JobLedger(run_dir / JOBS_FILE).jobs()
    if not jobs:
        return []
    try:
        states: dict[str, str] | None = queue_states(sorted({str(j["job_id"]) for j in jobs}))
        unknown = ""
    except SlurmError as e:
        states, unknown = None, str(e)
    lines = [f"SLURM jobs of this run ({len(jobs)}, recorded in {run_dir / JOBS_FILE}):"]
    for job in jobs:
        job_id, tasks = str(job["job_id"]), int(job["tasks"])
        submitted = job.get("submitted_at", "?")
        head = f"  {job['stage']}: array job {job_id}, {tasks} task(s), submitted {submitted}"
        if states is None:
            lines.append(f"{head}: states unknown")
            continue
        counts: dict[str, int] = {}
        for task, state in states.items():
            if task.split("_", 1)[0] == job_id:
                counts[state] = counts.get(state, 0) + 1
        listed = sum(counts.values())
        if listed < tasks:
            counts["no longer listed (ended)"] = tasks - listed
        lines.append(f"{head}: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    if states is None:
        lines.append(f"  (squeue could not answer: {unknown})")
    return lines


def cancel_jobs(jobs: list[dict[str, Any]], why: str, state: str | None = None) -> list[str]:
    """``scancel`` the given ledger jobs that SLURM still lists under their recorded name.

    Args:
        jobs: ledger entries.
        why: the reason, for the log.
        state: cancel only tasks in this state (e.g. ``"PENDING"``); None: every task.

    Returns:
        the job ids cancelled.
    """
    try:
        doomed = live_jobs(jobs, state)
    except SlurmError as e:
        logger.warning("%s; cancelling every recorded job anyway", e)
        doomed = sorted({str(j["job_id"]) for j in jobs})
    if not doomed:
        return []
    command = ["scancel", *([f"--state={state}"] if state else []), *doomed]
    try:
        run_slurm(command, f"cancel jobs {', '.join(doomed)}")
    except SlurmError as e:
        logger.warning("%s", e)
        return []
    logger.info("cancelled SLURM job(s) %s: %s", ", ".join(doomed), why)
    return doomed


def driver_is_listening(host: str, port: int) -> bool:
    """Whether the driver's daisy scheduler still listens at ``host:port``.

    Asked by worker-slot processes, which run on the driver's host: they look
    for the listening socket instead of connecting (see :mod:`.probe`).
    """
    return probe.scheduler_listening(host, port, PROBE_TIMEOUT_S)


class _SlotSignals:
    """SIGINT and SIGTERM of a worker slot process, noted for its wait loop to act on.

    A Ctrl-C in the driver's terminal reaches every process of the foreground
    group, daisy's worker slots included. A slot must then end quietly (a
    ``KeyboardInterrupt`` would be a traceback in the driver's output, and one
    raised between ``sbatch`` and the ledger would leave a job nobody records):
    it stops submitting and cancels the task it waits for, and the driver's
    teardown cancels the rest.

    Attributes:
        signum: the signal received, 0 while none came.
    """

    def __init__(self) -> None:
        self.signum = 0

    def install(self) -> None:
        """Note SIGINT and SIGTERM from now on (main thread only; a no-op elsewhere)."""
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                signal.signal(s, self._note)

    def _note(self, signum: int, frame: object) -> None:
        del frame
        self.signum = signum


# --------------------------------------------------------------------------- the worker function


@dataclass(frozen=True)
class SlurmWorker:
    """daisy's worker function for one stage: claims one array task and waits for it.

    Called by daisy once per worker slot, each call in its own subprocess
    (see the module docstring for the protocol). Every attribute is plain
    data, so the object travels to daisy's subprocess by pickle.

    Attributes:
        stage: the stage's name.
        run_dir: the run directory.
        session: this driver session's folder under ``RUN_DIR/slurm``.
        command: the worker program's command line.
        options: the stage's sbatch resource options.
        job_name: the name the stage's jobs get.
        num_tasks: tasks of the stage's first array(s).
        max_array_size: tasks per array at most.
        max_parallel: tasks of one array running at once at most (None: no limit).
        poll_interval_s: seconds between ``squeue`` queries for the stage.
    """

    stage: str
    run_dir: str
    session: str
    command: tuple[str, ...]
    options: tuple[str, ...]
    job_name: str
    num_tasks: int
    max_array_size: int
    max_parallel: int | None
    poll_interval_s: float

    @property
    def session_dir(self) -> Path:
        """This session's scripts, claims and exit codes."""
        return Path(self.run_dir) / STATE_DIR / self.session

    @property
    def state_path(self) -> Path:
        """The stage's arrays, claims and latest queue snapshot."""
        return self.session_dir / f"{self.stage}.json"

    @property
    def lock_path(self) -> Path:
        """The lock serialising the stage's calls."""
        return self.session_dir / f".{self.stage}.lock"

    @property
    def script_path(self) -> Path:
        """The batch script every task of the stage runs."""
        return self.session_dir / f"{self.stage}.sh"

    def exit_path(self, task: str) -> Path:
        """Where task ``"<job>_<index>"`` writes its exit code."""
        return self.session_dir / "exit" / task

    @property
    def ledger(self) -> JobLedger:
        """The run's job ledger."""
        return JobLedger(Path(self.run_dir) / JOBS_FILE)

    def __call__(self, *, context: Any = None) -> None:
        """Claim a task of the stage's array (submitting it first if needed) and wait for it.

        Raises:
            SlurmError: if submitting failed, or the task failed, timed out or
                was cancelled while the stage still had work (a dirty worker exit).
        """
        if context is None:
            raise SlurmError(
                f"stage {self.stage}: daisy called the SLURM worker function without its "
                "context; this daisy version is not supported"
            )
        host, port = str(context["hostname"]), int(context["port"])
        stop = _SlotSignals()
        stop.install()
        task = self._claim(context, host, port, stop)
        if task is None:
            return
        logger.info("stage %s: worker slot waits for SLURM task %s", self.stage, task)
        self._wait(task, host, port, stop)

    # -- claiming and submitting

    def _read_state(self) -> dict[str, Any]:
        return read_json(
            self.state_path,
            {"arrays": [], "drained": False, "submit_failures": 0, "queue": {}},
        )

    def _claim(self, context: Any, host: str, port: int, stop: _SlotSignals) -> str | None:
        """The task this call waits for (``"<job>_<index>"``), or None when there is
        nothing to wait for: the stage is drained, or the run is ending (the
        slot was signalled, or the driver's scheduler stopped listening)."""
        failure: SlurmError | None = None
        with locked(self.lock_path):
            state = self._read_state()
            for array in state["arrays"]:
                if array["claimed"] < array["size"]:
                    task = f"{array['job_id']}_{array['claimed']}"
                    array["claimed"] += 1
                    write_json(self.state_path, state)
                    return task
            if state["drained"]:
                return None  # no block left: a new task would only start and stop
            if stop.signum or not driver_is_listening(host, port):
                # a slot daisy started just before the run was stopped: submitting
                # now would only queue a job for the teardown to cancel
                return None
            # the stage's first call submits every task; a later one replaces a dead task
            size = self.num_tasks if not state["arrays"] else 1
            try:
                for chunk in split_array(size, self.max_array_size):
                    job_id = self._submit(chunk, context)
                    state["arrays"].append({"job_id": job_id, "size": chunk, "claimed": 0})
            except SlurmError as e:
                state["submit_failures"] += 1
                failure = e
            else:
                state["submit_failures"] = 0
            for array in state["arrays"]:
                if array["claimed"] < array["size"]:
                    array["claimed"] += 1
                    write_json(self.state_path, state)
                    return f"{array['job_id']}_{array['claimed'] - 1}"
            write_json(self.state_path, state)
        # the options passed sbatch --test-only, so the failure is likely passing (a
        # busy controller, a submit limit): back off, then fail this worker slot;
        # daisy calls again (within max_worker_restarts). A run stopped meanwhile
        # ends the wait (daisy waits for every slot before it lets the driver go).
        deadline = time.monotonic() + min(2.0 ** state["submit_failures"], 60.0)
        next_probe = time.monotonic() + PROBE_INTERVAL_S
        while time.monotonic() < deadline:
            if stop.signum:
                return None
            if time.monotonic() >= next_probe:
                if not driver_is_listening(host, port):
                    return None
                next_probe = time.monotonic() + PROBE_INTERVAL_S
            time.sleep(MARKER_INTERVAL_S)
        raise failure if failure is not None else SlurmError(f"stage {self.stage}: no task")

    def _write_script(self, context: Any) -> None:
        # the tasks are pull workers of no particular daisy slot (worker id -1)
        ctx = context.copy()
        ctx["worker_id"] = "-1"
        exit_dir = self.exit_path("x").parent
        exit_dir.mkdir(parents=True, exist_ok=True)
        address = f"{context['hostname']}:{context['port']}"
        probe = shlex.quote(f"exec 3<>/dev/tcp/{context['hostname']}/{context['port']}")
        script = "\n".join(
            [
                "#!/bin/bash",
                f"# blockwise: a pull worker of stage {self.stage} (run directory {self.run_dir})",
                f"export DAISY_CONTEXT={shlex.quote(ctx.to_env())}",
                shlex.join(self.command),
                "status=$?",
                # A worker that loses its scheduler mid-block (the driver was stopped:
                # Ctrl-C, SIGTERM, kill) fails at its next request. The run ended, not
                # this task: its unfinished block runs again when the run resumes.
                # Refused connections say the scheduler is gone; a slow answer
                # (timeout's 124) does not.
                'if [ "$status" != 0 ]; then',
                "  for _ in 1 2 3; do",
                f"    timeout {int(PROBE_TIMEOUT_S)} bash -c {probe} 2>/dev/null",
                "    probe=$?",
                '    if [ "$probe" != 0 ] && [ "$probe" != 124 ]; then',
                f"      echo \"blockwise: the worker exited with $status after the driver's "
                f"scheduler at {address} stopped listening: the run is over or was "
                'stopped; a block it left unfinished runs again when the run resumes" >&2',
                "      status=0",
                "      break",
                "    fi",
                "    sleep 1",
                "  done",
                "fi",
                # the waiting driver learns the exit code without asking squeue
                f'echo "$status" > {shlex.quote(str(exit_dir))}/'
                '"${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}.tmp"',
                f"mv {shlex.quote(str(exit_dir))}/"
                '"${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}".tmp '
                f"{shlex.quote(str(exit_dir))}/"
                '"${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
                'exit "$status"',
                "",
            ]
        )
        self.script_path.write_text(script)
        self.script_path.chmod(0o755)

    def _submit(self, size: int, context: Any) -> str:
        if not self.script_path.exists():
            self._write_script(context)
        log_dir = Path(self.run_dir) / "logs" / "slurm"
        log_dir.mkdir(parents=True, exist_ok=True)
        command = [
            "sbatch",
            "--parsable",
            f"--job-name={self.job_name}",
            f"--array={array_spec(size, self.max_parallel)}",
            f"--output={log_dir / f'{self.stage}-%A_%a.out'}",
            "--export=ALL",
            f"--chdir={self.run_dir}",
            *self.options,
            str(self.script_path),
        ]
        out = run_slurm(command, f"submit the workers of stage {self.stage}")
        job_id = out.strip().split(";")[0]
        if not job_id.isdigit():
            raise SlurmError(
                f"cannot submit the workers of stage {self.stage}: sbatch answered "
                f"{out.strip()!r}, expected a job id"
            )
        self.ledger.add(
            {
                "job_id": job_id,
                "stage": self.stage,
                "session": self.session,
                "name": self.job_name,
                "tasks": size,
                "submitted_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            }
        )
        logger.info(
            "stage %s: submitted SLURM array job %s (%d task(s)): %s",
            self.stage,
            job_id,
            size,
            shlex.join(command),
        )
        return job_id

    # -- waiting

    def _stage_jobs(self) -> list[dict[str, Any]]:
        return [
            j
            for j in self.ledger.jobs()
            if j["session"] == self.session and j["stage"] == self.stage
        ]

    def _task_state(self, task: str) -> tuple[str | None, float]:
        """``task``'s state in the stage's shared queue snapshot (refreshed when stale), and
        when the snapshot was taken (``time.time()``)."""
        with locked(self.lock_path):
            state = self._read_state()
            queue = state["queue"]
            if time.time() - queue.get("checked_at", 0.0) >= self.poll_interval_s:
                job_ids = [a["job_id"] for a in state["arrays"]]
                try:
                    queue = {"checked_at": time.time(), "tasks": queue_states(job_ids)}
                except SlurmError as e:
                    logger.warning("%s; asking again in %.0f s", e, self.poll_interval_s)
                    queue = {**queue, "checked_at": time.time()}
                state["queue"] = queue
                write_json(self.state_path, state)
            tasks: dict[str, str] = queue.get("tasks", {})
            return tasks.get(task), float(queue.get("checked_at", 0.0))

    def _drain(self, task: str) -> None:
        """``task`` found no block left: cancel the stage's tasks that have not started."""
        with locked(self.lock_path):
            state = self._read_state()
            if state["drained"]:
                return
            state["drained"] = True
            write_json(self.state_path, state)
        cancel_jobs(
            self._stage_jobs(), f"stage {self.stage} has no block left ({task} ended)", "PENDING"
        )

    def _is_drained(self) -> bool:
        with locked(self.lock_path):
            return bool(self._read_state()["drained"])

    def _ended(self, task: str, code: int | None, state: str, host: str, port: int) -> None:
        """Return when ``task`` ended as a clean worker exit; raise for a dirty one.

        A task that ends badly after the driver's scheduler stopped (the run was
        stopped or is over, and the teardown cancels what is left) is no worker
        failure: nobody would count it, and raising would print a traceback in the
        driver's output.
        """
        if code == 0:
            self._drain(task)
            return
        if code is None and state == "CANCELLED" and self._is_drained():
            return  # a pending task of a drained stage, cancelled by _drain
        how = f"exited with {code}" if code is not None else f"ended {state}"
        if not driver_is_listening(host, port):
            logger.info(
                "stage %s: SLURM task %s %s after the driver's scheduler stopped",
                self.stage,
                task,
                how,
            )
            return
        job, index = task.split("_")
        log = Path(self.run_dir) / "logs" / "slurm" / f"{self.stage}-{job}_{index}.out"
        raise SlurmError(f"stage {self.stage}: SLURM array task {task} {how}; its log: {log}")

    def _wait(self, task: str, host: str, port: int, stop: _SlotSignals) -> None:
        exit_path = self.exit_path(task)
        parent = os.getppid()
        claimed_at = time.time()
        next_probe = next_poll = time.monotonic()
        unlisted = 0
        last_checked = 0.0
        while True:
            if stop.signum:
                # a Ctrl-C in the driver's terminal (the whole group got it): the
                # driver stops the run; cancel this slot's task at once and end quietly
                with contextlib.suppress(SlurmError):
                    run_slurm(["scancel", task], f"cancel {task}")
                logger.info(
                    "stage %s: worker slot got signal %d; cancelled SLURM task %s",
                    self.stage,
                    stop.signum,
                    task,
                )
                return
            if exit_path.exists():
                status = int(exit_path.read_text().strip())
                self._ended(task, status, "COMPLETED", host, port)
                return
            now = time.monotonic()
            if os.getppid() != parent:
                # orphaned: the driver was killed and no teardown will come
                cancelled = cancel_jobs(self._stage_jobs(), "the driver is gone")
                logger.warning(
                    "stage %s: the driver is gone; cancelled SLURM job(s) %s",
                    self.stage,
                    ", ".join(cancelled) or "(none left)",
                )
                return
            if now >= next_probe:
                next_probe = now + PROBE_INTERVAL_S
                if not driver_is_listening(host, port):
                    # the scheduler stopped (the run ended or was interrupted): the
                    # driver's teardown cancels what is left, after a grace period
                    # that lets finishing tasks end COMPLETED
                    return
            if now >= next_poll:
                next_poll = now + min(self.poll_interval_s, 5.0)
                state, checked_at = self._task_state(task)
                if state in FINAL_STATES:
                    if exit_path.exists():  # written just before the task ended
                        continue
                    code = 0 if state == "COMPLETED" else None
                    self._ended(task, code, str(state), host, port)
                    return
                # unlisted in fresh snapshots taken after the claim: the task
                # ended longer than MinJobAge ago
                if state is not None:
                    unlisted = 0
                elif checked_at > max(claimed_at, last_checked):
                    unlisted += 1
                last_checked = checked_at
                if unlisted >= 3:
                    self._ended(task, None, "unseen (squeue no longer lists it)", host, port)
                    return
            time.sleep(MARKER_INTERVAL_S)


# --------------------------------------------------------------------------- the profile


def check_config(config: RunConfig) -> None:
    """Refuse configs the slurm profile cannot run, before anything is written.

    Raises:
        ConfigError: if the graph store is the embedded SQLite file and
            ``execution.slurm.allow_sqlite_on_cluster`` is not set.
    """
    uri = config.store_uri
    if uri.startswith("sqlite") and not config.execution.slurm.allow_sqlite_on_cluster:
        raise ConfigError(
            f"execution.profile is slurm but the graph store is SQLite ({uri}): SQLite "
            "cannot take writes from many nodes at once. Set store.uri to a MongoDB server "
            "the nodes can reach (store.uri: mongodb://HOST:27017/DBNAME), or, on a "
            "single-node cluster only, set execution.slurm.allow_sqlite_on_cluster: true"
        )


class _TermAsInterrupt:
    """Makes SIGTERM stop daisy's scheduler loop the way Ctrl-C does.

    daisy's run loop runs in native code and watches only SIGINT, and a
    Python signal handler runs only when the main thread gets back to Python
    (after the loop). So SIGTERM is caught by Python's C-level handler,
    which writes it to a wakeup pipe; a thread reading that pipe answers
    with SIGINT to this process, which daisy turns into an orderly abort
    (``KeyboardInterrupt``), and the driver's ``finally`` tears down.
    """

    def __init__(self) -> None:
        self._installed = False
        self._read_fd = self._write_fd = -1
        self._previous_fd = -1
        self._previous_handler: Any = None

    def install(self) -> None:
        """Start forwarding SIGTERM (main thread only; a no-op elsewhere)."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        if self._previous_fd != -1:
            # someone (an asyncio loop) owns the wakeup fd: leave it alone
            signal.set_wakeup_fd(self._previous_fd)
            os.close(self._read_fd)
            os.close(self._write_fd)
            logger.debug("wakeup fd in use; SIGTERM will not interrupt daisy's loop early")
            return
        self._previous_handler = signal.getsignal(signal.SIGTERM)
        if self._previous_handler == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _raise_interrupt)
        self._installed = True
        threading.Thread(target=self._forward, name="sigterm-to-sigint", daemon=True).start()

    def _forward(self) -> None:
        try:
            while data := os.read(self._read_fd, 64):
                if signal.SIGTERM in data:
                    os.kill(os.getpid(), signal.SIGINT)
        finally:
            os.close(self._read_fd)

    def uninstall(self) -> None:
        """Stop forwarding; restore the previous wakeup fd and SIGTERM handler."""
        if not self._installed or threading.current_thread() is not threading.main_thread():
            return
        self._installed = False
        signal.set_wakeup_fd(self._previous_fd)
        if signal.getsignal(signal.SIGTERM) is _raise_interrupt:
            signal.signal(signal.SIGTERM, self._previous_handler)
        os.close(self._write_fd)  # the forwarding thread reads EOF, closes its end, ends


def _raise_interrupt(signum: int, frame: object) -> None:
    del signum, frame
    raise KeyboardInterrupt


class SlurmProfile:
    """One SLURM job array per stage; the driver's daisy scheduler listens on ``host``.

    Args:
        ctx: the run, prepared.

    Raises:
        ConfigError: for the embedded SQLite store without ``allow_sqlite_on_cluster``.
        SlurmError: if the SLURM commands are not on PATH.
    """

    multiprocessing = True

    def __init__(self, ctx: RunContext) -> None:
        config = ctx.config
        check_config(config)
        check_commands()
        self.config = config
        self.settings = config.execution.slurm
        self.host = self.settings.host or socket.getfqdn()
        self.run_dir = config.run_dir
        self.config_path = ctx.layout.config_path
        self.max_array_size = self.settings.max_array_size or cluster_max_array_size()
        self.session = f"{datetime.now():%Y%m%dT%H%M%S}-{os.getpid()}"
        self.ledger = JobLedger(self.run_dir / JOBS_FILE)
        self._closed = False
        self._cancel_leftovers()
        self._signals = _TermAsInterrupt()
        self._signals.install()

    def _cancel_leftovers(self) -> None:
        """Cancel jobs an earlier driver of this run left behind (one driver per run)."""
        cancel_jobs(self.ledger.jobs(), "left by an earlier driver of this run")
        state_dir = self.run_dir / STATE_DIR
        if state_dir.is_dir():
            for old in state_dir.iterdir():
                if old.is_dir():
                    shutil.rmtree(old, ignore_errors=True)

    def workers_of(self, ctx: RunContext, task: StageTask) -> int:
        """Array tasks of ``task``: its workers, at most one per block (one for whole stages)."""
        tiling = task.tiling(ctx)
        if tiling.is_whole:
            return 1
        from blockwise.stage import stage_execution

        workers = stage_execution(ctx.config, task.stage).num_workers
        return max(1, min(workers, tiling.num_blocks))

    def process_function(self, ctx: RunContext, task: StageTask) -> Callable[..., Any]:
        """The task's worker function, after ``sbatch --test-only`` accepted its options.

        Every level of a stage run by levels is one array, with the stage's resources.

        Raises:
            SlurmError: naming the stage, if sbatch refuses its options (an unknown
                partition or account, resources no node has).
        """
        stage = task.stage
        resources = self.settings.for_stage(stage.name)
        gpus = resources.gpus if resources.gpus is not None else stage.resources(ctx.config).gpus
        options = sbatch_options(resources, gpus)
        size = min(self.workers_of(ctx, task), self.max_array_size)
        try:
            run_slurm(
                [
                    "sbatch",
                    "--test-only",
                    f"--array={array_spec(size, resources.max_parallel)}",
                    *options,
                    "--wrap=true",
                ],
                "check the SLURM options",
            )
        except SlurmError as e:
            raise SlurmError(
                f"stage {stage.name}: SLURM refuses its job options {options} "
                f"(execution.slurm, stage overrides under execution.slurm.stages.{stage.name}): "
                f"{e}"
            ) from None
        return SlurmWorker(
            stage=task.name,
            run_dir=str(self.run_dir),
            session=self.session,
            command=tuple(worker_command(self.config_path, task.name)),
            options=tuple(options),
            job_name=f"blockwise-{self.config.name}-{task.name}",
            num_tasks=self.workers_of(ctx, task),
            max_array_size=self.max_array_size,
            max_parallel=resources.max_parallel,
            poll_interval_s=self.settings.poll_interval_s,
        )

    def teardown(self, interrupted: bool = False) -> None:
        """Cancel every job of the run that is still pending or running; safe to call again.

        Called while an exception propagates (a failure, a signal the runner did
        not catch) or after a stop (``interrupted``: Ctrl-C, SIGTERM), it cancels
        at once: a running task may be inside a long block. Otherwise (a clean
        end) it cancels pending tasks at once and gives
        running ones, whose scheduler is gone, up to ``TEARDOWN_GRACE_S`` to exit
        by themselves (so they end COMPLETED; a stopped run's tasks exit after
        their current block). A SIGINT or SIGTERM meanwhile ends that grace at
        once; no signal interrupts the cancelling.
        """
        aborting = interrupted or sys.exc_info()[0] is not None
        previous: dict[signal.Signals, Any] = {}
        hurry: list[int] = []
        if threading.current_thread() is threading.main_thread():
            # a second Ctrl-C (or SIGTERM) must not cut the cancelling short: it only
            # ends the grace period (handlers installed outside Python, reported as
            # None, cannot be put back, so stay)
            for s in (signal.SIGINT, signal.SIGTERM):
                handler = signal.getsignal(s)
                if handler is not None:
                    previous[s] = handler
                    signal.signal(s, lambda signum, frame: hurry.append(signum))
        try:
            jobs = self.ledger.jobs()
            if not aborting:
                cancel_jobs(jobs, "the run is over", "PENDING")
                deadline = time.monotonic() + TEARDOWN_GRACE_S
                with contextlib.suppress(SlurmError):
                    running = live_jobs(jobs)
                    if running:
                        logger.info(
                            "waiting up to %.0f s for SLURM job(s) %s to end by themselves",
                            TEARDOWN_GRACE_S,
                            ", ".join(running),
                        )
                    while running and not hurry and time.monotonic() < deadline:
                        time.sleep(0.5)
                        running = live_jobs(jobs)
            # every job the run recorded, those submitted while the run stopped included
            cancel_jobs(
                self.ledger.jobs(),
                "the driver stopped" if aborting or hurry else "the run is over",
            )
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if not self._closed:
                self._closed = True
                self._signals.uninstall()
