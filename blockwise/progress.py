"""Per-stage progress bars (blocks done, rate, ETA) and the end-of-run summary."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


@dataclass
class StageTiming:
    """When a stage started and finished processing blocks (monotonic seconds)."""

    start: float | None = None
    end: float | None = None

    @property
    def wall_s(self) -> float:
        """Seconds between the first block starting and the last one ending."""
        if self.start is None:
            return 0.0
        return (self.end if self.end is not None else time.monotonic()) - self.start


class StageProgress:
    """A daisy progress observer: one tqdm bar per stage, plus stage timings.

    Args:
        order: stage names in pipeline order.
        enabled: draw bars (timings are kept either way).
    """

    def __init__(self, order: list[str], enabled: bool = True) -> None:
        self.order = order
        self.enabled = enabled
        self.timings = {name: StageTiming() for name in order}
        self._bars: dict[str, Any] = {}
        self._last_update = time.monotonic()

    def _bar(self, name: str, total: int) -> Any:
        if name not in self._bars:
            from tqdm import tqdm

            self._bars[name] = tqdm(
                total=total,
                desc=f"{name:>17}",
                unit="block",
                leave=True,
                dynamic_ncols=True,
                mininterval=0.5,
                disable=not self.enabled,
            )
        return self._bars[name]

    #: seconds between two looks at daisy's states (it reports every block event,
    #: thousands a second on small blocks); stage times are as coarse as this
    MIN_INTERVAL_S = 0.05

    def _update(self, states: dict[str, Any], final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last_update < self.MIN_INTERVAL_S:
            return
        for name in self.order:
            if name not in states:
                continue
            state = states[name]
            total = int(state.total_block_count)
            settled = (
                int(state.completed_count) + int(state.failed_count) + int(state.orphaned_count)
            )
            timing = self.timings[name]
            if timing.start is None and settled > 0:
                # finished between two updates: it started after the previous one
                timing.start = self._last_update
            elif timing.start is None and int(state.processing_count) > 0:
                timing.start = now
            if timing.end is None and timing.start is not None and settled >= total:
                timing.end = now
            bar = self._bar(name, total)
            if settled > bar.n:
                bar.update(settled - bar.n)
            if int(state.failed_count):
                bar.set_postfix(failed=int(state.failed_count), refresh=False)
            if final:
                bar.close()
        self._last_update = now

    def on_start(self, states: dict[str, Any]) -> None:
        """Called by daisy when the run starts."""
        self._update(states)

    def on_progress(self, states: dict[str, Any]) -> None:
        """Called by daisy as blocks finish."""
        self._update(states)

    def on_finish(self, states: dict[str, Any]) -> None:
        """Called by daisy when the run ends."""
        self._update(states, final=True)


@dataclass(frozen=True)
class StageSummary:
    """The outcome of one stage in one run."""

    name: str
    total: int
    done: int
    skipped: int
    failed: int
    wall_s: float
    megavoxels: float
    #: blocks never run because a block they need failed upstream (daisy's orphans)
    blocked: int = 0

    @property
    def mvox_per_s(self) -> float:
        """Throughput over the stage's wall time (0 if nothing ran)."""
        ran = self.done
        if ran == 0 or self.wall_s <= 0:
            return 0.0
        return self.megavoxels * ran / max(self.total, 1) / self.wall_s


def format_summary(stages: list[StageSummary], wall_s: float) -> str:
    """The end-of-run table."""
    header = (
        f"{'stage':<18}{'blocks':>7}{'done':>7}{'skipped':>8}{'failed':>7}{'blocked':>8}"
        f"{'wall s':>9}{'MVox/s':>9}"
    )
    lines = ["", "Run summary", header, "-" * len(header)]
    for s in stages:
        lines.append(
            f"{s.name:<18}{s.total:>7}{s.done:>7}{s.skipped:>8}{s.failed:>7}{s.blocked:>8}"
            f"{s.wall_s:>9.1f}{s.mvox_per_s:>9.2f}"
        )
    lines.append(f"total wall time {wall_s:.1f} s")
    return "\n".join(lines)
