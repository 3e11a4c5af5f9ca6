"""``RUN_DIR/summary.json``: what one invocation of a run did, per stage and per block.

The driver writes it when a run ends, whether every block finished, some
failed or a signal (Ctrl-C, SIGTERM) stopped it (:func:`write_summary`);
``blockwise report`` renders it (:mod:`blockwise.report_html`, whose
:func:`~blockwise.report_html.load_summary` checks it). Schema::

    {
      "run": str, "run_dir": str, "profile": "in_process" | "local" | "slurm",
      "started_at": str, "ended_at": str,      # ISO 8601, UTC
      "wall_s": float,                         # the whole invocation
      "exit_status": "ok" | "failed" | "interrupted",
      "exit_code": int,                        # what `blockwise run` exits with: 0, 1,
                                               # or 128 + the signal that stopped it
      "stages": [
        {"name": str, "total": int, "done": int, "skipped": int, "failed": int, "blocked": int,
         "wall_s": float, "megavoxels": float, "mvox_per_s": float,
         "workers": int, "start_s": float | None, "end_s": float | None}
      ],
      "blocks": [
        {"stage": str, "block": int, "worker": str, "start_s": float, "end_s": float}
      ],
      "failures": [{"stage": str, "block": int, "write_roi": str, "error": str}],
      "messages": [str]
    }

Per stage, ``total/done/skipped/failed/blocked`` count blocks (``done`` ran
in this invocation, ``skipped`` were finished before, ``blocked`` never ran
because a block they need failed upstream), ``wall_s`` is the stage's wall
time, ``megavoxels`` the volume it covers and ``mvox_per_s`` the volume of
the blocks run in this invocation over ``wall_s``; ``workers`` is how many
workers the stage was given. ``start_s``/``end_s`` and the blocks' times are
seconds since the run started; ``start_s`` is None where nothing ran.

Per-block times come from :class:`BlockTimeLog`: each worker process appends
one JSON line per block it processed to its own file
``RUN_DIR/timings/STAGE/WORKER.jsonl`` (no two processes write one file), in
seconds since the epoch; the summary keeps the blocks of this invocation.
Workers on other nodes (SLURM) are placed on the driver's time line by their
own clocks, so their bars are as exact as the nodes' clock synchronisation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from blockwise.config import RunConfig
    from blockwise.runner import RunResult

logger = logging.getLogger(__name__)

SUMMARY_NAME = "summary.json"
TIMINGS_DIR = "timings"


def summary_path(run_dir: Path) -> Path:
    """Where a run's summary goes."""
    return run_dir / SUMMARY_NAME


