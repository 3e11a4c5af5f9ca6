"""The driver: validate a run, prepare its outputs, schedule its stages, summarise.

The driver is cheap and restartable: finished blocks carry done markers keyed
by their stage's config hash, so running the same command again only runs
what is unfinished.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import daisy.v2 as daisy
from daisy import logging as daisy_logging

from blockwise import failures
from blockwise.config import RunConfig
from blockwise.driver_lock import DriverLock
from blockwise.errors import (
    ConfigError,
    DiskFullError,
    RunChangedError,
    StoreError,
    as_disk_full,
    disk_full_as_error,
    mount_point,
)
from blockwise.execution import open_profile, start_fork_server
from blockwise.execution.serve import serve_pipeline
from blockwise.failures import DISK_FULL_PREFIX, BlockFailure
from blockwise.geometry import voxels
from blockwise.integrity import TrackingGuard, check_inputs, record_outputs, repair_outputs
from blockwise.layout import RunLayout
from blockwise.native_stderr import condensed_stderr
from blockwise.progress import StageProgress, StageSummary, format_summary
from blockwise.run_context import RunContext
from blockwise.run_state import clear_stage, find_changes, refusal_message, write_state
from blockwise.stage import Stage, Tiling, stage_tasks
from blockwise.stages import active_stages, downstream, stage_hash
from blockwise.summary import read_block_times, stage_bounds, write_summary
from blockwise.tasks import build_pipeline

if TYPE_CHECKING:
    from blockwise.execution.forkserver import ForkServer

logger = logging.getLogger(__name__)

RUN_NAME_KEY = "run_name"
CONFIG_HASH_KEY = "config_hash"
#: failed blocks without a record are put down to a full disk below this much free space
FULL_BELOW_BYTES = 1 << 20


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, see :mod:`blockwise.cli`) stopped a run while its blocks ran.

    The workers are stopped and the driver lock released by the time it is
    raised; ``result`` summarises the blocks settled so far (finished blocks
    keep their done markers, so running the same command again resumes).
    """

    def __init__(self, result: RunResult) -> None:
        super().__init__("run interrupted")
        self.result = result


class _RecordingProgress(StageProgress):
    """:class:`StageProgress` that keeps daisy's latest task states (for an interrupted run)."""

    def __init__(self, order: list[str], enabled: bool = True) -> None:
        super().__init__(order, enabled)
        self.states: dict[str, Any] = {}

    def _update(self, states: dict[str, Any], final: bool = False) -> None:
        self.states = states  # every call: an interrupted run reports the latest
        super()._update(states, final)


