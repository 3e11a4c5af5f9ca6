"""The files of the hierarchical agglomeration in a run directory, and its octree.

agglomerate writes, per leaf block, its fragments with their levels
(:func:`save_leaf`) and the edges it owns grouped by the level of their lowest
common ancestor (:func:`save_seams`); the hierarchy stage reads a node's seam
edges (:func:`seam_edges`) and writes one task result per node; find_segments
reads every task's merge records (:func:`read_records`). Kept apart from the
stage modules so that no stage imports another.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np

from blockwise.errors import StoreError
from blockwise.hierarchical import load_task_result, read_arrays, write_arrays
from blockwise.kernels.mean_merge import ClusterEdges, fragment_edge_keys
from blockwise.layout import RunLayout
from blockwise.octree import Octree
from blockwise.run_context import RunContext

LEAF_ARRAYS = ("ids", "levels")
SEAM_ARRAYS = ("u", "v", "s", "n", "forced")


# seam files read by this process, by path: (identity of the file read, its arrays)
_SEAM_CACHE: OrderedDict[str, tuple[tuple[int, int, int], dict[str, np.ndarray]]] = OrderedDict()
#: seam files kept in memory per process (a leaf reads its 27 neighbours' files, of every level)
SEAM_CACHE_FILES = 1024


def _read_seam(path: Path) -> dict[str, np.ndarray] | None:
    """A seam file's arrays (None if there is none), remembered while the file stays the same.

    Neighbouring leaf tasks read the same seam files; the file's inode, size
    and modification time identify what was read (a rewrite replaces the file,
    which changes its inode), so a rewritten file is read again.
    """
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        _SEAM_CACHE.pop(str(path), None)
        return None
    identity = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    key = str(path)
    known = _SEAM_CACHE.get(key)
    if known is not None and known[0] == identity:
        _SEAM_CACHE.move_to_end(key)
        return known[1]
    arrays = read_arrays(path, SEAM_ARRAYS)
    for array in arrays.values():
        array.flags.writeable = False  # shared by every reader in this process
    _SEAM_CACHE[key] = (identity, arrays)
    if len(_SEAM_CACHE) > SEAM_CACHE_FILES:
        _SEAM_CACHE.popitem(last=False)
    return arrays


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


def _edges_of(parts: dict[str, list[np.ndarray]]) -> ClusterEdges:
    """Fragment edges from the seam-file columns read in parts (``u``, ``v``, ``s``, ``n``)."""
    u = np.concatenate(parts["u"]).astype(np.uint64)
    v = np.concatenate(parts["v"]).astype(np.uint64)
    tau_hi, tau_lo = fragment_edge_keys(u, v)
    return ClusterEdges(
        a=np.minimum(u, v),
        b=np.maximum(u, v),
        s=np.concatenate(parts["s"]).astype(np.uint64),
        n=np.concatenate(parts["n"]).astype(np.uint64),
        tau_hi=tau_hi,
        tau_lo=tau_lo,
    )


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
        arrays = _read_seam(ctx.layout.seam_path(level, block))
        if arrays is None:
            continue
        for name in SEAM_ARRAYS:
            parts[name].append(arrays[name])
    if not parts["u"]:
        return ClusterEdges.empty(), np.zeros(0, dtype=bool)
    edges = _edges_of(parts)
    return edges, np.concatenate(parts["forced"]).astype(bool)


def neighbour_reach(ctx: RunContext) -> tuple[int, int, int]:
    """Voxels, per axis, that a fragment contact may span: the longest configured offset."""
    offsets = ctx.config.inputs.offsets
    if not ctx.config.agglomerate.long_range_edges:
        offsets = offsets[:3]
    z, y, x = (max(1, max(abs(int(o[axis])) for o in offsets)) for axis in range(3))
    return z, y, x


def _membership(ids: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``lambda a: np.isin(a, ids)``; two comparisons when ``ids`` are one run of consecutive
    ids, as a leaf block's fragments are (numbered from the block's first id)."""
    if ids.size == 0:
        return lambda values: np.zeros(values.shape, dtype=bool)
    low, high = ids[0], ids[-1]
    if int(high) - int(low) + 1 == ids.size and bool(np.all(ids[1:] > ids[:-1])):
        return lambda values: (values >= low) & (values <= high)
    return lambda values: np.isin(values, ids)


def leaf_edges(
    ctx: RunContext, octree: Octree, block: int, ids: np.ndarray
) -> tuple[ClusterEdges, np.ndarray, np.ndarray]:
    """Every fragment edge touching a leaf block's fragments ``ids``, whoever owns it.

    Read from the seam files of the block and of every block within contact
    reach (an edge is owned by the block of its smaller id). Returns the edges,
    their forced flags (as their owners found them) and their LCA levels.
    """
    reach = neighbour_reach(ctx)
    shape = ctx.grid.block_shape_vx
    radius = [-(-r // int(b)) for r, b in zip(reach, shape, strict=True)]
    centre = octree.block_coords(np.array([block], dtype=np.int64))[0]
    begin = np.maximum(centre - radius, 0)
    end = np.minimum(centre + np.asarray(radius) + 1, octree.grid_shape)
    grid = np.stack(
        np.meshgrid(*(np.arange(b, e) for b, e in zip(begin, end, strict=True)), indexing="ij"),
        axis=-1,
    ).reshape(-1, 3)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in (*SEAM_ARRAYS, "level")}
    member = _membership(ids)
    for owner in octree.block_index(grid).tolist():
        for level in range(octree.n_levels):
            arrays = _read_seam(ctx.layout.seam_path(level, owner))
            if arrays is None:
                continue
            touching = member(arrays["u"]) | member(arrays["v"])
            for name in SEAM_ARRAYS:
                parts[name].append(arrays[name][touching])
            parts["level"].append(np.full(int(touching.sum()), level, dtype=np.int64))
    if not parts["u"]:
        empty = np.zeros(0, dtype=np.int64)
        return ClusterEdges.empty(), np.zeros(0, dtype=bool), empty
    edges = _edges_of(parts)
    return edges, np.concatenate(parts["forced"]).astype(bool), np.concatenate(parts["level"])


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
