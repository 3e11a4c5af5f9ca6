"""daisy's native multi-line warnings become one line each on the driver's stderr."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from blockwise.native_stderr import condensed_stderr

NATIVE = (
    " WARN spawn function failed worker_id=6 error=block processing failed: Traceback "
    "(most recent call last):\n"
    '  File "/x/daisy/_task.py", line 616, in wrapped\n'
    "    return orig(context=context)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^\n"
    "_WorkerExitError: daisy worker subprocess exited with code -15\n"
)
DRIVER_TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/x/blockwise/runner.py", line 1, in run\n'
    "ValueError: a driver bug stays visible\n"
)


def test_native_records_are_one_line_and_everything_else_passes(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "logs" / "driver_stderr.log"
    with condensed_stderr(log):
        os.write(2, b" WARN abort requested, exiting run loop\n")
        # a record arriving in pieces, as the pipe delivers it
        data = NATIVE.encode()
        os.write(2, data[:50])
        os.write(2, data[50:])
        os.write(2, b"2026-11-30 02:51:04,170 blockwise.summary INFO: run summary\n")
        os.write(2, DRIVER_TRACEBACK.encode())
        os.write(2, NATIVE.replace("worker_id=6", "worker_id=7").encode())
        os.write(2, b"no newline at the end")
    err = capfd.readouterr().err
    lines = err.splitlines()
    assert lines[0] == " WARN abort requested, exiting run loop"
    assert lines[1] == (
        " WARN spawn function failed worker_id=6 error=block processing failed: "
        "_WorkerExitError: daisy worker subprocess exited with code -15 "
        f"(full text: {log})"
    )
    assert lines[2].endswith("blockwise.summary INFO: run summary")
    # the driver's own traceback is untouched
    assert "\n".join(lines[3:6]) + "\n" == DRIVER_TRACEBACK
    assert lines[6].startswith(" WARN spawn function failed worker_id=7 error=block processing")
    assert lines[7] == "no newline at the end"
    assert len(lines) == 8
    # the full text of each shortened record (and the one-line ones) is in the log
    text = log.read_text()
    assert NATIVE in text and NATIVE.replace("worker_id=6", "worker_id=7") in text
    # fd 2 is the terminal's again
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


def test_a_progress_bar_line_passes_at_once(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # tqdm redraws one line with carriage returns and ends it only when it closes
    import time

    with condensed_stderr(tmp_path / "driver_stderr.log"):
        os.write(2, b"\r  extract_fragments:  50%|#####     | 28/56")
        deadline = time.monotonic() + 5
        seen = ""
        while "28/56" not in seen and time.monotonic() < deadline:
            time.sleep(0.05)
            seen += capfd.readouterr().err
        assert "28/56" in seen  # before the line ends and before the block is left
        os.write(2, b"\r  extract_fragments: 100%|##########| 56/56\n")
        os.write(2, NATIVE.encode())
    err = capfd.readouterr().err
    assert err.startswith("\r  extract_fragments: 100%|##########| 56/56\n"), err
    assert err.count("\n") == 2 and "_WorkerExitError" in err
