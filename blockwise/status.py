"""``blockwise status``: how far a run got, read without running anything.

Blocks done come from daisy's done markers in each stage's tracking directory;
whether they belong to this config (and these inputs and code) from the run
state (:mod:`blockwise.run_state`); whether a driver runs now from the driver
lock; failed blocks from the failure records; node and edge counts from the
graph store.
"""

from __future__ import annotations

import json
from pathlib import Path

from blockwise.config import RunConfig
from blockwise.driver_lock import holder, is_locked
from blockwise.failures import read_failures
from blockwise.run_context import RunContext
from blockwise.run_state import blocks_done, find_changes
from blockwise.stage import stage_tasks
from blockwise.stages import active_stages
from blockwise.summary import summary_path


def describe_status(
    config: RunConfig, config_path: Path | str | None = None, verify: bool = False
) -> str:
    """A text report: driver, per-stage blocks done / failed / pending, failures, store.

    With ``verify``, every chunk and file of every finished block is also read
    back and the graph store compared with the fragments (see
    :func:`blockwise.integrity.verify_outputs`); damaged blocks are listed.
    """
    ctx = RunContext(config)
    layout = ctx.layout
    lines = [f"run {config.name} in {config.run_dir}"]
    if not config.run_dir.exists():
        lines.append("not started (no run directory)")
        return "\n".join(lines)
    stages = active_stages(config)
    failures = read_failures(config.run_dir)
    failed_per_stage: dict[str, int] = {}
    for f in failures:
        failed_per_stage[f.stage] = failed_per_stage.get(f.stage, 0) + 1
    running = is_locked(layout.lock_path)
    blocked_in_last_run = {} if running else _blocked_in_last_run(config.run_dir)
    lines.append(f"{'stage':<18}{'blocks':>8}{'done':>8}{'failed':>8}{'blocked':>9}{'pending':>9}")
    complete = True
    for stage in stages:
        for task in stage_tasks(ctx, stage):
            total = task.tiling(ctx).num_blocks
            tracking = layout.tracking_dir(stage.name)
            if task.level is not None:
                tracking = tracking / f"level_{task.level}"
            done = blocks_done(tracking)
            failed = failed_per_stage.get(task.name, 0)
            left = max(total - done - failed, 0)
            blocked = min(blocked_in_last_run.get(task.name, 0), left)
            complete &= done >= total
            lines.append(
                f"{task.name:<18}{total:>8}{done:>8}{failed:>8}{blocked:>9}{left - blocked:>9}"
            )
    if any(blocked_in_last_run.values()):
        lines.append("blocked: not run in the last run, as a block they need failed upstream")
    command = f"blockwise run {config_path or '<config>'}"
    if running:
        lines.append(f"a driver is running now: {holder(layout.lock_path)}")
    elif not complete:
        lines.append(f"interrupted or unfinished; resume with: {command}")
    else:
        lines.append("finished")
    changes = [c for c in find_changes(config, stages) if c.blocks_done]
    if changes:
        names = ", ".join(f"{c.stage} ({c.blocks_done} blocks)" for c in changes)
        lines.append(
            f"outputs of OTHER config/inputs/code in: {names}; `{command} --rerun-changed` "
            "recomputes them"
        )
    else:
        lines.append("outputs belong to this config, these inputs and this code version")
    if failures:
        lines.append(f"{len(failures)} failed block(s) in the last run:")
        lines += [f"  {f.stage} block {f.block_index} {f.write_roi}: {f.error}" for f in failures]
    store = ctx.store
    lines.append(
        f"graph store {store.uri}: {store.count_nodes()} nodes, {store.count_edges()} edges"
    )
    from blockwise.execution.slurm import describe_jobs

    lines += describe_jobs(config.run_dir)
    if verify:
        from blockwise.integrity import describe_verification

        lines.append(describe_verification(ctx, stages, command, remember=not running))
    ctx.close()
    return "\n".join(lines)


def _blocked_in_last_run(run_dir: Path) -> dict[str, int]:
    """Per stage, the blocks the last run could not run because an upstream block failed.

    From ``RUN_DIR/summary.json`` (the last run's end); empty when there is none
    or it cannot be read.
    """
    try:
        summary = json.loads(summary_path(run_dir).read_text(encoding="utf-8"))
        return {str(s["name"]): int(s.get("blocked", 0)) for s in summary["stages"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}
