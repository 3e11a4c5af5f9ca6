"""Stage 3 of ``segments.method: hierarchical``: exact mean-affinity merging over an octree.

The stage runs as one daisy task per octree level over the extract_fragments
grid (:attr:`~blockwise.stage.Stage.levels`): a level-``L`` block is the
octree node covering ``2**L`` leaf blocks per axis, and daisy starts it once
the blocks of level ``L - 1`` it covers (its children) are done. A task holds
only its children's residual graphs (frozen clusters and the edges among
them) and the fragment edges whose lowest common ancestor (LCA) it is, reads
them from files agglomerate and the children wrote, merges every safe
mutually-best pair (:func:`blockwise.hierarchical.run_task`) and writes its
merge records and residual to ``hierarchy/tasks/level_L/node_N.npz``
(atomically; a retried task writes the same bytes). The root freezes
nothing, so all records together are the greedy mean-affinity agglomeration
of the whole region graph up to the largest threshold; find_segments turns
them into one lookup table per threshold.

Files read: ``hierarchy/leaves/block_K.npz`` (a leaf's fragments and their
levels) and ``hierarchy/edges/level_L/block_K.npz`` (the edges block ``K``
owns whose LCA is on level ``L``), both written by agglomerate.
"""

from __future__ import annotations

import logging
import shutil
from functools import cache

import numpy as np
from funlib.geometry import Coordinate

from blockwise.errors import StoreError
from blockwise.hierarchical import (
    Residual,
    leaf_residual,
    load_task_result,
    read_arrays,
    run_task,
    save_task_result,
    write_arrays,
)
from blockwise.kernels.mean_merge import ClusterEdges, fragment_edge_keys, merge_bound
from blockwise.layout import RunLayout
from blockwise.octree import Octree
from blockwise.run_context import RunContext
from blockwise.stage import Stage, StageBlock, Tiling, single_function

logger = logging.getLogger(__name__)

NAME = "hierarchy"

LEAF_ARRAYS = ("ids", "levels")
SEAM_ARRAYS = ("u", "v", "s", "n", "forced")


@cache
def _octree(grid_shape: tuple[int, int, int]) -> Octree:
    return Octree(grid_shape)


def octree_of(ctx: RunContext) -> Octree:
    """The octree over the run's extract_fragments grid (the leaves)."""
    return _octree(tuple(int(g) for g in ctx.grid.grid_shape))


def save_leaf(layout: RunLayout, block: int, ids: np.ndarray, levels: np.ndarray) -> None:
    """Write a leaf block's fragment ids and levels (agglomerate)."""
    write_arrays(
        layout.leaf_path(block),
        {"ids": ids.astype(np.uint64), "levels": levels.astype(np.uint8)},
    )


def save_seams(
    layout: RunLayout,
    block: int,
    edge_levels: np.ndarray,
    columns: dict[str, np.ndarray],
    n_levels: int,
) -> None:
    """Write the edges block ``block`` owns, one file per LCA level (agglomerate).

    A level without edges gets no file; stale files of an earlier attempt are removed.
    """
    for level in range(n_levels):
        rows = edge_levels == level
        path = layout.seam_path(level, block)
        if not rows.any():
            path.unlink(missing_ok=True)
            continue
        write_arrays(path, {name: columns[name][rows] for name in SEAM_ARRAYS})


def seam_edges(
    ctx: RunContext, octree: Octree, level: int, node: int
) -> tuple[ClusterEdges, np.ndarray]:
    """The fragment edges whose LCA is ``node``, with their forced flags.

    They are the level-``level`` edges owned by the leaf blocks under ``node``.
    """
    coords = octree.node_coords([node])[0]
    begin = coords * 2**level
    end = np.minimum(begin + 2**level, octree.grid_shape)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SEAM_ARRAYS}
    grid = np.stack(
        np.meshgrid(*(np.arange(b, e) for b, e in zip(begin, end, strict=True)), indexing="ij"),
        axis=-1,
    ).reshape(-1, 3)
    for block in octree.block_index(grid).tolist():
        path = ctx.layout.seam_path(level, block)
        if not path.exists():
            continue
        arrays = read_arrays(path, SEAM_ARRAYS)
        for name in SEAM_ARRAYS:
            parts[name].append(arrays[name])
    if not parts["u"]:
        return ClusterEdges.empty(), np.zeros(0, dtype=bool)
    u = np.concatenate(parts["u"]).astype(np.uint64)
    v = np.concatenate(parts["v"]).astype(np.uint64)
    tau_hi, tau_lo = fragment_edge_keys(u, v)
    edges = ClusterEdges(
        a=np.minimum(u, v),
        b=np.maximum(u, v),
        s=np.concatenate(parts["s"]).astype(np.uint64),
        n=np.concatenate(parts["n"]).astype(np.uint64),
        tau_hi=tau_hi,
        tau_lo=tau_lo,
    )
    return edges, np.concatenate(parts["forced"]).astype(bool)


