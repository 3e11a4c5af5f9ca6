"""Dry run: what a config would do, checked before anything is written."""

from __future__ import annotations

from blockwise.config import RunConfig
from blockwise.geometry import voxels
from blockwise.runner import validate
from blockwise.tasks import stage_names

# bytes per voxel held while a block runs (affinities float32 x3, fragments,
# surface, distance transform, labels, a heap entry): a rough upper bound
_BYTES_PER_VOXEL = {"extract_fragments": 64, "agglomerate": 40, "relabel": 24}


def describe_plan(config: RunConfig) -> str:
    """A text description of the run's blocks, ids and memory; validates everything."""
    ctx = validate(config)
    grid = ctx.grid
    vs = ctx.voxel_size
    lines = [
        f"run {config.name} -> {config.run_dir}",
        f"affinities {ctx.affinities.name}: {ctx.affinities.num_channels} channels, "
        f"dtype {ctx.affinities.dtype}, voxel size {list(vs)} nm",
        f"data ROI {ctx.data_roi} ({voxels(ctx.data_roi, vs) / 1e6:.1f} MVox)",
        f"block grid {list(grid.grid_shape)} = {grid.num_blocks} blocks of "
        f"{list(grid.block_shape_vx)} voxels; chunks {list(config.output.chunk_shape_vx)} "
        "divide the block shape: ok",
        f"fragment ids up to {grid.max_fragment_id} (fits uint64: ok)",
        f"graph store {config.store_uri}",
    ]
    for name in stage_names(ctx):
        if name in _BYTES_PER_VOXEL:
            context = (
                config.extract_fragments.context_vx
                if name == "extract_fragments"
                else config.agglomerate.context_vx
                if name == "agglomerate"
                else (0, 0, 0)
            )
            read_vx = 1
            for b, c in zip(grid.block_shape_vx, context, strict=True):
                read_vx *= b + 2 * c
            memory = read_vx * _BYTES_PER_VOXEL[name] / 2**20
            lines.append(
                f"  {name}: {grid.num_blocks} blocks, context {list(context)} vx, "
                f"~{memory:.0f} MiB per block"
            )
        else:
            lines.append(f"  {name}: 1 block over the whole volume")
    return "\n".join(lines)