@dataclass
class RunResult:
    """What a run did."""

    stages: list[StageSummary]
    failures: list[BlockFailure]
    wall_s: float
    run_dir: Path
    messages: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every block of every stage is done."""
        return not self.failures and all(s.done + s.skipped == s.total for s in self.stages)

    def summary(self) -> str:
        """The summary table, followed by the failed blocks."""
        text = format_summary(self.stages, self.wall_s)
        if self.failures:
            lines = [f"\n{len(self.failures)} block(s) failed:"]
            for f in self.failures:
                lines.append(
                    f"  {f.stage} block {f.block_index} write ROI {f.write_roi}: {f.error}"
                )
            lines.append(
                f"tracebacks: {self.run_dir / failures.FAILURES_DIR}/<stage>/block_<i>.json"
            )
            text += "\n".join(lines)
        for message in self.messages:
            text += f"\n{message}"
        return text


def _abandoned(name: str, state: Any, config: RunConfig) -> str:
    """One line on a stage daisy abandoned: why, and for a restart cap, the last worker error."""
    reason = state.abandon_reason or "no reason given"
    if int(state.worker_restart_count) == 0:  # not its own workers: an upstream stage's
        return f"{name} was abandoned: {reason}"
    error = (state.last_worker_error or "").strip().splitlines()
    return (
        f"{name} was abandoned: {reason} ({int(state.worker_failure_count)} worker failures, "
        f"{int(state.worker_restart_count)} restarts; the limit is execution.max_worker_restarts"
        f" = {config.execution.max_worker_restarts}); last worker error: "
        f"{error[-1] if error else 'none captured'}"
    )


def _disk_full_messages(
    run_dir: Path,
    stages: list[StageSummary],
    recorded: list[BlockFailure],
    unrecorded: DiskFullError | None,
) -> list[str]:
    """What to tell the user when the run's disk filled up (empty when it did not).

    Failed blocks whose record says ``disk full: PATH`` are counted; failed
    blocks without a record (writing it needed space too) are counted when
    the file system of ``run_dir`` has less than :data:`FULL_BELOW_BYTES` free.

    Args:
        run_dir: the run directory.
        stages: the run's stage summaries.
        recorded: the failure records of this run.
        unrecorded: why the manifests of finished blocks could not be written, if so.
    """
    full = [f for f in recorded if f.error.startswith(DISK_FULL_PREFIX)]
    missing = max(0, sum(s.failed for s in stages) - len(recorded))
    free = shutil.disk_usage(run_dir).free if run_dir.is_dir() else 0
    if free >= FULL_BELOW_BYTES:
        missing = 0
    if not full and not missing and unrecorded is None:
        return []
    mount = mount_point(run_dir)
    lines = []
    if full or missing:
        example = f" (e.g. {full[0].error.removeprefix(DISK_FULL_PREFIX)})" if full else ""
        unsaid = f", {missing} more without a failure record" if missing else ""
        lines.append(
            f"the disk is full: {len(full)} block(s) failed for lack of space{example}{unsaid}; "
            f"{free // 1024} KiB free on {mount}"
        )
    if unrecorded is not None:
        lines.append(f"finished blocks' outputs not recorded: {unrecorded}")
    lines.append(
        f"free space on {mount} and run the same command again: finished blocks are kept, "
        "the failed ones run again"
    )
    return lines


def validate(config: RunConfig) -> tuple[RunContext, list[tuple[Stage, Tiling]]]:
    """Open every input and check the run can work, writing nothing.

    Returns:
        the run context and each active stage with its tiling.

    Raises:
        ConfigError, InputError, CheckpointError: naming what is wrong.
    """
    if config.execution.profile == "slurm":
        from blockwise.execution.slurm import check_config

        check_config(config)
    ctx = RunContext(config)
    _ = ctx.source, ctx.data_roi, ctx.fragment_ids, ctx.mask, ctx.ground_truth
    check_inputs(ctx)
    stages = []
    for stage in active_stages(config):
        stage.check(ctx)
        stages.append((stage, stage.tiling(ctx)))
    return ctx, stages


def check_run_dir(run_dir: Path) -> None:
    """The run directory can be used: a directory (or creatable), writable.

    Raises:
        ConfigError: naming the path and what is wrong with it.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run_dir {run_dir} is a file, not a directory; choose another run_dir")
    probe = run_dir if run_dir.exists() else next(p for p in run_dir.parents if p.exists())
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(
            f"run_dir {run_dir} cannot be written ({probe} is not a writable directory)"
        )


def check_store_owner(ctx: RunContext, adopt: bool = False) -> None:
    """Refuse a graph store written by a run of another name (reads only).

    Raises:
        StoreError: if the store was written by a run of another name and
            ``adopt`` is False.
    """
    config = ctx.config
    uri = config.store_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return
    owner = ctx.store.get_meta(RUN_NAME_KEY)
    if owner is not None and owner != config.name and not adopt:
        written_by = ctx.store.get_meta(CONFIG_HASH_KEY)
        raise StoreError(
            f"graph store {ctx.store.uri} holds the graph of run {owner!r} (config hash "
            f"{written_by}), not of {config.name!r}; use another store URI or run "
            "directory, or pass --adopt-store to take it over"
        )


def check_changes(ctx: RunContext, stages: list[Stage], rerun_changed: bool) -> list[Stage]:
    """The stages to clear before running: changed ones and everything downstream.

    Raises:
        RunChangedError: if a stage has finished blocks of other ingredients and
            ``rerun_changed`` is False (nothing is written).
    """
    changes = find_changes(ctx.config, stages)
    if any(c.blocks_done for c in changes) and not rerun_changed:
        raise RunChangedError(refusal_message(ctx.run_dir, changes))
    names = {c.stage for c in changes}
    for change in changes:
        names |= {s.name for s in downstream(ctx.config, change.stage)}
    return [s for s in stages if s.name in names]


