"""Dry run: what a config would do, checked before anything is written."""

from __future__ import annotations

import time
from pathlib import Path

from blockwise.config import RunConfig, parse_config
from blockwise.errors import BlockwiseError, RunChangedError
from blockwise.geometry import voxels
from blockwise.integrity import check_affinity_samples
from blockwise.run_context import RunContext
from blockwise.run_state import find_changes, refusal_message
from blockwise.runner import check_run_dir, check_store_owner, prepare, validate
from blockwise.stage import Stage, stage_tasks
from blockwise.stage_worker import StageWorker


def levels_line(ctx: RunContext, stage: Stage) -> str:
    """The octree of a stage run by levels: tasks per level and an estimate for the root task.

    The estimate counts the voxel contacts across the internal faces of the
    root (the largest task) as its clusters and edges
    (:func:`~blockwise.hierarchical.estimate_task_memory`). It is not a bound:
    the root also receives edges between clusters that waited inside blocks
    for others (objects crossing many faces); on synthetic graphs of 10^7
    edges it held 5.2x the face contacts under the plain rule this stage runs
    (2.4x with future bounds)
    (``tests/benchmarks/bench_hierarchical.py``).
    """
    from blockwise.hierarchical import estimate_task_memory

    tasks = stage_tasks(ctx, stage)
    counts = [task.tiling(ctx).num_blocks for task in tasks]
    leaf = tasks[0].tiling(ctx)
    grid = leaf.grid
    assert grid is not None  # a stage run by levels tiles the data
    shape = [s // v for s, v in zip(leaf.data_roi.shape, leaf.voxel_size, strict=True)]
    contacts = 0
    for axis in range(3):
        area = 1
        for other in range(3):
            if other != axis:
                area *= shape[other]
        contacts += (grid.grid_shape[axis] - 1) * area
    memory = estimate_task_memory(contacts, contacts) / 2**20
    return (
        f"  {stage.name}: octree of {len(tasks)} levels, tasks per level {counts} "
        f"(leaves = {list(grid.grid_shape)} blocks of {list(grid.block_shape_vx)} vx); "
        f"largest task (the root) about {memory:.0f} MiB if only its {contacts} face "
        "contacts reach it (more where objects cross many faces)"
    )


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
    # broken affinity values fail here, not in the blocks that read them
    sampled = check_affinity_samples(ctx)
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
        sampled,
    ]
    if config.predict is not None:
        from blockwise.nn.architecture import describe

        lines.append(describe(config.predict.unet, config.predict.input_shape_vx))
    for stage, tiling in stages:
        if stage.levels is not None:
            lines.append(levels_line(ctx, stage))
            continue
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
    # a stage's first block may read beyond what the upstream first blocks wrote; in a
    # smoke test an output chunk that is missing there means "not computed": zeros
    outputs = [ctx.fragments, *(ctx.segmentation(t) for t in scratch_config.segments.thresholds)]
    if ctx.predicts:
        outputs.append(ctx.predicted_affinities)
    for volume in outputs:
        volume.missing_chunks = "fill_value"
    lines = [f"smoke test in {scratch / 'run'}: the first block of each stage"]
    for stage, tiling in stages:
        worker = StageWorker(ctx, stage, 0 if stage.levels is not None else None)
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
        if stage.levels is not None:
            # its higher levels and the stages after it need every leaf block
            later = [s.name for s, _ in stages[stages.index((stage, tiling)) + 1 :]]
            lines.append(f"  {stage.name} levels >= 1 and {later}: need every block, not run")
            break
    ctx.close()
    return "\n".join(lines)
