"""Dry run: what a config would do, checked before anything is written."""

from __future__ import annotations

from blockwise.config import RunConfig
from blockwise.geometry import voxels
from blockwise.runner import validate


def describe_plan(config: RunConfig) -> str:
    """A text description of the run's stages, blocks, ids and memory; validates everything."""
    ctx, stages = validate(config)
    vs = ctx.voxel_size
    source = ctx.source
    lines = [f"run {config.name} -> {config.run_dir}"]
    if ctx.predicts and ctx.raw is not None:
        lines.append(f"raw {ctx.raw.name}: dtype {ctx.raw.dtype}, voxel size {list(vs)} nm")
    else:
        lines.append(
            f"affinities {source.name}: {source.num_channels} channels, "
            f"dtype {source.dtype}, voxel size {list(vs)} nm"
        )
    lines += [
        f"data ROI {ctx.data_roi} ({voxels(ctx.data_roi, vs) / 1e6:.1f} MVox)",
        f"fragment ids up to {ctx.fragment_ids.max_fragment_id} (fits uint64: ok) over "
        f"{ctx.grid.num_blocks} extract_fragments blocks",
        f"graph store {config.store.uri or ctx.layout.default_store_uri}",
    ]
    if config.predict is not None:
        from blockwise.nn.architecture import describe

        lines.append(describe(config.predict.unet, config.predict.input_shape_vx))
    for stage, tiling in stages:
        if tiling.is_whole:
            lines.append(f"  {stage.name}: 1 block over {tiling.data_roi}")
            continue
        grid = tiling.grid
        assert grid is not None  # a block-wise tiling has a grid
        memory = tiling.read_voxels_per_block() * stage.bytes_per_voxel / 2**20
        lines.append(
            f"  {stage.name}: {grid.num_blocks} blocks ({list(grid.grid_shape)}) of "
            f"{list(grid.block_shape_vx)} vx, context {list(tiling.context_vx)} vx, "
            f"~{memory:.0f} MiB per block"
        )
    return "\n".join(lines)