def prepare(
    config: RunConfig,
    adopt_store: bool = False,
    rerun_changed: bool = False,
    lock: DriverLock | None = None,
) -> tuple[RunContext, list[tuple[Stage, Tiling]]]:
    """Check everything that can refuse the run, then create its directory, outputs and store.

    Every refusal (inputs, config, run directory, another driver, another run's
    store, changed config or inputs) comes before anything is written.

    Args:
        config: the run.
        adopt_store: accept a graph store another run wrote.
        rerun_changed: recompute stages whose config or inputs changed (and downstream).
        lock: the driver lock to take (None: no lock, for tests and notebooks).

    Returns:
        the run context and each active stage with its tiling.

    Raises:
        ConfigError, InputError, StoreError, RunLockedError, RunChangedError.
    """
    ctx, stages = validate(config)
    check_run_dir(config.run_dir)
    check_store_owner(ctx, adopt_store)
    if lock is not None:
        config.run_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    try:
        stale = check_changes(ctx, [s for s, _ in stages], rerun_changed)
        config.run_dir.mkdir(parents=True, exist_ok=True)
        for stage in stale:
            logger.info("clearing %s: its config or inputs changed", stage.name)
            clear_stage(ctx, stage)
        # a marker counts only while its outputs are there: damaged blocks re-run
        repair_outputs(ctx, [s for s, _ in stages])
        config.dump(ctx.layout.config_path)
        if ctx.predicts:
            _ = ctx.predicted_affinities
        _ = ctx.fragments
        for threshold in config.segments.thresholds:
            ctx.segmentation(threshold)
        ctx.store.set_meta(RUN_NAME_KEY, config.name)
        ctx.store.set_meta(CONFIG_HASH_KEY, stage_hash(config, active_stages(config)[-1].name))
        write_state(ctx.layout, config, [s for s, _ in stages])
        ctx.close()
        failures.clear_all(config.run_dir)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return ctx, stages


def reset(config: RunConfig, stage_name: str) -> list[str]:
    """Clear ``stage_name`` and every stage downstream of it (markers, outputs, records).

    Returns:
        the names of the stages cleared.

    Raises:
        RunLockedError: if a driver is running on the run directory.
        ValueError: if the stage is unknown or not part of this run.
    """
    if stage_name not in {s.name for s in active_stages(config)}:
        raise ConfigError(
            f"stage {stage_name!r} is not part of run {config.name}; its stages are "
            f"{[s.name for s in active_stages(config)]}"
        )
    ctx = RunContext(config)
    if not config.run_dir.is_dir():
        return []
    with DriverLock(ctx.layout.lock_path):
        cleared = downstream(config, stage_name)
        for stage in cleared:
            clear_stage(ctx, stage)
        ctx.close()
    return [s.name for s in cleared]


