"""Files written whole or not at all: a temporary file and ``os.replace``."""

from __future__ import annotations

from pathlib import Path

from blockwise.errors import DiskFullError, as_disk_full


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``path`` through a temporary file and ``os.replace``: all of it or nothing.

    Raises:
        DiskFullError: if the disk is full (the temporary file is removed and
            ``path`` keeps its old content).
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        full = as_disk_full(e, path)
        if full is None:
            raise
        raise DiskFullError(path, full.reason) from None
