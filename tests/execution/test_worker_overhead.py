"""What a worker does for every block beyond the stage's work: the lookup of an earlier failure.

:class:`~blockwise.failures.StageFailures` builds its paths once and answers
"no record" without raising; these tests check that it still sees every record
another worker wrote before daisy handed the block out again (a file, or a
reserved slot written on a full disk), whatever the looking worker read before.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from funlib.geometry import Coordinate, Roi

from blockwise import failures
from blockwise.errors import BlockFailedError, DiskFullError, InputError
from blockwise.run_context import RunContext
from blockwise.stage import Stage, StageBlock, Tiling, single_function
from blockwise.stage_worker import StageWorker

#: 4 x 4 x 4 blocks of 4^3 voxels (1 nm each)
DATA = Roi((0, 0, 0), (16, 16, 16))
BLOCK = Coordinate(4, 4, 4)


def block_roi(index: int) -> Roi:
    """The write (and read) ROI of block ``index`` of :data:`DATA`."""
    z, rest = divmod(index, 16)
    y, x = divmod(rest, 4)
    return Roi(Coordinate(z, y, x) * BLOCK, BLOCK)


class Blocks:
    """A stage's block function that notes each call and fails where told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        #: block index -> the error its next attempt raises (once)
        self.fail: dict[int, Exception] = {}

    def stage(self, worker: str) -> Stage:
        def run(ctx: Any, block: StageBlock) -> None:
            del ctx
            self.calls.append((worker, block.index))
            error = self.fail.pop(block.index, None)
            if error is not None:
                raise error

        return Stage(
            name="noop",
            sections=(),
            upstream=(),
            tiling=lambda ctx: Tiling(DATA, Coordinate(1, 1, 1), BLOCK),
            setup=single_function(run),
        )


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run directory as a run starts: no records, empty reserved slots."""
    run_dir = tmp_path / "run"
    failures.clear_all(run_dir)
    return run_dir


@pytest.fixture
def workers(run_dir: Path) -> Iterator[Callable[[Blocks, str], StageWorker]]:
    """Makes workers of the stage in this process (each stands for one worker process)."""
    made: list[StageWorker] = []

    def make(blocks: Blocks, name: str) -> StageWorker:
        ctx = cast(RunContext, SimpleNamespace(run_dir=run_dir))
        made.append(StageWorker(ctx, blocks.stage(name)))
        return made[-1]

    yield make
    for w in made:
        w.close()


def process(w: StageWorker, index: int) -> None:
    roi = block_roi(index)
    w.process(roi, roi)


def no_space(path: Path, data: str | bytes) -> None:
    """``write_atomic`` on a full disk."""
    del data
    raise DiskFullError(path)


def test_a_deterministic_failure_recorded_by_another_worker_is_not_retried(
    run_dir: Path, workers: Callable[[Blocks, str], StageWorker]
) -> None:
    blocks = Blocks()
    a, b = workers(blocks, "a"), workers(blocks, "b")
    process(b, 4)  # b has looked up records (and read the slots) before the failure
    blocks.fail[5] = InputError("NaN in the affinities")
    with pytest.raises(InputError):
        process(a, 5)
    (record,) = failures.read_failures(run_dir)
    assert (record.stage, record.block_index, record.is_deterministic) == ("noop", 5, True)
    assert record.write_roi == str(block_roi(5)) and "NaN" in record.traceback
    # daisy hands block 5 to b: it fails at once, without running the block
    with pytest.raises(BlockFailedError, match="noop block 5 not retried: InputError: NaN"):
        process(b, 5)
    assert blocks.calls == [("b", 4), ("a", 5)]
    assert [f.block_index for f in failures.read_failures(run_dir)] == [5]


def test_a_passing_failure_is_retried_by_another_worker_and_its_record_cleared(
    run_dir: Path, workers: Callable[[Blocks, str], StageWorker]
) -> None:
    blocks = Blocks()
    a, b = workers(blocks, "a"), workers(blocks, "b")
    process(b, 1)
    blocks.fail[9] = OSError("connection reset by the store")
    with pytest.raises(OSError):
        process(a, 9)
    (record,) = failures.read_failures(run_dir)
    assert record.block_index == 9 and not record.is_deterministic
    process(b, 9)  # the retry runs, succeeds and removes the record
    assert blocks.calls == [("b", 1), ("a", 9), ("b", 9)]
    assert failures.read_failures(run_dir) == []
    assert failures.read_failure(run_dir, "noop", 9) is None


def test_a_failure_in_a_reserved_slot_is_seen_after_the_slots_were_read(
    run_dir: Path, workers: Callable[[Blocks, str], StageWorker], monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = Blocks()
    a, b = workers(blocks, "a"), workers(blocks, "b")
    process(b, 2)  # b's read of the empty slots counts: it is cached
    process(b, 3)

    # the disk is full: a's block fails on it, and its record goes to a reserved slot
    monkeypatch.setattr(failures, "write_atomic", no_space)
    full = DiskFullError(run_dir / "output.zarr" / "fragments" / "0.0.1")
    blocks.fail[7] = full
    with pytest.raises(DiskFullError):
        process(a, 7)
    assert not (run_dir / failures.FAILURES_DIR / "noop").exists()  # no file: a slot
    (record,) = failures.read_failures(run_dir)
    assert record.block_index == 7 and record.error == f"disk full: {full.path}"
    with pytest.raises(BlockFailedError, match="noop block 7 not retried: disk full"):
        process(b, 7)
    assert blocks.calls == [("b", 2), ("b", 3), ("a", 7)]
    # the slot emptied (a later run's retry succeeded): b sees that too
    failures.clear_failure(run_dir, "noop", 7)
    process(b, 7)
    assert blocks.calls[-1] == ("b", 7)


def test_stage_failures_answers_for_its_own_stage_only(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    roi = block_roi(3)
    failures.record_failure(run_dir, "noop", 3, roi, roi, ValueError("bad"), "tb", False)
    failures.record_failure(run_dir, "other", 4, roi, roi, ValueError("worse"), "tb", True)
    monkeypatch.setattr(failures, "write_atomic", no_space)
    failures.record_failure(run_dir, "other", 5, roi, roi, DiskFullError(run_dir / "x"), "tb", True)
    lookup = failures.StageFailures(run_dir, "noop")
    by_key = {(f.stage, f.block_index): f for f in failures.read_failures(run_dir)}
    assert set(by_key) == {("noop", 3), ("other", 4), ("other", 5)}
    assert lookup.get(3) == by_key[("noop", 3)]
    assert [lookup.get(i) for i in (4, 5, 6)] == [None, None, None]
    other = failures.StageFailures(run_dir, "other")
    assert other.get(4) == by_key[("other", 4)] and other.get(5) == by_key[("other", 5)]
    assert other.get(3) is None


def test_a_new_runs_empty_slots_are_read_once_per_worker(
    run_dir: Path, workers: Callable[[Blocks, str], StageWorker], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the run just reserved its slots: a worker reads them at its first block, not at
    # every block of the run's first half second (256 KiB each time)
    slots = os.fspath(run_dir / failures.FAILURES_DIR / "reserved" / failures.SLOTS_FILE)
    opened: list[str] = []

    def counting_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(os.fspath(file))
        return open(file, *args, **kwargs)

    monkeypatch.setattr(failures, "open", counting_open, raising=False)
    failures._SLOTS_READ.clear()
    blocks = Blocks()
    a = workers(blocks, "a")
    for index in range(20):
        process(a, index)
    assert opened.count(slots) == 1
    # a slot written now is seen at the next lookup (its write changed the file)
    failures._update_slots(
        run_dir,
        "noop",
        30,
        failures.BlockFailure(
            stage="noop",
            block_index=30,
            read_roi="r",
            write_roi="w",
            error="disk full: x",
            traceback="",
            is_deterministic=True,
        ),
    )
    with pytest.raises(BlockFailedError, match="noop block 30 not retried"):
        process(a, 30)
    assert time.time() - os.stat(slots).st_mtime < 5  # the write dated it now


def test_a_block_id_that_disagrees_with_its_rois_falls_back_to_the_rois(
    run_dir: Path, workers: Callable[[Blocks, str], StageWorker], caplog: pytest.LogCaptureFixture
) -> None:
    from types import SimpleNamespace

    from blockwise.geometry import cantor_number

    def daisy_block(number: int, index: int) -> Any:
        roi = block_roi(index)
        return SimpleNamespace(block_id=("noop", number), read_roi=roi, write_roi=roi)

    blocks = Blocks()
    a, b = workers(blocks, "a"), workers(blocks, "b")
    a.process_daisy(daisy_block(cantor_number((1, 2, 3)), 16 + 8 + 3))  # agree: block 27
    # daisy's id names block 1 (position (0, 0, 1)), the ROIs block 5: the ROIs win, loudly
    with caplog.at_level("WARNING"):
        b.process_daisy(daisy_block(cantor_number((0, 0, 1)), 5))
    assert "daisy block id 1 names block 1 of noop, but its write ROI" in caplog.text
    assert "indexing blocks by their ROIs from here on" in caplog.text
    b.process_daisy(daisy_block(cantor_number((0, 0, 0)), 9))  # and from then on
    assert blocks.calls == [("a", 27), ("b", 5), ("b", 9)]


def test_a_new_run_does_not_see_the_slots_an_earlier_run_left_in_this_process(
    run_dir: Path,
) -> None:
    # a process that outlives a run (a notebook, in-process runs) read a record from
    # the slots; the next run reserves empty slots, and a clock as coarse as the file's
    # earlier stamp must not make the old read count
    slots = run_dir / failures.FAILURES_DIR / "reserved" / failures.SLOTS_FILE
    record = failures.BlockFailure(
        stage="noop", block_index=7, read_roi="r", write_roi="w", error="disk full: x",
        traceback="", is_deterministic=True,
    )  # fmt: skip
    assert failures._update_slots(run_dir, "noop", 7, record)
    stamp = os.stat(slots).st_mtime_ns - 10 * 10**9
    os.utime(slots, ns=(stamp, stamp))  # settled: the read below is cached
    assert failures.read_failure(run_dir, "noop", 7) == record
    failures.clear_all(run_dir)  # the next run
    os.utime(slots, ns=(stamp, stamp))  # a coarse clock gives the same stamp
    assert failures.read_failure(run_dir, "noop", 7) is None
