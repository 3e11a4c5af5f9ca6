"""One line per record from daisy's native core on the driver's terminal.

daisy's scheduler (Rust) writes its warnings straight to file descriptor 2,
past Python's ``logging``; a worker slot that dies (a signal to the whole
process group, a crash) arrives as a ``WARN ... error=...`` record followed
by a Python traceback, one per slot: a traceback wall on the terminal of a
run that was merely interrupted. :func:`condensed_stderr` routes fd 2
through a pipe while the scheduler runs: each native record is shortened to
one line (its first line up to the traceback, plus the exception that ends
it), and the full text is appended to a log file in the run directory.
Everything else written to fd 2 (Python logging, tracebacks of the driver
itself) passes through unchanged.
"""

from __future__ import annotations

import os
import re
import select
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: the first line of a record of daisy's native logger (tracing's compact format)
NATIVE_RECORD = re.compile(r"^\s*(TRACE|DEBUG|INFO|WARN|ERROR) \S")
#: the last line of a Python traceback: ``module.ExceptionType: message``
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit|Warning)\b.*")
LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR")
#: seconds without output after which a pending native record is written
FLUSH_AFTER_S = 0.2


class _Condenser:
    """Reads what is written to fd 2 and writes it, condensed, to the real stderr."""

    def __init__(self, read_fd: int, stop_fd: int, out_fd: int, log_path: Path) -> None:
        self.read_fd = read_fd
        self.stop_fd = stop_fd
        self.out_fd = out_fd
        self.log_path = log_path
        self.pending: list[str] = []  # the native record being read
        self.native = False  # whether the lines now arriving belong to a native record

    def _write(self, text: str) -> None:
        data = text.encode("utf-8", "replace")
        while data:
            written = os.write(self.out_fd, data)
            data = data[written:]

    def _log(self, lines: list[str]) -> None:
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("a", encoding="utf-8") as f:
                f.writelines(lines)
        except OSError:
            pass  # the terminal line is written regardless

    def _flush_record(self) -> None:
        if not self.pending:
            return
        lines, self.pending = self.pending, []
        self._log(lines)
        first = lines[0].rstrip("\n")
        cut = first.find("Traceback (most recent call last)")
        if cut < 0:
            self._write(first + "\n")
            return
        ending = [line.strip() for line in lines[1:] if EXCEPTION_LINE.match(line)]
        cause = ending[-1] if ending else "traceback"
        self._write(f"{first[:cut]}{cause} (full text: {self.log_path})\n")

    def _line(self, line: str) -> None:
        if NATIVE_RECORD.match(line):
            self._flush_record()
            self.native = True
            self.pending.append(line)
        elif self.native and (line[:1] in (" ", "\t", "\n") or EXCEPTION_LINE.match(line)):
            self.pending.append(line)
        else:
            self._flush_record()
            self.native = False
            self._write(line)

    def _may_begin_record(self, partial: str) -> bool:
        """Whether a line that has only begun could still be a native record's first line."""
        if NATIVE_RECORD.match(partial):
            return True
        head = partial.lstrip(" ")
        return not head or any(level.startswith(head.split(" ")[0]) for level in LEVELS)

    def run(self) -> None:
        """Until the pipe ends or a stop is asked for (then what is already there is read).

        Whole lines are classified as they come; a line that has only begun is
        passed through at once unless it may begin a native record (progress
        bars redraw one line with carriage returns and never end it).
        """
        buffer = b""
        passing = False  # inside a line passed through as it comes
        stopping = False
        while True:
            ready, _, _ = select.select(
                [self.read_fd, self.stop_fd], [], [], 0 if stopping else FLUSH_AFTER_S
            )
            if self.stop_fd in ready:
                stopping = True
            if self.read_fd not in ready:
                self._flush_record()
                self.native = False
                if buffer:  # a begun line that stayed unfinished: let it out
                    self._write(buffer.decode("utf-8", "replace"))
                    buffer, passing = b"", True
                if stopping:
                    break
                continue
            chunk = os.read(self.read_fd, 65536)
            if not chunk:
                break
            buffer += chunk
            while buffer:
                end = buffer.find(b"\n")
                if passing:
                    upto = len(buffer) if end < 0 else end + 1
                    self._write(buffer[:upto].decode("utf-8", "replace"))
                    buffer, passing = buffer[upto:], end < 0
                    continue
                if end >= 0:
                    self._line(buffer[: end + 1].decode("utf-8", "replace"))
                    buffer = buffer[end + 1 :]
                    continue
                partial = buffer.decode("utf-8", "replace")
                if self.native or self._may_begin_record(partial):
                    break  # wait for the rest of the line
                self._flush_record()
                self._write(partial)
                buffer, passing = b"", True
        if buffer:
            self._line(buffer.decode("utf-8", "replace"))
        self._flush_record()


@contextmanager
def condensed_stderr(log_path: Path) -> Iterator[None]:
    """Within the block, shorten daisy's native multi-line records on fd 2 to one line each.

    Args:
        log_path: where the full text of every shortened record is appended.
    """
    saved = os.dup(2)
    read_fd, write_fd = os.pipe()
    stop_read, stop_write = os.pipe()
    condenser = _Condenser(read_fd, stop_read, saved, log_path)

    def serve() -> None:
        try:
            condenser.run()
        except Exception:  # never lose the terminal: pass what is there through raw
            os.set_blocking(read_fd, False)
            try:
                while chunk := os.read(read_fd, 65536):
                    os.write(saved, chunk)
            except OSError:
                pass

    thread = threading.Thread(target=serve, name="stderr-condenser", daemon=True)
    thread.start()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        # a process started inside the block may still hold the pipe: stop the
        # reader explicitly once it has read what is there
        os.write(stop_write, b"x")
        thread.join(timeout=5)
        for fd in (read_fd, stop_read, stop_write, saved):
            os.close(fd)
