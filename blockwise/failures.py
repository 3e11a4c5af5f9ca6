"""Failed-block records: which block of which stage failed, where, and why.

A worker writes one JSON file per failed block (stage, block index, ROIs,
traceback) into the run directory and removes it when a retry of the block
succeeds, so the driver's summary lists exactly the blocks that stayed failed.

A block that failed because the disk is full usually cannot write a record
either. For those, each run starts with ``failures/reserved/disk_full.slots``:
:data:`SLOTS` fixed slots of :data:`SLOT_BYTES`, their disk blocks allocated
while there is space; a worker writes the record (without its traceback) into
a free slot under an exclusive ``flock``, which needs no new disk block.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from funlib.geometry import Roi

from blockwise.atomic import write_atomic
from blockwise.errors import DiskFullError, as_disk_full

FAILURES_DIR = "failures"
#: how the error of a block that failed for lack of disk space starts
DISK_FULL_PREFIX = "disk full: "
#: the file of reserved slots for records of blocks that failed on a full disk
SLOTS_FILE = "disk_full.slots"
#: bytes per slot (one JSON record, zero-padded) and slots per run
SLOT_BYTES = 1024
SLOTS = 256

logger = logging.getLogger(__name__)


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
    values, a corrupt chunk); a retry of such a block fails at once. A
    :class:`~blockwise.errors.DiskFullError` is recorded as ``disk full: PATH``.

    Raises:
        DiskFullError: if the record itself cannot be written for lack of space
            (no partial record or temporary file is left behind).
    """
    path = _path(run_dir, stage, block_index)
    message = f"{type(error).__name__}: {error}"
    if isinstance(error, DiskFullError):
        message = f"{DISK_FULL_PREFIX}{error.path}"
    record = BlockFailure(
        stage,
        block_index,
        str(read_roi),
        str(write_roi),
        message,
        traceback,
        is_deterministic,
    )
    try:
        write_atomic(path, json.dumps(asdict(record), indent=1))
    except DiskFullError:
        if isinstance(error, DiskFullError) and _write_slot(run_dir, record):
            return
        raise


def _slots_path(run_dir: Path) -> Path:
    # in a folder of its own: not a record of one block (readers list files)
    return run_dir / FAILURES_DIR / "reserved" / SLOTS_FILE


def _encode_slot(record: BlockFailure) -> bytes | None:
    """A record (without its traceback) as one slot's bytes; None if it cannot fit."""
    data = json.dumps(asdict(record) | {"traceback": ""}).encode()
    return data if len(data) < SLOT_BYTES else None


def _decode_slot(data: bytes) -> BlockFailure | None:
    """The record a slot holds (None if it is empty, or not a whole record)."""
    text = data.rstrip(b"\0")
    if not text:
        return None
    try:
        return BlockFailure(**json.loads(text))
    except (ValueError, TypeError):
        return None


