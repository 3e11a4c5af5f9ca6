"""Stage 6: score each segmentation against the ground truth; JSON report and plot."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from funlib.geometry import Roi

from blockwise.config import RunConfig
from blockwise.errors import ConfigError
from blockwise.evaluation import (
    DEFAULT_BLOCK_SHAPE_VX,
    DEFAULT_TOP_K,
    EvaluationResult,
    evaluate_many,
    write_run_evaluation,
)
from blockwise.layout import OUTPUT_ZARR, threshold_name
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


def evaluate(ctx: RunContext) -> dict[float, EvaluationResult]:
    """Every threshold's evaluation over the evaluation ROI, as ``blockwise evaluate`` computes it.

    The same code path as the command (:func:`blockwise.evaluation.evaluate_many`,
    the command's default block shape and number of worst objects), reading
    the ground truth once per block for all thresholds. Each result names its
    segmentation relative to the run directory (``output.zarr:segmentation/...``),
    so that reports of two run directories compare equal.
    """
    roi = evaluation_roi(ctx)
    assert ctx.ground_truth is not None  # checked by evaluation_roi
    thresholds = ctx.config.segments.thresholds
    segmentations = {threshold_name(t): ctx.segmentation(t) for t in thresholds}
    results = evaluate_many(
        segmentations, ctx.ground_truth, roi, DEFAULT_BLOCK_SHAPE_VX, DEFAULT_TOP_K
    )
    return {
        t: replace(
            results[threshold_name(t)],
            segmentation=f"{OUTPUT_ZARR}:{ctx.layout.segmentation_dataset(t)}",
        )
        for t in thresholds
    }


def run(ctx: RunContext) -> dict[str, Any]:
    """Evaluate, and write ``evaluation.json`` and its plot into the run directory.

    The JSON is :func:`blockwise.evaluation.run_evaluation_report` (one entry
    per threshold with the scores, and the worst split and merge objects that
    ``blockwise view --segments worst`` selects) plus the run's ``scoring``.
    """
    return write_run_evaluation(
        evaluate(ctx),
        ctx.config.name,
        ctx.layout.evaluation_json,
        ctx.layout.evaluation_png,
        scoring=ctx.config.agglomerate.scoring.model_dump(mode="json"),
    )


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
