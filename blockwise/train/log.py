"""The training log (JSON lines) and its loss-curve plot.

Each line of ``train_log.jsonl`` is one JSON object. Training steps:
``{"iteration", "loss", "kind" ("mse" or "malis"), "seconds", "lr"}``, where
``iteration`` counts the steps done including this one and ``seconds`` is the
step's wall time. Validations: ``{"iteration", "kind": "validation", "loss",
"voi_split", "voi_merge", "arand", "seconds"}``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

LOG_NAME = "train_log.jsonl"
_COLOURS = {"mse": "C0", "malis": "C3"}
PLOT_NAME = "loss_curve.png"


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of a training log; a torn last line (a killed run) is skipped."""
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("%s line %d is not JSON (torn write?); skipped", path, number)
    return records


def truncate_log(path: Path, iteration: int) -> None:
    """Keep only the records up to ``iteration`` (the checkpoint a resume starts from).

    Steps logged after the last checkpoint of a killed run are trained again,
    so their records are dropped to keep one record per iteration.
    """
    records = [r for r in read_log(path) if int(r["iteration"]) <= iteration]
    temp = path.with_suffix(".tmp")
    temp.write_text("".join(json.dumps(r) + "\n" for r in records))
    temp.replace(path)


class LogWriter:
    """Appends records to the log, one flushed line each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("a")

    def write(self, record: dict[str, Any]) -> None:
        """Append one record."""
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if values.size < window or window <= 1:
        return values
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def _runs(records: list[dict[str, Any]]) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    for kind in ("mse", "malis"):
        steps = [r for r in records if r.get("kind") == kind]
        if steps:
            yield (
                kind,
                np.array([r["iteration"] for r in steps], dtype=np.float64),
                np.array([r["loss"] for r in steps], dtype=np.float64),
            )


def plot_loss_curve(log_path: Path, png_path: Path, title: str = "") -> None:
    """Plot the training loss (raw and smoothed, one colour per loss kind) and validations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    fig, axes = plt.subplots(
        1,
        2 if any(r["kind"] == "validation" for r in records) else 1,
        figsize=(11, 4),
        squeeze=False,
    )
    ax = axes[0, 0]
    for kind, iterations, losses in _runs(records):
        colour = _COLOURS[kind]
        ax.plot(iterations, losses, alpha=0.25, linewidth=0.5, color=colour)
        window = max(1, min(50, losses.size // 10))
        smooth = _smooth(losses, window)
        ax.plot(
            iterations[window - 1 :] if window > 1 else iterations,
            smooth,
            color=colour,
            label=f"{kind} (mean of {window})",
        )
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(title or "training loss")
    validations = [r for r in records if r.get("kind") == "validation"]
    if validations:
        vx = [r["iteration"] for r in validations]
        vax = axes[0, 1]
        vax.plot(vx, [r["loss"] for r in validations], "o-", label="balanced MSE")
        vax.set_xlabel("iteration")
        vax.set_ylabel("validation balanced MSE")
        twin = vax.twinx()
        twin.plot(
            vx,
            [r["voi_split"] + r["voi_merge"] for r in validations],
            "s--",
            color="C3",
            label="VOI sum (threshold + CC)",
        )
        twin.set_ylabel("VOI split + merge (bits)")
        vax.set_title("validation (held-out ROI)")
    fig.tight_layout()
    temp = png_path.with_name(f".{png_path.stem}.tmp.png")
    fig.savefig(temp, dpi=100)
    plt.close(fig)
    temp.replace(png_path)
