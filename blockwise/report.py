"""Human-readable view of an evaluation report."""

from __future__ import annotations

import json
from pathlib import Path


def format_report(path: Path) -> str:
    """The evaluation report at ``path`` as a table, one row per threshold."""
    report = json.loads(path.read_text())
    lines = [
        "",
        f"Evaluation of {report['run']} against {report['ground_truth']}",
        f"ROI (nm) offset {report['roi_nm']['offset']} shape {report['roi_nm']['shape']}",
        f"{'threshold':>10}{'VOI split':>11}{'VOI merge':>11}{'VOI sum':>9}"
        f"{'ARAND':>8}{'segments':>10}",
    ]
    for r in report["results"]:
        lines.append(
            f"{r['threshold']:>10.3f}{r['voi_split']:>11.3f}{r['voi_merge']:>11.3f}"
            f"{r['voi_split'] + r['voi_merge']:>9.3f}{r['arand']:>8.3f}{r['num_segments']:>10}"
        )
    lines.append(f"report: {path}  plot: {path.with_suffix('.png')}")
    return "\n".join(lines)
