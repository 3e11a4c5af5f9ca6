"""A run's report as one static HTML file (``RUN_DIR/report.html``).

The page needs no server and no network: figures are inlined as base64 PNG
and styles are inline. :func:`write_report` reads whatever the run directory
holds and renders each part that exists:

- ``config.yaml`` (the resolved config): the run's name and inputs.
- ``summary.json``, written by the driver when a run ends; its schema is
  documented in :mod:`blockwise.summary`, and :data:`SUMMARY_SCHEMA` lists
  the keys this page needs (older summaries without the optional keys still
  render). Rendered as the run's start, end and exit status, a per-stage
  table (blocks total/done/skipped/failed/blocked, wall time, MVox, MVox/s, workers)
  and a blocks-over-time plot: one row per worker and a bar per block where
  block times were recorded, else one bar per stage from its first block's
  start to its last block's end.
- ``evaluation.json`` / ``evaluation.png``: the scores table (one row per
  threshold, or the single result of ``blockwise evaluate``), the worst split
  and merge objects and the plot.
- the training loss curve, when the config's ``predict.checkpoint`` has a
  JSON-lines log beside it (:func:`loss_log_path`): one ``{"iteration": int,
  "loss": float}`` object per line.
- ``failures/``: one record per failed block; ``logs/``: the last lines of
  each worker log.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from blockwise.errors import InputError
from blockwise.summary import SUMMARY_NAME

logger = logging.getLogger(__name__)

REPORT_NAME = "report.html"
# the keys each stage and block entry must have; ``mvox_per_s``, ``workers``,
# ``start_s`` and ``end_s`` of a stage are optional (see blockwise.summary)
SUMMARY_SCHEMA: dict[str, Any] = {
    "stages": [
        {
            "name": "str",
            "total": "int",
            "done": "int",
            "skipped": "int",
            "failed": "int",
            "wall_s": "float",
            "megavoxels": "float",
        }
    ],
    "blocks": [
        {"stage": "str", "block": "int", "worker": "str|int", "start_s": "float", "end_s": "float"}
    ],
}
# names tried, in order, for a checkpoint's training log (JSON lines of {iteration, loss})
LOSS_LOG_NAMES = ("training_log.jsonl", "log.jsonl", "loss.jsonl")
LOG_TAIL_LINES = 15
MAX_LOG_FILES = 50
MAX_FAILURES = 50

_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1100px; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f0f0f0; } td.l, th.l { text-align: left; }
pre { background: #f6f6f6; padding: 0.5em; overflow-x: auto; font-size: 0.85em; }
img { max-width: 100%; border: 1px solid #ddd; }
.missing { color: #888; font-style: italic; }
"""


def _esc(value: object) -> str:
    return html.escape(str(value))


