"""The stages of a run, one module each, found through this registry.

Each stage module defines ``STAGE`` (a :class:`blockwise.stage.Stage`). The
registry imports a module only when its stage is asked for, so a CPU worker
never imports torch (only ``predict``'s per-worker setup does). The
scheduler, ``plan``, ``status``, the runner and the worker iterate over
:func:`active_stages`; no stage module imports another.
"""

from __future__ import annotations

import hashlib
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
    "find_segments": "blockwise.stages.find_segments",
    "relabel": "blockwise.stages.relabel",
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


def stage_hash(config: RunConfig, name: str) -> str:
    """The hash keying ``name``'s done markers: its sections and identities and all upstream."""
    stages = lineage(config, name)
    sections = sorted({section for s in stages for section in s.sections})
    extra: dict[str, str] = {}
    for s in stages:
        extra.update(s.identity(config))
    return config.stage_hash(*sections, extra=extra)


def file_identity(path: str) -> str:
    """A content hash of a file, for :attr:`Stage.identity` (streamed, sha256, 16 hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]
