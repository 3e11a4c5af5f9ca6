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

Files read (:mod:`blockwise.hierarchy_files`): ``hierarchy/leaves/block_K.npz``
(a leaf's fragments and their levels) and
``hierarchy/edges/level_L/block_K.npz`` (the edges block ``K`` owns whose LCA
is on level ``L``), both written by agglomerate.
"""

from __future__ import annotations

import logging
import shutil

import numpy as np
from funlib.geometry import Coordinate

from blockwise.config import RunConfig
from blockwise.errors import StoreError
from blockwise.hierarchical import (
    Residual,
    futures_of,
    leaf_residual,
    load_task_result,
    read_arrays,
    run_task,
    save_task_result,
)
from blockwise.hierarchy_files import (
    LEAF_ARRAYS,
    leaf_edges,
    neighbour_reach,
    octree_of,
    seam_edges,
)
from blockwise.kernels.mean_merge import merge_bound
from blockwise.run_context import RunContext
from blockwise.stage import Stage, StageBlock, Tiling, single_function

logger = logging.getLogger(__name__)

NAME = "hierarchy"


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
        ids = arrays["ids"].astype(np.uint64)
        # future bounds: per fragment and level, the best mean still to come from
        # outside the task, from every edge touching the leaf (its neighbours' too)
        touching, touching_forced, touching_levels = leaf_edges(ctx, octree, node, ids)
        futures = futures_of(
            ids,
            touching.a,
            touching.b,
            touching.s,
            touching.n,
            touching_forced,
            touching_levels,
            octree.n_levels,
            merge_bound(ctx.config.merge_until),
        )
        children = [leaf_residual(ids, arrays["levels"], futures)]
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
    """The leaves: the extract_fragments grid (levels coarsen it).

    A leaf reads the seam files of the blocks within contact reach (the edges
    they own that touch its fragments, for the future bounds), so its context
    makes daisy wait for their agglomerate blocks; it reads no array.
    """
    return Tiling(
        ctx.data_roi,
        ctx.voxel_size,
        Coordinate(ctx.config.extract_fragments.block_shape_vx),
        Coordinate(neighbour_reach(ctx)),
    )


def clear_outputs(ctx: RunContext) -> None:
    """Remove every task result."""
    shutil.rmtree(ctx.layout.hierarchy_dir / "tasks", ignore_errors=True)


def is_enabled(config: RunConfig) -> bool:
    """Only ``segments.method: hierarchical`` runs the octree."""
    return config.segments.method == "hierarchical"


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