def worker_name() -> str:
    """This process as a worker: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


class BlockTimeLog:
    """Appends when each block of one stage ran in this process (one JSON line per block).

    :meth:`record` only notes the times; the lines are written and flushed
    together at most every :attr:`FLUSH_S` seconds and when the log is closed
    (a worker ends, a stage's setup is left), so a block costs no system call.
    A worker killed with ``SIGKILL`` loses the times recorded since the last
    write, never a block's output.

    Args:
        run_dir: the run directory.
        stage: the stage's (daisy task's) name.
        worker: the worker's name; default :func:`worker_name`.
    """

    #: seconds between two writes (and flushes) of the log file
    FLUSH_S = 0.5

    def __init__(self, run_dir: Path, stage: str, worker: str | None = None) -> None:
        self.worker = worker or worker_name()
        self.path = run_dir / TIMINGS_DIR / stage / f"{self.worker.replace(':', '-')}.jsonl"
        self.stage = stage
        # opened at the first write and kept open: one write per flush, no open/close
        self._file: TextIO | None = None
        # never flushed: the first record is written at once (a monotonic clock may
        # start near zero, on a machine up for less than FLUSH_S)
        self._flushed = -math.inf
        #: block, start, end, block, start, end, ... of the blocks recorded since the
        #: last write (flat: numbers are not tracked by the garbage collector, tuples are)
        self._pending: list[float] = []
        #: a write failed: the file may end inside a line
        self._torn = False
        # the line's constant parts, JSON-encoded once
        self._head = f'{{"stage": {json.dumps(stage)}, "block": '
        self._middle = f', "worker": {json.dumps(self.worker)}, "start": '

    def record(self, block: int, start: float, end: float) -> None:
        """Record that ``block`` ran from ``start`` to ``end`` (seconds since the epoch).

        A failure to write is logged, never raised: timings must not fail a block.
        """
        self._pending += (block, start, end)
        if time.monotonic() - self._flushed >= self.FLUSH_S:
            self.flush()

    def flush(self) -> None:
        """Write the recorded lines and flush the file (a failure is logged, not raised)."""
        self._flushed = time.monotonic()
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        head, middle = self._head, self._middle
        text = "".join(
            f'{head}{int(block)}{middle}{start!r}, "end": {end!r}}}\n'
            for block, start, end in zip(pending[::3], pending[1::3], pending[2::3], strict=True)
        )
        if self._torn:  # end the torn line, so that it alone is skipped when read
            text = "\n" + text
        try:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("a", encoding="utf-8")
            self._file.write(text)
            self._file.flush()
            self._torn = False
        except OSError as e:
            logger.warning(
                "cannot record the times of %d %s block(s): %s", len(pending) // 3, self.stage, e
            )
            # drop what the file object still buffers; the next write reopens the file
            self._torn = True
            if self._file is not None:
                with contextlib.suppress(OSError):
                    self._file.close()
                self._file = None

    def close(self) -> None:
        """Write what is pending and close the log file (a later :meth:`record` opens it again)."""
        self.flush()
        if self._file is not None:
            try:
                self._file.close()
            except OSError as e:
                logger.warning("cannot close %s: %s", self.path, e)
            self._file = None


def read_block_times(run_dir: Path, since: float = 0.0) -> list[dict[str, Any]]:
    """Every recorded block that started at or after ``since`` (epoch seconds), by start.

    Lines that are not complete JSON records (a worker killed mid-write) are skipped.
    """
    root = run_dir / TIMINGS_DIR
    records = []
    for path in sorted(root.glob("*/*.jsonl")) if root.is_dir() else []:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
                start, end = float(entry["start"]), float(entry["end"])
                stage, block, worker = str(entry["stage"]), int(entry["block"]), entry["worker"]
            except (ValueError, KeyError, TypeError):
                continue
            if start >= since:
                record = {"stage": stage, "block": block, "worker": str(worker)}
                records.append({**record, "start": start, "end": end})
    return sorted(records, key=lambda r: (r["start"], r["stage"], r["block"]))


def stage_bounds(records: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Per stage, when its first block started and its last block ended (epoch seconds).

    Args:
        records: blocks as :func:`read_block_times` returns them.
    """
    bounds: dict[str, tuple[float, float]] = {}
    for r in records:
        start, end = bounds.get(r["stage"], (r["start"], r["end"]))
        bounds[r["stage"]] = (min(start, r["start"]), max(end, r["end"]))
    return bounds


def _stage_workers(config: RunConfig, name: str, total: int, in_process: bool) -> int:
    """Workers a stage (or one level of a stage run by levels) was given."""
    from blockwise.stage import stage_execution
    from blockwise.stages import STAGE_MODULES, get_stage

    if in_process or total <= 1:
        return 1
    base = name if name in STAGE_MODULES else name.rpartition("_level_")[0]
    if base in STAGE_MODULES:
        return stage_execution(config, get_stage(base)).num_workers
    return int(config.execution.num_workers)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def _exit_status(result: RunResult, interrupted: int | None) -> str:
    if interrupted is not None:
        return "interrupted"
    return "ok" if result.ok else "failed"


def _exit_code(result: RunResult, interrupted: int | None) -> int:
    if interrupted is not None:
        return 128 + interrupted
    return 0 if result.ok else 1