def run(
    config: RunConfig,
    multiprocessing: bool = True,
    progress: bool = True,
    adopt_store: bool = False,
    rerun_changed: bool = False,
    signals: Sequence[int] = (),
    fork_server: ForkServer | None = None,
) -> RunResult:
    """Run every stage of ``config`` to completion (or failure).

    Args:
        config: the validated run config.
        multiprocessing: run blocks in ``execution.num_workers`` worker processes;
            False runs them one by one in this process.
        progress: draw per-stage progress bars.
        adopt_store: accept a graph store written by a run of another name.
        rerun_changed: recompute stages whose config or inputs changed (and downstream).
        signals: the signals that have reached the driver (the caller's live
            list; SIGTERM is relayed as SIGINT): an interrupted run's summary
            names the first one, SIGINT if it is empty.
        fork_server: a fork server the caller started already (the command
            line starts it before its imports); the run owns it from here and
            stops it, also when the run does not use it. None: the run starts
            one if it uses one.

    Raises:
        RunInterrupted: when Ctrl-C or SIGTERM stopped the run; ``summary.json``
            is written first.
    """
    start, started_epoch = time.monotonic(), time.time()
    lock = DriverLock(RunLayout(config.run_dir).lock_path)
    # the workers' fork server imports what they import while the run is checked
    if fork_server is None:
        fork_server = start_fork_server(config, in_process=not multiprocessing)
    try:
        with disk_full_as_error(config.run_dir):
            ctx, stages = prepare(config, adopt_store, rerun_changed, lock)
    except BaseException:
        if fork_server is not None:
            fork_server.stop(wait_s=0.0)
        raise
    daisy_logging.set_log_basedir(str(ctx.layout.logs_dir))
    # a failed block's traceback is written once to RUN_DIR/failures/ and the
    # summary lists it in one line; daisy would print it again for every attempt
    daisy_logging.set_log_level("ERROR")
    profile = open_profile(ctx, in_process=not multiprocessing, fork_server=fork_server)
    tasks = [(task, task.tiling(ctx)) for stage, _ in stages for task in stage_tasks(ctx, stage)]
    names = [task.name for task, _ in tasks]
    observer = _RecordingProgress(names, enabled=progress)
    interrupted = False
    # daisy's done markers live in memory-mapped files: a full disk must not kill the driver
    guard = TrackingGuard(ctx.layout.run_dir / "tracking")
    unrecorded: DiskFullError | None = None
    try:
        pipeline = build_pipeline(ctx, [s for s, _ in stages], profile)
        guard.start()
        try:
            if profile.multiprocessing:
                # daisy's scheduler as its Server runs it, which returns the states of a
                # stage abandoned after too many worker restarts (run_blockwise raises
                # and loses them; the summary says why), and which calls the slots of
                # fork-server stages in this process (serve_pipeline)
                # daisy's native warnings (a worker slot that died, e.g. of a
                # signal sent to the whole process group) become one line each
                with condensed_stderr(ctx.layout.logs_dir / "driver_stderr.log"):
                    states = serve_pipeline(pipeline, observer, profile.host)
            else:
                states = daisy.run_blockwise(
                    pipeline,
                    multiprocessing=False,
                    progress=observer,
                    return_states=True,
                    summary=False,
                )
        except KeyboardInterrupt:
            if guard.error is not None:  # the guard stopped the run: the disk is full
                raise guard.error from None
            # daisy stopped the workers; summarise what settled before the signal
            interrupted = True
            states = observer.states
        except Exception as e:  # daisy could not write its tracking files
            full = as_disk_full(e, ctx.layout.run_dir)
            if full is None:
                raise
            raise full from e
        else:
            try:
                record_outputs(ctx, [s for s, _ in stages])
            except DiskFullError as e:
                # the next run reads the unrecorded outputs once and records them
                unrecorded = e
    finally:
        guard.stop()
        profile.teardown(interrupted=interrupted)
        lock.release()
    # a stage's wall time: from its first block's start to its last block's end, as
    # the workers logged them (daisy reports progress a few times a second at most,
    # too coarse for a stage of milliseconds, and not at all in its serial mode)
    block_times = read_block_times(config.run_dir, since=started_epoch)
    spans = {
        name: max(last - first, 0.0) for name, (first, last) in stage_bounds(block_times).items()
    }
    summaries = []
    messages = []
    for task, tiling in tasks:
        name = task.name
        if name not in states:  # interrupted before daisy reported the task
            summaries.append(StageSummary(name, tiling.num_blocks, 0, 0, 0, 0.0, 0.0))
            continue
        state = states[name]
        skipped = int(state.skipped_count)
        done = int(state.completed_count) - skipped
        # no logged block (every one failed or was skipped): daisy's view, if any ran
        ran = done or int(state.failed_count)
        wall_s = spans.get(name, observer.timings[name].wall_s if ran else 0.0)
        summaries.append(
            StageSummary(
                name=name,
                total=int(state.total_block_count),
                done=done,
                skipped=skipped,
                failed=int(state.failed_count),
                blocked=int(state.orphaned_count),
                wall_s=wall_s,
                megavoxels=voxels(tiling.data_roi, tiling.voxel_size) / 1e6,
            )
        )
        if state.abandoned:
            messages.append(_abandoned(name, state, config))
    if interrupted:
        ctx.close()
        stopped = RunResult(
            summaries,
            failures.read_failures(config.run_dir),
            time.monotonic() - start,
            config.run_dir,
            messages,
        )
        write_summary(
            config,
            stopped,
            start,
            in_process=not multiprocessing,
            timings=observer.timings,
            interrupted=signals[0] if signals else int(signal.SIGINT),
            block_times=block_times,
        )
        raise RunInterrupted(stopped)
    for stage, _ in stages:
        if stage.describe_result is not None:
            messages += stage.describe_result(ctx)
    recorded = failures.read_failures(config.run_dir)
    messages += _disk_full_messages(config.run_dir, summaries, recorded, unrecorded)
    result = RunResult(
        summaries,
        recorded,
        time.monotonic() - start,
        config.run_dir,
        messages,
    )
    write_summary(
        config,
        result,
        start,
        in_process=not multiprocessing,
        timings=observer.timings,
        block_times=block_times,
    )
    ctx.close()
    return result