def _png_tag(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _figure_png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _table(headers: list[str], rows: Iterable[list[Any]], left: int = 1) -> str:
    head = "".join(
        f'<th class="{"l" if i < left else ""}">{_esc(h)}</th>' for i, h in enumerate(headers)
    )
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="{"l" if i < left else ""}">{_esc(c)}</td>' for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {path}: {e}") from None


def load_summary(path: Path) -> dict[str, Any]:
    """Read and check a ``summary.json`` (schema in the module docstring).

    Raises:
        InputError: if the file is unreadable or a stage/block lacks a key.
    """
    summary = _read_json(path)
    if not isinstance(summary, dict):
        raise InputError(f"{path} is not a JSON object; expected {{'stages': [...], ...}}")
    for key, schema in (
        ("stages", SUMMARY_SCHEMA["stages"][0]),
        ("blocks", SUMMARY_SCHEMA["blocks"][0]),
    ):
        for i, entry in enumerate(summary.get(key, [])):
            missing = [k for k in schema if k not in entry]
            if missing:
                raise InputError(
                    f"{path}: {key}[{i}] lacks {missing}; expected keys {list(schema)}"
                )
    return summary


def stage_spans(stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One pseudo-block per stage that ran, from its ``start_s`` to its ``end_s``.

    For summaries without per-block times: :func:`blocks_plot` then draws one
    row per stage.
    """
    return [
        {
            "stage": s["name"],
            "block": 0,
            "worker": s["name"],
            "start_s": float(s["start_s"]),
            "end_s": float(s["end_s"]),
        }
        for s in stages
        if s.get("start_s") is not None and s.get("end_s") is not None
    ]


def blocks_plot(blocks: list[dict[str, Any]], row_label: str = "worker") -> bytes:
    """PNG: one row per worker, a bar per block from its start to its end, coloured by stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workers = sorted({str(b["worker"]) for b in blocks})
    stages = list(dict.fromkeys(str(b["stage"]) for b in blocks))
    colours = plt.get_cmap("tab10")
    # tall enough for one row per worker and one legend entry per stage
    fig, ax = plt.subplots(figsize=(10, 0.8 + 0.3 * max(len(workers), len(stages), 2)), dpi=100)
    for s, stage in enumerate(stages):
        for w, worker in enumerate(workers):
            spans = [
                (float(b["start_s"]), float(b["end_s"]) - float(b["start_s"]))
                for b in blocks
                if str(b["stage"]) == stage and str(b["worker"]) == worker
            ]
            if spans:
                ax.broken_barh(
                    spans,
                    (w - 0.4, 0.8),
                    facecolors=colours(s % 10),
                    edgecolor="white",
                    linewidth=0.3,
                    label=stage
                    if w
                    == min(
                        i
                        for i, wk in enumerate(workers)
                        if any(str(b["worker"]) == wk and str(b["stage"]) == stage for b in blocks)
                    )
                    else None,
                )
    ax.set_yticks(range(len(workers)), workers, fontsize=8)
    ax.set_xlabel("seconds since the run started")
    ax.set_ylabel(row_label)
    ax.set_title(f"blocks over time per {row_label}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return _figure_png(fig)


def loss_plot(points: list[tuple[int, float]]) -> bytes:
    """PNG of the training loss over iterations (log scale when all losses are positive)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    ax.plot([p[0] for p in points], [p[1] for p in points], lw=1)
    if all(p[1] > 0 for p in points):
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title("training loss")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _figure_png(fig)


def loss_log_path(checkpoint: Path) -> Path | None:
    """The JSON-lines training log of a checkpoint, if there is one.

    Tried in order: ``CHECKPOINT.jsonl`` (same stem), then
    :data:`LOSS_LOG_NAMES` in the checkpoint's folder.
    """
    candidates = [checkpoint.with_suffix(".jsonl")]
    candidates += [checkpoint.parent / name for name in LOSS_LOG_NAMES]
    return next((c for c in candidates if c.is_file()), None)


def read_loss_log(path: Path) -> list[tuple[int, float]]:
    """``(iteration, loss)`` pairs of a JSON-lines log; lines without both keys are skipped.

    Raises:
        InputError: if a line is not JSON.
    """
    points = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{number} is not JSON: {e}") from None
        if isinstance(entry, dict) and "iteration" in entry and "loss" in entry:
            points.append((int(entry["iteration"]), float(entry["loss"])))
    return points


def _section_config(config: dict[str, Any] | None) -> str:
    if config is None:
        return '<p class="missing">no config.yaml in the run directory</p>'
    inputs = config.get("inputs") or {}
    rows = []
    for key in ("raw", "affinities", "ground_truth", "mask"):
        entry = inputs.get(key)
        if isinstance(entry, dict):
            rows.append([key, f"{entry.get('file')}:{entry.get('dataset')}"])
    if inputs.get("voxel_size"):
        rows.append(["voxel size (nm)", inputs["voxel_size"]])
    return _table(["input", "value"], rows, left=2) if rows else ""


def _section_summary(run_dir: Path) -> str:
    path = run_dir / SUMMARY_NAME
    if not path.exists():
        return f'<p class="missing">no {SUMMARY_NAME} (written at the end of a run)</p>'
    summary = load_summary(path)
    parts = []
    if "exit_status" in summary:
        parts.append(
            f"<p>{_esc(summary.get('profile', ''))} run from {_esc(summary.get('started_at'))} "
            f"to {_esc(summary.get('ended_at'))} ({float(summary.get('wall_s', 0.0)):.1f} s): "
            f"<b>{_esc(summary['exit_status'])}</b> (exit code "
            f"{_esc(summary.get('exit_code', ''))})</p>"
        )
    rows = []
    stages = summary.get("stages", [])
    for stage in stages:
        wall = float(stage["wall_s"])
        mvox = float(stage["megavoxels"])
        if "mvox_per_s" in stage:
            rate = f"{float(stage['mvox_per_s']):.2f}"
        else:
            rate = f"{mvox / wall:.2f}" if wall > 0 else "-"
        rows.append(
            [
                stage["name"],
                stage["total"],
                stage["done"],
                stage["skipped"],
                stage["failed"],
                stage.get("blocked", "-"),
                f"{wall:.1f}",
                f"{mvox:.2f}",
                rate,
                stage.get("workers", "-"),
            ]
        )
    headers = [
        "stage",
        "blocks",
        "done",
        "skipped",
        "failed",
        "blocked",
        "wall (s)",
        "MVox",
        "MVox/s",
    ]
    parts.append(_table([*headers, "workers"], rows))
    blocks = summary.get("blocks", [])
    if blocks:
        parts.append(_png_tag(blocks_plot(blocks), "blocks over time per worker"))
    elif spans := stage_spans(stages):
        parts.append(
            '<p class="missing">no per-block times recorded: one bar per stage</p>'
            + _png_tag(blocks_plot(spans, row_label="stage"), "blocks over time per stage")
        )
    for message in summary.get("messages", []):
        parts.append(f"<p>{_esc(message)}</p>")
    return "".join(parts)


def _evaluation_rows(report: dict[str, Any]) -> tuple[list[str], list[list[object]]]:
    results = report.get("results")
    if results is None:
        results = [report]
    headers = ["segmentation", "VOI split", "VOI merge", "VOI sum", "ARAND", "segments"]
    rows = []
    for r in results:
        name = f"threshold {r['threshold']:g}" if "threshold" in r else r.get("segmentation", "")
        rows.append(
            [
                name,
                f"{r['voi_split']:.4f}",
                f"{r['voi_merge']:.4f}",
                f"{r['voi_split'] + r['voi_merge']:.4f}",
                f"{r['arand']:.4f}",
                r.get("num_segments", ""),
            ]
        )
    return headers, rows


def _worst_tables(report: dict[str, Any]) -> str:
    results = report.get("results") or [report]
    parts = []
    for r in results:
        label = f"threshold {r['threshold']:g}" if "threshold" in r else r.get("segmentation", "")
        for key, what, partner in (
            ("split_errors", "split bodies", "largest segments"),
            ("merge_errors", "merging segments", "largest bodies"),
        ):
            objects = r.get(key) or []
            if not objects:
                continue
            rows = [
                [
                    o["id"],
                    f"{o['bits']:.4f}",
                    o["size_vx"],
                    ", ".join(f"{c:.0f}" for c in o["centre_nm"]),
                    ", ".join(f"{p['id']} ({p['voxels']})" for p in o.get("partners", [])),
                ]
                for o in objects
            ]
            parts.append(f"<h3>{_esc(label)}: worst {what}</h3>")
            parts.append(
                _table(["id", "bits", "voxels", "centre (nm, z, y, x)", partner], rows, left=1)
            )
    return "".join(parts)


def _section_evaluation(run_dir: Path) -> str:
    path = run_dir / "evaluation.json"
    png = run_dir / "evaluation.png"
    if not path.exists():
        return '<p class="missing">not evaluated (no evaluation.json)</p>'
    report = _read_json(path)
    headers, rows = _evaluation_rows(report)
    parts = []
    if "roi_nm" in report:
        roi = report["roi_nm"]
        parts.append(
            f"<p>against {_esc(report.get('ground_truth', '?'))}, ROI offset "
            f"{_esc(roi['offset'])} shape {_esc(roi['shape'])} nm</p>"
        )
    parts.append(_table(headers, rows))
    if png.exists():
        parts.append(_png_tag(png.read_bytes(), "evaluation plot"))
    parts.append(_worst_tables(report))
    return "".join(parts)


def _section_training(config: dict[str, Any] | None, run_dir: Path) -> str:
    predict = (config or {}).get("predict") or {}
    checkpoint = predict.get("checkpoint")
    if not checkpoint:
        return '<p class="missing">no checkpoint referenced (affinities predicted elsewhere)</p>'
    path = Path(os.path.expandvars(str(checkpoint))).expanduser()
    if not path.is_absolute():
        path = run_dir / path
    log = loss_log_path(path)
    if log is None:
        return f'<p class="missing">checkpoint {_esc(path)} has no training log beside it</p>'
    points = read_loss_log(log)
    if not points:
        return f'<p class="missing">{_esc(log)} holds no {{iteration, loss}} entries</p>'
    return (
        f"<p>checkpoint {_esc(path)}; log {_esc(log)}: {len(points)} points, last loss "
        f"{points[-1][1]:.4g} at iteration {points[-1][0]}</p>"
        + _png_tag(loss_plot(points), "training loss")
    )


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        return f"(unreadable: {e})"
    return "\n".join(text.splitlines()[-lines:])


def _section_files(run_dir: Path) -> str:
    parts = []
    failures = run_dir / "failures"
    records = sorted(p for p in failures.glob("*") if p.is_file()) if failures.is_dir() else []
    parts.append(f"<h3>failed blocks: {len(records)}</h3>")
    for record in records[:MAX_FAILURES]:
        parts.append(
            f"<details><summary>{_esc(record.name)}</summary><pre>"
            f"{_esc(_tail(record, 200))}</pre></details>"
        )
    logs = run_dir / "logs"
    files = sorted(p for p in logs.rglob("*") if p.is_file()) if logs.is_dir() else []
    parts.append(f"<h3>worker logs: {len(files)}</h3>")
    for log in files[:MAX_LOG_FILES]:
        parts.append(
            f"<details><summary>{_esc(log.relative_to(run_dir))} ({log.stat().st_size} bytes)"
            f"</summary><pre>{_esc(_tail(log, LOG_TAIL_LINES))}</pre></details>"
        )
    return "".join(parts)


def render_report(run_dir: Path) -> str:
    """The report page of ``run_dir`` as HTML text (see the module docstring).

    Raises:
        InputError: if ``run_dir`` is not a directory, or a file it holds is
            malformed (named in the message).
    """
    if not run_dir.is_dir():
        raise InputError(f"run directory {run_dir} does not exist")
    config_path = run_dir / "config.yaml"
    config: dict[str, Any] | None = None
    if config_path.exists():
        try:
            loaded = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read {config_path}: {e}") from None
        config = loaded if isinstance(loaded, dict) else None
    name = (config or {}).get("name", run_dir.name)
    sections = [
        ("Run", _section_config(config)),
        ("Stages", _section_summary(run_dir)),
        ("Evaluation", _section_evaluation(run_dir)),
        ("Training", _section_training(config, run_dir)),
        ("Failures and logs", _section_files(run_dir)),
    ]
    body = "".join(f"<h2>{_esc(title)}</h2>{content}" for title, content in sections)
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>blockwise run {_esc(name)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>blockwise run {_esc(name)}</h1><p>{_esc(run_dir)}</p>{body}</body></html>\n"
    )


def write_report(run_dir: Path) -> Path:
    """Write ``RUN_DIR/report.html`` and return its path.

    Raises:
        InputError: see :func:`render_report`.
    """
    path = run_dir / REPORT_NAME
    path.write_text(render_report(run_dir), encoding="utf-8")
    logger.info("report: %s", path)
    return path
