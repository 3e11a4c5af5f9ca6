"""What produced a stage's outputs: its ingredients, their hash, and what changed since.

A stage's ingredients are flat ``key -> value`` strings: every config value of
its sections and of the sections of every stage upstream of it (``extract_fragments.
boundary_threshold``, ...), the input entries of the config, the identity of every
input file it (or anything upstream) reads, identities beyond the config (a
checkpoint's content) and the code version from the installed package metadata.
Their hash keys the stage's done markers; the ingredients themselves are kept in
``RUN_DIR/run_state.json`` so that a refused run can name exactly what changed.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blockwise.volume import is_hdf5

if TYPE_CHECKING:
    from blockwise.config import DatasetConfig, RunConfig


def code_version() -> str:
    """The installed package's version (package metadata, never a hand-kept string)."""
    try:
        return metadata.version("blockwise")
    except metadata.PackageNotFoundError:
        return "not-installed"


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = json.dumps(value, sort_keys=True)


@cache
def _file_identity(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()[:16]}"


def file_content_identity(path: Path) -> str:
    """A content hash of a small file (a checkpoint), cached by path, size and mtime."""
    if not path.is_file():
        return f"missing:{path}"
    st = path.stat()
    return _file_identity(str(path), st.st_size, st.st_mtime_ns)


def dataset_identity(dataset: DatasetConfig) -> str:
    """The identity of an input array as it is now.

    HDF5: the file's size and modification time. zarr: the array's metadata
    and its chunk listing (names, sizes, modification times), so that a
    rewritten, added or deleted chunk changes it.
    """
    path = Path(dataset.file)
    if not path.exists():
        return f"missing:{path}"
    if is_hdf5(path):
        st = path.stat()
        return f"hdf5:size={st.st_size}:mtime_ns={st.st_mtime_ns}"
    array_dir = path / dataset.dataset
    digest = hashlib.sha256()
    meta = array_dir / ".zarray"
    if meta.is_file():
        digest.update(meta.read_bytes())
    attrs = array_dir / ".zattrs"
    if attrs.is_file():
        digest.update(attrs.read_bytes())
    if array_dir.is_dir():
        for entry in sorted(array_dir.rglob("*")):
            if entry.is_file() and not entry.name.startswith("."):
                st = entry.stat()
                digest.update(
                    f"{entry.relative_to(array_dir)}:{st.st_size}:{st.st_mtime_ns}\n".encode()
                )
    return f"zarr:{digest.hexdigest()[:16]}"


def stage_ingredients(config: RunConfig, name: str) -> dict[str, str]:
    """Everything that produced stage ``name``'s outputs, as flat ``key -> value`` strings."""
    from blockwise.stages import lineage

    stages = lineage(config, name)
    out: dict[str, str] = {"code.version": code_version()}
    dumped = config.model_dump(mode="json")
    _flatten("inputs", dumped["inputs"], out)
    for stage in stages:
        for section in stage.sections:
            _flatten(section, dumped[section], out)
        for field in stage.inputs:
            dataset = getattr(config.inputs, field)
            if dataset is not None:
                out[f"input:{field}"] = dataset_identity(dataset)
        for key, value in stage.identity(config).items():
            out[f"identity:{key}"] = value
    return out


def ingredients_hash(ingredients: dict[str, str]) -> str:
    """The short hash keying a stage's done markers."""
    text = json.dumps(ingredients, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def changed_keys(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """``key: old -> new`` for every ingredient that differs, sorted."""
    lines = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key, "(absent)"), after.get(key, "(absent)")
        if old != new:
            lines.append(f"{key}: {old} -> {new}")
    return lines
