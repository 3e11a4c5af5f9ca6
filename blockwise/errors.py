"""Exceptions raised by blockwise.

Every error says what was expected and what came, and names the file, key or
block it is about, so that a user can act on it without reading the code.
"""

from __future__ import annotations

import errno
import os
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class BlockwiseError(Exception):
    """Base class of every error blockwise raises on purpose."""


class ConfigError(BlockwiseError):
    """A run configuration is missing, malformed or inconsistent."""


class InputError(BlockwiseError):
    """An input volume is missing, of the wrong shape or dtype, or empty."""


class StoreError(BlockwiseError):
    """The graph store is unreachable, inconsistent or belongs to another run."""


class BlockFailedError(BlockwiseError):
    """One or more blocks of a run failed; the message lists them with their ROIs."""


class CheckpointError(BlockwiseError):
    """A network checkpoint is missing, unreadable, or does not fit the config."""


class RunLockedError(BlockwiseError):
    """Another driver is running on the same run directory."""


class RunChangedError(BlockwiseError):
    """The config, an input or the code changed since finished blocks were computed."""


# errno values that mean "the disk (or the user's quota) cannot take more bytes":
# out of space, over quota, or a file grown past what the file system (or a
# ulimit) allows
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# how Rust (daisy's scheduler) spells an OS error in its messages
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")
# SQLite's primary result code for a full disk (SQLITE_FULL)
_SQLITE_FULL = 13
# names a writing frame keeps its destination file under, most telling first
_PATH_LOCALS = ("file_path", "target", "path", "filename")
_TEMPORARY_LOCALS = ("fn", "temporary", "tmp", "temp_path")


def mount_point(path: Path) -> Path:
    """The mount point of the file system that holds ``path`` (or would hold it)."""
    current = Path(os.path.abspath(path))
    while not current.exists() and current != current.parent:
        current = current.parent
    while not os.path.ismount(current) and current != current.parent:
        current = current.parent
    return current


class DiskFullError(BlockwiseError):
    """The disk (or a quota) ran out while writing ``path``: free space, run the same command.

    Nothing about the run is wrong: the blocks that could not be written have
    no done marker, so running the same command again once there is space
    redoes exactly those.

    Args:
        path: the file (or directory) being written.
        reason: what the OS said, e.g. ``"no space left on device"``.
        mount: the mount point of the full file system (found from ``path`` if not given).
    """

    def __init__(
        self, path: Path | str, reason: str = "no space left on device", mount: Path | None = None
    ) -> None:
        self.path = Path(path)
        self.reason = reason
        self.mount = mount if mount is not None else mount_point(self.path)
        super().__init__(
            f"{reason} writing {self.path} — free space on {self.mount} and run the same "
            "command again"
        )

    def __reduce__(self) -> tuple[type[DiskFullError], tuple[Path, str, Path]]:
        return (DiskFullError, (self.path, self.reason, self.mount))


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and every exception it was raised from or while handling, outermost first."""
    seen: list[BaseException] = []
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop(0)
        if any(current is s for s in seen):
            continue
        seen.append(current)
        pending += [e for e in (current.__cause__, current.__context__) if e is not None]
    return seen


def _disk_full_errno(error: BaseException) -> int | None:
    """The disk-full errno ``error`` itself stands for (None if it is about something else)."""
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
        return error.errno
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)
        if (code is not None and code & 0xFF == _SQLITE_FULL) or "disk is full" in str(error):
            return errno.ENOSPC
    for match in _RUST_OS_ERROR.finditer(str(error)):
        if int(match.group(1)) in DISK_FULL_ERRNOS:
            return int(match.group(1))
    return None


def _written_path(error: BaseException) -> Path | None:
    """The file the failed write was aimed at: the OSError's, or the writing frame's.

    An ``OSError`` from ``write()`` names no file; the frames it passed through
    do (``file_path`` in zarr's chunk writer, ``target`` or ``path`` in ours,
    ``self`` in ``pathlib``). Innermost frames first; temporary names only when
    nothing better is found.
    """
    if isinstance(error, OSError) and error.filename is not None:
        return Path(os.fsdecode(error.filename))
    frames = []
    tb = error.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for names in (_PATH_LOCALS, _TEMPORARY_LOCALS):
        for frame in reversed(frames):
            local = frame.f_locals
            if frame.f_code.co_filename.endswith("pathlib.py") and isinstance(
                local.get("self"), Path
            ):
                return Path(local["self"])
            for name in names:
                value = local.get(name)
                if isinstance(value, str | Path) and os.path.isabs(value):
                    return Path(value)
    return None


def as_disk_full(error: BaseException, default_path: Path) -> DiskFullError | None:
    """``error`` as a :class:`DiskFullError` if a full disk (or quota) caused it, else None.

    Looks through the whole chain (``raise ... from``, errors raised while
    handling others): an ``OSError`` with ``ENOSPC``, ``EDQUOT`` or ``EFBIG``,
    SQLite's "database or disk is full", a Rust "(os error 28)".

    Args:
        error: what was raised.
        default_path: the path to name when no frame tells which file was
            being written (e.g. the run directory, or the SQLite file).
    """
    for link in _chain(error):
        if isinstance(link, DiskFullError):
            return link
        code = _disk_full_errno(link)
        if code is not None:
            path = _written_path(link) or default_path
            return DiskFullError(path, os.strerror(code).lower())
    return None


@contextmanager
def disk_full_as_error(default_path: Path) -> Iterator[None]:
    """Within the block, an error caused by a full disk is raised as a :class:`DiskFullError`.

    Other errors pass unchanged. ``default_path`` is named when no frame tells
    which file was being written (see :func:`as_disk_full`).
    """
    try:
        yield
    except Exception as e:
        full = as_disk_full(e, default_path)
        if full is None or full is e:
            raise
        raise full from e