def reserve_slots(run_dir: Path) -> None:
    """Give this run empty slots for records of blocks that fail on a full disk.

    Raises:
        DiskFullError: if the disk cannot hold them (it is full already).
    """
    path = _slots_path(run_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:  # truncated: every slot empty (zero bytes)
            os.posix_fallocate(f.fileno(), 0, SLOTS * SLOT_BYTES)
    except OSError as e:
        path.unlink(missing_ok=True)
        full = as_disk_full(e, path)
        if full is None:
            raise
        raise DiskFullError(path, full.reason) from None
    # what this process read of an earlier run's file is no answer for this one
    _SLOTS_READ.pop(os.fspath(path), None)
    # dated back: a worker trusts what it read of the file only when the read came
    # well after the file's last change (see _read_slots); a file changed just now
    # would be read again by every block of the run's first half second
    try:
        changed = os.stat(path).st_mtime_ns - _BACKDATE_NS
        os.utime(path, ns=(changed, changed))
    except OSError as e:  # a mount that refuses it: the reads only cost more
        logger.debug("cannot date %s back: %s", path, e)


def _update_slots(run_dir: Path, stage: str, block_index: int, record: BlockFailure | None) -> bool:
    """Put ``record`` into the block's slot (or a free one), or empty the block's slot.

    Returns:
        False if there is no slot file, or no free slot.
    """
    try:
        fd = os.open(_slots_path(run_dir), os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        data = os.pread(fd, SLOTS * SLOT_BYTES, 0)
        free = None
        for slot in range(len(data) // SLOT_BYTES):
            held = _decode_slot(data[slot * SLOT_BYTES : (slot + 1) * SLOT_BYTES])
            if held is None:
                free = slot if free is None else free
            elif (held.stage, held.block_index) == (stage, block_index):
                free = slot
                break
        if free is None:
            return False
        if record is None:
            if _decode_slot(data[free * SLOT_BYTES : (free + 1) * SLOT_BYTES]) is not None:
                os.pwrite(fd, bytes(SLOT_BYTES), free * SLOT_BYTES)
            return True
        encoded = _encode_slot(record)
        if encoded is None:
            return False
        # the slot's blocks are allocated: this write needs no free space
        os.pwrite(fd, encoded.ljust(SLOT_BYTES, b"\0"), free * SLOT_BYTES)
        return True
    finally:
        os.close(fd)


def _write_slot(run_dir: Path, record: BlockFailure) -> bool:
    """Record a disk-full failure in a reserved slot; False (and logged) if none is left."""
    try:
        written = _update_slots(run_dir, record.stage, record.block_index, record)
    except OSError as e:
        logger.error(
            "cannot record %s block %d in a reserved slot: %s", record.stage, record.block_index, e
        )
        return False
    if not written:
        logger.error(
            "no reserved slot left to record %s block %d (%s)",
            record.stage,
            record.block_index,
            record.error,
        )
    return written


#: per slots file: (its stat key, when it was read, the records it held)
_SLOTS_READ: dict[str, tuple[tuple[int, int, int, int], float, tuple[BlockFailure, ...]]] = {}
#: a cached read counts only when it came this long after the file's last change
#: (file systems stamp modification times with a coarse clock)
_SLOTS_SETTLED_S = 0.5
#: how far back a new (empty) slots file is dated: far beyond the settling time, and
#: before any time a write into it can stamp
_BACKDATE_NS = 10 * 10**9


def _read_slots(path: str) -> tuple[BlockFailure, ...]:
    """The records in the reserved slots file ``path``.

    Every block asks (is there a record for me?): the file is read again only
    when its size, inode or modification time changed since the last read, or
    that read came too soon after a change to trust the time stamp. One
    ``stat`` when nothing changed.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return ()
    # the change time too: a rewrite that a coarse clock stamps with an earlier
    # modification time still moves it
    key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    cached = _SLOTS_READ.get(path)
    if cached is not None and cached[0] == key and cached[1] - st.st_mtime > _SLOTS_SETTLED_S:
        return cached[2]
    now = time.time()
    with open(path, "rb") as f:
        data = f.read()
    # an empty slot is all zero bytes: its first byte tells (a record starts with "{")
    found = (
        _decode_slot(data[i : i + SLOT_BYTES]) for i in range(0, len(data), SLOT_BYTES) if data[i]
    )
    records = tuple(f for f in found if f is not None)
    _SLOTS_READ[path] = (key, now, records)
    return records


class StageFailures:
    """The failure records of one stage (one daisy task), looked up block by block.

    A worker asks before every block whether an earlier attempt of it failed
    (:meth:`get`), so the answer for a block without a record is kept cheap:
    one ``access`` of the block's record file and one ``stat`` of the reserved
    slots file, on paths built once. Nothing is cached between two lookups but
    the slots file's content (re-read when it changed), so a record that
    another worker wrote before daisy handed the block out again is always
    seen.

    Args:
        run_dir: the run directory.
        stage: the stage's (daisy task's) name.
    """

    def __init__(self, run_dir: Path, stage: str) -> None:
        self.run_dir = run_dir
        self.stage = stage
        # "RUN_DIR/failures/STAGE/block_": a block's record is this, its index and ".json"
        self._prefix = os.path.join(os.fspath(run_dir), FAILURES_DIR, stage, "block_")
        self._slots = os.fspath(_slots_path(run_dir))

    def get(self, block_index: int) -> BlockFailure | None:
        """The failure record of one block, if there is one (a file, or a reserved slot)."""
        path = f"{self._prefix}{block_index}.json"
        # access() answers "no record" without raising: the common case stays cheap
        if os.access(path, os.F_OK):
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except FileNotFoundError:  # removed since (a retry succeeded meanwhile)
                pass
            else:
                return BlockFailure(**json.loads(text))
        for held in _read_slots(self._slots):
            if held.block_index == block_index and held.stage == self.stage:
                return held
        return None

    def clear(self, block_index: int) -> None:
        """Remove the failure record of a block that has now succeeded."""
        clear_failure(self.run_dir, self.stage, block_index)


def read_failure(run_dir: Path, stage: str, block_index: int) -> BlockFailure | None:
    """The failure record of one block, if there is one (a file, or a reserved slot).

    A worker asking for every block of a stage uses :class:`StageFailures`.
    """
    return StageFailures(run_dir, stage).get(block_index)


def clear_failure(run_dir: Path, stage: str, block_index: int) -> None:
    """Remove the failure record of a block that has now succeeded."""
    _path(run_dir, stage, block_index).unlink(missing_ok=True)
    held = _read_slots(os.fspath(_slots_path(run_dir)))
    if any((f.stage, f.block_index) == (stage, block_index) for f in held):
        _update_slots(run_dir, stage, block_index, None)


def clear_all(run_dir: Path) -> None:
    """Forget every failure record and reserve empty slots (at the start of a run).

    Raises:
        DiskFullError: if the disk cannot hold the reserved slots.
    """
    root = run_dir / FAILURES_DIR
    if root.is_dir():
        for path in root.glob("*/*.json"):
            path.unlink()
    reserve_slots(run_dir)


def read_failures(run_dir: Path) -> list[BlockFailure]:
    """Every recorded failure (files and reserved slots), ordered by stage and block."""
    root = run_dir / FAILURES_DIR
    failures = [
        BlockFailure(**json.loads(path.read_text())) for path in sorted(root.glob("*/*.json"))
    ]
    filed = {(f.stage, f.block_index) for f in failures}
    held = _read_slots(os.fspath(_slots_path(run_dir)))
    failures += [f for f in held if (f.stage, f.block_index) not in filed]
    return sorted(failures, key=lambda f: (f.stage, f.block_index))
