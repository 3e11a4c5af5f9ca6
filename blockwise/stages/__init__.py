"""The stages of a run, one module each, found through this registry.

Each stage module defines ``STAGE`` (a :class:`blockwise.stage.Stage`). The
registry imports a module only when its stage is asked for, so a CPU worker
never imports torch (only ``predict``'s per-worker setup does). The
scheduler, ``plan``, ``status``, the runner and the worker iterate over
:func:`active_stages`; no stage module imports another.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from blockwise.config import RunConfig
    from blockwise.stage import Stage

# every stage in pipeline order, with the module that defines it
STAGE_MODULES: dict[str, str] = {
    "predict": "blockwise.stages.predict",
    "extract_fragments": "blockwise.stages.extract_fragments",
    "agglomerate": "blockwise.stages.agglomerate",
    "hierarchy": "blockwise.stages.hierarchy",
    "find_segments": "blockwise.stages.find_segments",
    "relabel": "blockwise.stages.relabel",
    "downsample": "blockwise.stages.downsample",
    "evaluate": "blockwise.stages.evaluate",
}


@cache
def get_stage(name: str) -> Stage:
    """The stage called ``name`` (its module is imported now).

    Raises:
        ValueError: if no stage has that name.
    """
    if name not in STAGE_MODULES:
        raise ValueError(f"unknown stage {name!r}; expected one of {list(STAGE_MODULES)}")
    stage: Stage = importlib.import_module(STAGE_MODULES[name]).STAGE
    return stage


def active_stages(config: RunConfig) -> list[Stage]:
    """The stages a run of ``config`` executes, in pipeline order."""
    return [get_stage(n) for n in STAGE_MODULES if get_stage(n).is_enabled(config)]


def lineage(config: RunConfig, name: str) -> list[Stage]:
    """``name``'s stage and every active stage upstream of it, in pipeline order."""
    active = {s.name: s for s in active_stages(config)}
    seen: set[str] = set()
    pending = [name]
    while pending:
        current = pending.pop()
        if current in seen or current not in active:
            continue
        seen.add(current)
        pending.extend(active[current].upstream)
    return [s for s in active.values() if s.name in seen]


def downstream(config: RunConfig, name: str) -> list[Stage]:
    """``name``'s stage and every active stage that reads its outputs (transitively)."""
    return [s for s in active_stages(config) if name in {u.name for u in lineage(config, s.name)}]


def stage_hash(config: RunConfig, name: str) -> str:
    """The hash of everything that produced ``name``'s outputs (see :mod:`blockwise.identity`)."""
    from blockwise.identity import ingredients_hash, stage_ingredients

    return ingredients_hash(stage_ingredients(config, name))
