"""Stage 5: score each segmentation against the ground truth; JSON report and plot."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from typing import Any

from funlib.geometry import Roi

from blockwise.config import RunConfig
from blockwise.errors import ConfigError
from blockwise.metrics import Contingency, scores
from blockwise.run_context import RunContext
from blockwise.stage import Stage, StageBlock, Tiling, single_function

logger = logging.getLogger(__name__)

NAME = "evaluate"


def evaluation_roi(ctx: RunContext) -> Roi:
    """The region scored: the configured evaluation ROI cut to the data.

    Raises:
        ConfigError: if there is no ground truth, or it does not cover the region.
    """
    if ctx.ground_truth is None:
        raise ConfigError("evaluate is enabled but inputs.ground_truth is not set")
    roi = ctx.data_roi
    if ctx.config.evaluate.roi is not None:
        wanted = Roi(ctx.config.evaluate.roi.offset_nm, ctx.config.evaluate.roi.shape_nm)
        roi = roi.intersect(wanted)
        if roi.empty:
            raise ConfigError(
                f"evaluate.roi {wanted} does not overlap the processed region {ctx.data_roi}"
            )
    if not ctx.ground_truth.roi.contains(roi):
        raise ConfigError(
            f"ground truth {ctx.ground_truth.name} covers {ctx.ground_truth.roi}, "
            f"which does not contain the evaluated region {roi}"
        )
    return roi


def evaluate(ctx: RunContext) -> dict[str, Any]:
    """Score every threshold's segmentation over the evaluation ROI, chunk by chunk."""
    roi = evaluation_roi(ctx)
    assert ctx.ground_truth is not None  # checked by evaluation_roi
    thresholds = ctx.config.segments.thresholds
    tables = {t: Contingency() for t in thresholds}
    for write_roi in ctx.grid.write_rois():
        chunk = write_roi.intersect(roi)
        if chunk.empty:
            continue
        gt = ctx.ground_truth.read(chunk)
        for t in thresholds:
            tables[t].add(gt, ctx.segmentation(t).read(chunk))
    results = []
    for t in thresholds:
        s = scores(tables[t])
        _, seg, _ = tables[t].table()
        results.append({"threshold": t, **asdict(s), "num_segments": len(set(seg.tolist()))})
        logger.info(
            "threshold %.3f: VOI split %.3f merge %.3f ARAND %.3f",
            t,
            s.voi_split,
            s.voi_merge,
            s.arand,
        )
    return {
        "run": ctx.config.name,
        "roi_nm": {"offset": list(roi.offset), "shape": list(roi.shape)},
        "ground_truth": ctx.ground_truth.name,
        "scoring": ctx.config.agglomerate.scoring.model_dump(mode="json"),
        "results": results,
    }


def plot(report: dict[str, Any], path: str) -> None:
    """Plot VOI split against VOI merge, one point per threshold, into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    merge = [r["voi_merge"] for r in results]
    split = [r["voi_split"] for r in results]
    ax.plot(merge, split, "o-")
    for r in results:
        ax.annotate(f"{r['threshold']:g}", (r["voi_merge"], r["voi_split"]), fontsize=8)
    ax.set_xlabel("VOI merge (bits)")
    ax.set_ylabel("VOI split (bits)")
    ax.set_title(f"{report['run']}: split vs merge over thresholds")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(ctx: RunContext) -> dict[str, Any]:
    """Evaluate, and write the JSON report and the PNG plot into the run directory."""
    report = evaluate(ctx)
    ctx.layout.evaluation_json.write_text(json.dumps(report, indent=2))
    plot(report, str(ctx.layout.evaluation_png))
    return report


def process_block(ctx: RunContext, block: StageBlock) -> None:
    """The one whole-volume block: the report."""
    del block
    run(ctx)


def tiling(ctx: RunContext) -> Tiling:
    """One block covering the evaluated region."""
    return Tiling(evaluation_roi(ctx), ctx.voxel_size)


def is_enabled(config: RunConfig) -> bool:
    """Evaluate runs when enabled and there is ground truth."""
    return config.evaluate.enabled and config.inputs.ground_truth is not None


def clear_outputs(ctx: RunContext) -> None:
    """Remove the report and its plot."""
    ctx.layout.evaluation_json.unlink(missing_ok=True)
    ctx.layout.evaluation_png.unlink(missing_ok=True)


STAGE = Stage(
    name=NAME,
    sections=("evaluate",),
    upstream=("relabel",),
    tiling=tiling,
    setup=single_function(process_block),
    is_enabled=is_enabled,
    inputs=("ground_truth",),
    clear_outputs=clear_outputs,
)
