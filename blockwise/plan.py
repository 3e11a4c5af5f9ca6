"""Dry run: what a config would do, checked before anything is written."""

from __future__ import annotations

import time
from pathlib import Path

from blockwise.config import RunConfig, parse_config
from blockwise.errors import BlockwiseError, RunChangedError
from blockwise.geometry import voxels
from blockwise.run_state import find_changes, refusal_message
from blockwise.runner import check_run_dir, check_store_owner, prepare, validate
from blockwise.stage_worker import StageWorker


def describe_plan(config: RunConfig) -> str:
    """A text description of the run's stages, blocks, ids and memory; validates everything."""
    ctx, stages = validate(config)
    # the refusals `run` would make, before it writes anything
    check_run_dir(config.run_dir)
    check_store_owner(ctx)
    if config.run_dir.is_dir():
        changes = find_changes(config, [s for s, _ in stages])
        if any(c.blocks_done for c in changes):
            raise RunChangedError(refusal_message(config.run_dir, changes))
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
        f"graph store {config.store_uri}",
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


def smoke_test(config: RunConfig, scratch: Path) -> str:
    """Run the first block of every stage in this process, into ``scratch``.

    A broken config (a checkpoint that does not load, a kernel that rejects the
    data, a store that cannot be written) fails here in seconds, not after a
    fleet of workers has started. The real run directory is not touched.

    Returns:
        one line per stage with the seconds its first block took.

    Raises:
        whatever the first failing block raised (its ROI is in the message).
    """
    data = config.model_dump(mode="json")
    data["run_dir"] = str(scratch / "run")
    data["store"]["uri"] = None
    scratch_config = parse_config(data, f"{config.name} (smoke test)")
    ctx, stages = prepare(scratch_config)
    lines = [f"smoke test in {scratch / 'run'}: the first block of each stage"]
    for stage, tiling in stages:
        worker = StageWorker(ctx, stage)
        grid = tiling.grid
        write = tiling.data_roi if grid is None else grid.write_roi(0)
        context = tiling.context_nm
        start = time.perf_counter()
        try:
            worker.process(write.grow(context, context), write)
        except Exception as e:
            raise BlockwiseError(
                f"smoke test: {stage.name} block 0 (write ROI {write}) failed: "
                f"{type(e).__name__}: {e}"
            ) from e
        finally:
            worker.close()
        lines.append(f"  {stage.name}: ok in {time.perf_counter() - start:.1f} s")
    ctx.close()
    return "\n".join(lines)