def node_of(ctx: RunContext, block: StageBlock) -> int:
    """The octree node id of a level task's block."""
    octree = octree_of(ctx)
    level = block.level
    tiling = ctx.grid
    shape = Coordinate(b * 2**level for b in tiling.block_shape_nm)
    position = (block.write_roi.begin - ctx.data_roi.begin) / shape
    return int(octree.node_id(level, np.array([list(position)], dtype=np.int64))[0])


def process_block(ctx: RunContext, block: StageBlock) -> None:
    """One octree task: children's residuals + seam edges -> records and residual."""
    octree = octree_of(ctx)
    level = block.level
    node = node_of(ctx, block)
    layout = ctx.layout
    children: list[Residual]
    if level == 0:
        path = layout.leaf_path(node)
        if not path.exists():
            raise StoreError(
                f"{path} is missing: agglomerate block {node} has not written its fragments; "
                "re-run agglomerate (blockwise reset CONFIG agglomerate)"
            )
        arrays = read_arrays(path, LEAF_ARRAYS)
        children = [leaf_residual(arrays["ids"], arrays["levels"])]
    else:
        children = [
            load_task_result(layout.task_path(level - 1, int(child))).residual
            for child in octree.children(node)
        ]
    seam, forced = seam_edges(ctx, octree, level, node)
    bound = merge_bound(ctx.config.merge_until)
    result = run_task(level, children, seam, bound, forced=forced, node=node)
    if level == octree.root_level and (result.residual.ids.size or len(result.residual.edges)):
        raise StoreError(
            f"the root task left {result.residual.ids.size} frozen clusters; the fragments' "
            "levels and the octree disagree (agglomerate ran with another block grid?)"
        )
    save_task_result(layout.task_path(level, node), result)
    logger.debug(
        "hierarchy level %d node %d: %d clusters, %d edges in; %d merges, residual %d "
        "clusters / %d edges",
        level,
        node,
        sum(c.ids.size for c in children),
        sum(len(c.edges) for c in children) + len(seam),
        len(result.records),
        result.residual.ids.size,
        len(result.residual.edges),
    )


def read_records(ctx: RunContext) -> ClusterEdges:
    """Every merge record of every task (find_segments), checking each task file is there."""
    octree = octree_of(ctx)
    parts = []
    for level in range(octree.n_levels):
        for node in octree.nodes_at_level(level).tolist():
            path = ctx.layout.task_path(level, int(node))
            if not path.exists():
                raise StoreError(
                    f"{path} is missing: hierarchy level {level} node {node} has not run; "
                    "re-run the hierarchy stage (blockwise reset CONFIG hierarchy)"
                )
            parts.append(load_task_result(path).records)
    return ClusterEdges.concatenate(parts)


def describe_levels(ctx: RunContext) -> list[str]:
    """Per level: tasks run and the largest residual graph handed up (for the run summary)."""
    octree = octree_of(ctx)
    lines = ["hierarchy: largest residual graph per level (clusters / edges handed to the parent)"]
    for level in range(octree.n_levels):
        largest = (0, 0)
        tasks = 0
        for node in octree.nodes_at_level(level).tolist():
            path = ctx.layout.task_path(level, int(node))
            if not path.exists():
                continue
            tasks += 1
            arrays = read_arrays(path, ("residual_ids", "residual_edges_a"))
            size = (int(arrays["residual_ids"].size), int(arrays["residual_edges_a"].size))
            largest = max(largest, size, key=lambda x: x[1])
        lines.append(
            f"  level {level}: {tasks} tasks, largest residual {largest[0]} clusters / "
            f"{largest[1]} edges"
        )
    return lines


def levels(ctx: RunContext) -> int:
    """The octree's number of levels (leaves are level 0)."""
    return octree_of(ctx).n_levels


def tiling(ctx: RunContext) -> Tiling:
    """The leaves: the extract_fragments grid, no context (levels coarsen it)."""
    return Tiling(
        ctx.data_roi, ctx.voxel_size, Coordinate(ctx.config.extract_fragments.block_shape_vx)
    )


def clear_outputs(ctx: RunContext) -> None:
    """Remove every task result."""
    shutil.rmtree(ctx.layout.hierarchy_dir / "tasks", ignore_errors=True)


def is_enabled(config: object) -> bool:
    """Only ``segments.method: hierarchical`` runs the octree."""
    return getattr(getattr(config, "segments", None), "method", None) == "hierarchical"


STAGE = Stage(
    name=NAME,
    # the largest threshold bounds the merging
    sections=("segments",),
    upstream=("agglomerate",),
    tiling=tiling,
    setup=single_function(process_block),
    bytes_per_voxel=0,
    is_enabled=is_enabled,
    clear_outputs=clear_outputs,
    levels=levels,
    describe_result=describe_levels,
)
