"""One driver per run directory: an exclusive lock that a killed driver cannot leave stuck.

The lock is an ``flock`` on ``RUN_DIR/driver.lock``, held for the driver's life;
the kernel drops it when the process dies, however it dies. The file names the
holder (PID, host, start time) so that a refused driver can say who runs.
flock is reliable on local file systems; on network file systems that do not
support it, run one driver per run directory by other means.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from typing import IO

from blockwise.errors import RunLockedError


def holder(path: Path) -> str:
    """Who holds (or last held) the lock, as written in the lock file."""
    try:
        return path.read_text().strip() or "an unknown driver"
    except OSError:
        return "an unknown driver"


def is_locked(path: Path) -> bool:
    """Whether a live driver holds the lock (takes and drops it if free)."""
    if not path.exists():
        return False
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


class DriverLock:
    """The lock of one run directory, held from :meth:`acquire` to :meth:`release`.

    Args:
        path: the lock file (its directory must exist).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock or refuse at once.

        Raises:
            RunLockedError: naming the PID and host of the driver that holds it.
        """
        f = open(self.path, "a+")  # noqa: SIM115 - held open for the driver's life
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise RunLockedError(
                f"run directory {self.path.parent} is in use by another driver "
                f"({holder(self.path)}); wait for it to finish, or stop it, then run again"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(
            f"PID {os.getpid()} on host {socket.gethostname()} since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        )
        f.flush()
        self._file = f

    def release(self) -> None:
        """Drop the lock (also dropped by the kernel if the driver dies)."""
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> DriverLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
