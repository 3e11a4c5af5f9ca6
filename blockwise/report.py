"""Human-readable view of an evaluation report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


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


def format_evaluation(report: dict[str, Any]) -> str:
    """One evaluation result (``EvaluationResult.to_json()``) as text: scores and worst objects."""
    roi = report["roi_nm"]
    lines = [
        f"{report['segmentation']} against {report['ground_truth']}",
        f"ROI (nm) offset {roi['offset']} shape {roi['shape']}, voxel size "
        f"{report['voxel_size_nm']} nm, {report['num_voxels']} labelled voxels",
        f"VOI split {report['voi_split']:.4f}  VOI merge {report['voi_merge']:.4f}  "
        f"ARAND {report['arand']:.4f}  segments {report['num_segments']}  "
        f"bodies {report['num_bodies']}",
    ]
    for key, title in (
        ("split_errors", "worst splits (body)"),
        ("merge_errors", "worst merges (segment)"),
    ):
        objects = report.get(key) or []
        if not objects:
            continue
        lines.append(f"{title}: {'id':>20}{'bits':>9}{'voxels':>10}  centre (nm)  partners")
        for o in objects:
            centre = ",".join(f"{c:.0f}" for c in o["centre_nm"])
            partners = " ".join(str(p["id"]) for p in o["partners"])
            lines.append(
                f"{'':{len(title) + 2}}{o['id']:>20}{o['bits']:>9.4f}{o['size_vx']:>10}  "
                f"{centre}  {partners} ({o['num_partners']} in all)"
            )
    return "\n".join(lines)
