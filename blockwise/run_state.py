"""Which config, inputs and code produced each stage's finished blocks, and what changed since.

``RUN_DIR/run_state.json`` records, per stage, the hash and the ingredients
(:mod:`blockwise.identity`) of the blocks its done markers vouch for. Before a
run writes anything, :func:`find_changes` compares them with the current
config, inputs and code: a stage with finished blocks of other ingredients is
refused (naming the changed keys and the stages, with block counts, that the
change invalidates) unless the user asks to re-run changed stages, which then
start from nothing: markers and outputs of the old ingredients are removed, so
no stale chunk survives.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blockwise.config import RunConfig
from blockwise.identity import changed_keys, ingredients_hash, stage_ingredients
from blockwise.layout import RunLayout
from blockwise.run_context import RunContext
from blockwise.stage import Stage


def blocks_done(tracking_dir: Path) -> int:
    """Number of blocks marked done in a daisy tracking directory (0 if none).

    daisy 2.0 keeps one byte per block in a zarr v3 array ``done`` there. A
    stage run by octree levels keeps one such directory per level
    (``level_L``); their blocks are summed.
    """
    meta_path = tracking_dir / "done" / "zarr.json"
    if not meta_path.exists():
        if not tracking_dir.is_dir():
            return 0
        return sum(
            blocks_done(level) for level in sorted(tracking_dir.glob("level_*")) if level.is_dir()
        )
    meta = json.loads(meta_path.read_text())
    chunk = meta["chunk_grid"]["configuration"]["chunk_shape"]
    shape = meta["shape"]
    done = 0
    for path in (tracking_dir / "done" / "c").rglob("*"):
        if not path.is_file():
            continue
        index = [int(p) for p in path.relative_to(tracking_dir / "done" / "c").parts]
        data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
        # cells of edge chunks beyond the array's shape are padding
        extent = [min(c, s - i * c) for c, s, i in zip(chunk, shape, index, strict=True)]
        cells = data.reshape(chunk)[tuple(slice(0, e) for e in extent)]
        done += int(np.count_nonzero(cells))
    return done


def read_state(layout: RunLayout) -> dict[str, dict[str, object]]:
    """The recorded state per stage (empty for a new run directory)."""
    if not layout.run_state.is_file():
        return {}
    data = json.loads(layout.run_state.read_text())
    stages: dict[str, dict[str, object]] = data.get("stages", {})
    return stages


def write_state(layout: RunLayout, config: RunConfig, stages: list[Stage]) -> None:
    """Record the current ingredients of ``stages`` (atomically)."""
    state = read_state(layout)
    for stage in stages:
        ingredients = stage_ingredients(config, stage.name)
        state[stage.name] = {"hash": ingredients_hash(ingredients), "ingredients": ingredients}
    _write(layout, state)


def _write(layout: RunLayout, state: dict[str, dict[str, object]]) -> None:
    tmp = layout.run_state.with_suffix(".tmp")
    tmp.write_text(json.dumps({"stages": state}, indent=1, sort_keys=True))
    tmp.replace(layout.run_state)


@dataclass(frozen=True)
class StageChange:
    """A stage whose recorded ingredients differ from the current ones.

    Attributes:
        stage: the stage's name.
        blocks_done: finished blocks of the old ingredients.
        changes: ``key: old -> new`` lines (empty when nothing was recorded).
        is_recorded: whether the run directory recorded the old ingredients.
    """

    stage: str
    blocks_done: int
    changes: list[str]
    is_recorded: bool


def find_changes(config: RunConfig, stages: list[Stage]) -> list[StageChange]:
    """Every stage whose outputs (markers or recorded ingredients) are not the current ones."""
    layout = RunLayout(config.run_dir)
    state = read_state(layout)
    found = []
    for stage in stages:
        done = blocks_done(layout.tracking_dir(stage.name))
        record = state.get(stage.name)
        now = stage_ingredients(config, stage.name)
        if record is None:
            if done:
                found.append(StageChange(stage.name, done, [], False))
            continue
        if record.get("hash") != ingredients_hash(now):
            before = record.get("ingredients")
            old = {str(k): str(v) for k, v in before.items()} if isinstance(before, dict) else {}
            found.append(StageChange(stage.name, done, changed_keys(old, now), True))
    return found


def refusal_message(run_dir: Path, changes: list[StageChange]) -> str:
    """Why a run is refused: what changed, and which stages (with block counts) it invalidates."""
    lines = [
        f"run directory {run_dir} holds results computed from another config, other inputs "
        "or another code version; nothing was changed."
    ]
    shown: set[str] = set()
    for change in changes:
        if not change.blocks_done:
            continue
        lines.append(f"  {change.stage}: {change.blocks_done} block(s) done")
        if not change.is_recorded:
            lines.append("    no record of what produced them (run_state.json is missing)")
        new = [line for line in change.changes if line not in shown]
        if change.changes and not new:
            lines.append("    (downstream of the changes above)")
        lines += [f"    {line}" for line in new[:12]]
        if len(new) > 12:
            lines.append(f"    ... and {len(new) - 12} more")
        shown.update(change.changes)
    lines.append(
        "Run again with --rerun-changed to recompute exactly these stages (nothing upstream "
        "of them), use `blockwise reset STAGE`, or choose another run_dir."
    )
    return "\n".join(lines)


def clear_stage(ctx: RunContext, stage: Stage) -> None:
    """Remove a stage's done markers, its outputs, its record and its output manifest."""
    from blockwise.integrity import forget_stage

    layout = ctx.layout
    shutil.rmtree(layout.tracking_dir(stage.name), ignore_errors=True)
    forget_stage(layout, stage.name)
    stage.clear_outputs(ctx)
    state = read_state(layout)
    if stage.name in state:
        del state[stage.name]
        _write(layout, state)