def build_summary(
    config: RunConfig,
    result: RunResult,
    started_monotonic: float,
    in_process: bool = False,
    timings: Mapping[str, Any] | None = None,
    interrupted: int | None = None,
    block_times: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The summary of a run that just ended (see the module docstring).

    Args:
        config: the run.
        result: what the runner returned.
        started_monotonic: ``time.monotonic()`` when the run started.
        in_process: whether blocks ran in the driver.
        timings: per stage an object with monotonic ``start``/``end`` (or None),
            e.g. :attr:`blockwise.progress.StageProgress.timings`; used for the
            stages without recorded block times.
        interrupted: the signal that stopped the run (SIGINT, SIGTERM), None
            if it ran to its end; its exit code is ``128 + signal``.
        block_times: the run's blocks as :func:`read_block_times` gives them
            (None: read here).
    """
    now_monotonic, now = time.monotonic(), time.time()
    started = now - (now_monotonic - started_monotonic)
    if block_times is None:
        block_times = read_block_times(config.run_dir, since=started)
    blocks = [
        {
            "stage": r["stage"],
            "block": r["block"],
            "worker": r["worker"],
            "start_s": r["start"] - started,
            "end_s": r["end"] - started,
        }
        for r in block_times
    ]
    bounds = stage_bounds(block_times)
    stages = []
    for s in result.stages:
        start_s: float | None = None
        end_s: float | None = None
        if s.name in bounds:
            first, last = bounds[s.name]
            start_s, end_s = first - started, last - started
        elif timings is not None and s.name in timings:
            timing = timings[s.name]
            if getattr(timing, "start", None) is not None and s.done:
                start_s = float(timing.start) - started_monotonic
                end = getattr(timing, "end", None)
                end_s = (float(end) if end is not None else now_monotonic) - started_monotonic
        stages.append(
            {
                "name": s.name,
                "total": s.total,
                "done": s.done,
                "skipped": s.skipped,
                "failed": s.failed,
                "blocked": s.blocked,
                "wall_s": float(s.wall_s),
                "megavoxels": float(s.megavoxels),
                "mvox_per_s": float(s.mvox_per_s),
                "workers": _stage_workers(config, s.name, s.total, in_process),
                "start_s": start_s,
                "end_s": end_s,
            }
        )
    return {
        "run": config.name,
        "run_dir": str(config.run_dir),
        "profile": "in_process" if in_process else config.execution.profile,
        "started_at": _iso(started),
        "ended_at": _iso(now),
        "wall_s": float(result.wall_s),
        "exit_status": _exit_status(result, interrupted),
        "exit_code": _exit_code(result, interrupted),
        "stages": stages,
        "blocks": blocks,
        "failures": [
            {"stage": f.stage, "block": f.block_index, "write_roi": f.write_roi, "error": f.error}
            for f in result.failures
        ],
        "messages": list(result.messages),
    }


def write_summary(
    config: RunConfig,
    result: RunResult,
    started_monotonic: float,
    in_process: bool = False,
    timings: Mapping[str, Any] | None = None,
    interrupted: int | None = None,
    block_times: list[dict[str, Any]] | None = None,
) -> Path | None:
    """Write ``RUN_DIR/summary.json`` (atomically) for a run that just ended.

    Arguments as :func:`build_summary`. A summary that cannot be written is
    logged, not raised: the run's outcome does not depend on it.

    Returns:
        The path written, or None if it could not be written.
    """
    path = summary_path(config.run_dir)
    tmp = path.with_suffix(".json.tmp")
    try:
        summary = build_summary(
            config, result, started_monotonic, in_process, timings, interrupted, block_times
        )
        # no indent: the C encoder (a run of 10^5 blocks lists every one of them)
        tmp.write_text(json.dumps(summary, separators=(",", ":")) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as e:
        # e.g. a full disk: no half-written temporary file stays behind
        tmp.unlink(missing_ok=True)
        logger.warning("cannot write the run summary %s: %s", path, e)
        return None
    logger.info("run summary: %s", path)
    return path
