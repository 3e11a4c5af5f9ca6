"""Failed-block records: which block of which stage failed, where, and why.

A worker writes one JSON file per failed block (stage, block index, ROIs,
traceback) into the run directory and removes it when a retry of the block
succeeds, so the driver's summary lists exactly the blocks that stayed failed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from funlib.geometry import Roi

FAILURES_DIR = "failures"


@dataclass(frozen=True)
class BlockFailure:
    """One failed block."""

    stage: str
    block_index: int
    read_roi: str
    write_roi: str
    error: str
    traceback: str
    is_deterministic: bool = False


def _path(run_dir: Path, stage: str, block_index: int) -> Path:
    return run_dir / FAILURES_DIR / stage / f"block_{block_index}.json"


def record_failure(
    run_dir: Path,
    stage: str,
    block_index: int,
    read_roi: Roi,
    write_roi: Roi,
    error: BaseException,
    traceback: str,
    is_deterministic: bool = False,
) -> None:
    """Write (replace) the failure record of one block.

    ``is_deterministic`` marks errors that a retry would only repeat (bad input
    values, a corrupt chunk); a retry of such a block fails at once.
    """
    path = _path(run_dir, stage, block_index)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = BlockFailure(
        stage,
        block_index,
        str(read_roi),
        str(write_roi),
        f"{type(error).__name__}: {error}",
        traceback,
        is_deterministic,
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record), indent=1))
    tmp.replace(path)


def read_failure(run_dir: Path, stage: str, block_index: int) -> BlockFailure | None:
    """The failure record of one block, if there is one."""
    path = _path(run_dir, stage, block_index)
    if not path.is_file():
        return None
    return BlockFailure(**json.loads(path.read_text()))


def clear_failure(run_dir: Path, stage: str, block_index: int) -> None:
    """Remove the failure record of a block that has now succeeded."""
    _path(run_dir, stage, block_index).unlink(missing_ok=True)


def clear_all(run_dir: Path) -> None:
    """Forget every failure record (at the start of a run)."""
    root = run_dir / FAILURES_DIR
    if root.is_dir():
        for path in root.glob("*/*.json"):
            path.unlink()


def read_failures(run_dir: Path) -> list[BlockFailure]:
    """Every recorded failure, ordered by stage and block."""
    root = run_dir / FAILURES_DIR
    failures = [
        BlockFailure(**json.loads(path.read_text())) for path in sorted(root.glob("*/*.json"))
    ]
    return sorted(failures, key=lambda f: (f.stage, f.block_index))
