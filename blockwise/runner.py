"""The driver: validate a run, prepare its outputs, schedule its stages, summarise.

The driver is cheap and restartable: finished blocks carry done markers keyed
by their stage's config hash, so running the same command again only runs
what is unfinished.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import daisy.v2 as daisy
from daisy import logging as daisy_logging

from blockwise import failures
from blockwise.config import RunConfig
from blockwise.errors import StoreError
from blockwise.execution import open_profile
from blockwise.failures import BlockFailure
from blockwise.geometry import voxels
from blockwise.progress import StageProgress, StageSummary, format_summary
from blockwise.run_context import RunContext
from blockwise.stage import Stage, Tiling
from blockwise.stages import active_stages, stage_hash
from blockwise.tasks import build_pipeline

logger = logging.getLogger(__name__)

RUN_NAME_KEY = "run_name"
CONFIG_HASH_KEY = "config_hash"


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


def validate(config: RunConfig) -> tuple[RunContext, list[tuple[Stage, Tiling]]]:
    """Open every input and check the run can work, writing nothing.

    Returns:
        the run context and each active stage with its tiling.

    Raises:
        ConfigError, InputError, CheckpointError: naming what is wrong.
    """
    ctx = RunContext(config)
    _ = ctx.source, ctx.data_roi, ctx.fragment_ids, ctx.mask, ctx.ground_truth
    stages = []
    for stage in active_stages(config):
        stage.check(ctx)
        stages.append((stage, stage.tiling(ctx)))
    return ctx, stages


def claim_store(ctx: RunContext, adopt: bool = False) -> None:
    """Record this run's name and config hash in the store, refusing another run's store.

    Raises:
        StoreError: if the store was written by a run of another name and
            ``adopt`` is False.
    """
    config = ctx.config
    store = ctx.store
    owner = store.get_meta(RUN_NAME_KEY)
    written_by = store.get_meta(CONFIG_HASH_KEY)
    config_hash = stage_hash(config, active_stages(config)[-1].name)
    if owner is not None and owner != config.name and not adopt:
        raise StoreError(
            f"graph store {store.uri} holds the graph of run {owner!r} (config hash "
            f"{written_by}), not of {config.name!r}; use another store URI or run "
            "directory, or pass --adopt-store to take it over"
        )
    if written_by is not None and written_by != config_hash:
        logger.info(
            "the config changed since the store was written (%s -> %s): stages whose "
            "parameters changed run again",
            written_by,
            config_hash,
        )
    store.set_meta(RUN_NAME_KEY, config.name)
    store.set_meta(CONFIG_HASH_KEY, config_hash)


def prepare(
    config: RunConfig, adopt_store: bool = False
) -> tuple[RunContext, list[tuple[Stage, Tiling]]]:
    """Validate, then create the run directory, outputs and store.

    Returns:
        the run context and each active stage with its tiling.

    Raises:
        StoreError: if the store holds another run's graph (see :func:`claim_store`).
    """
    ctx, stages = validate(config)
    config.run_dir.mkdir(parents=True, exist_ok=True)
    config.dump(ctx.layout.config_path)
    if ctx.predicts:
        _ = ctx.predicted_affinities
    _ = ctx.fragments
    for threshold in config.segments.thresholds:
        ctx.segmentation(threshold)
    claim_store(ctx, adopt_store)
    ctx.close()
    failures.clear_all(config.run_dir)
    return ctx, stages


def run(
    config: RunConfig,
    multiprocessing: bool = True,
    progress: bool = True,
    adopt_store: bool = False,
) -> RunResult:
    """Run every stage of ``config`` to completion (or failure).

    Args:
        config: the validated run config.
        multiprocessing: run blocks in ``execution.num_workers`` worker processes;
            False runs them one by one in this process.
        progress: draw per-stage progress bars.
        adopt_store: accept a graph store written by a run of another name.
    """
    start = time.monotonic()
    ctx, stages = prepare(config, adopt_store)
    daisy_logging.set_log_basedir(str(ctx.layout.logs_dir))
    profile = open_profile(ctx, in_process=not multiprocessing)
    names = [s.name for s, _ in stages]
    observer = StageProgress(names, enabled=progress)
    try:
        pipeline = build_pipeline(ctx, [s for s, _ in stages], profile)
        states = daisy.run_blockwise(
            pipeline,
            multiprocessing=profile.multiprocessing,
            progress=observer,
            return_states=True,
            host=profile.host,
            summary=False,
        )
    finally:
        profile.teardown()
    summaries = []
    messages = []
    for stage, tiling in stages:
        name = stage.name
        state = states[name]
        skipped = int(state.skipped_count)
        summaries.append(
            StageSummary(
                name=name,
                total=int(state.total_block_count),
                done=int(state.completed_count) - skipped,
                skipped=skipped,
                failed=int(state.failed_count) + int(state.orphaned_count),
                wall_s=observer.timings[name].wall_s,
                megavoxels=voxels(tiling.data_roi, tiling.voxel_size) / 1e6,
            )
        )
        if state.abandoned:
            messages.append(f"{name} was abandoned: {state.abandon_reason}")
    result = RunResult(
        summaries,
        failures.read_failures(config.run_dir),
        time.monotonic() - start,
        config.run_dir,
        messages,
    )
    ctx.close()
    return result
