"""The flood extract_fragments saves per block, and the cut basins agglomerate finds in it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from funlib.geometry import Roi
from gala import gala_data

from blockwise.basin_files import BasinFileError, load_basins, save_basins
from blockwise.config import parse_config
from blockwise.fragments import fragments_for_config
from blockwise.layout import RunLayout
from blockwise.run_context import RunContext
from blockwise.runner import run
from blockwise.stages import agglomerate
from blockwise.stitching import cut_pairs

ROI = Roi((-40, 0, 80), (60, 120, 40))  # 6 x 12 x 4 voxels of 10 nm
WRITE = Roi((-20, 40, 100), (20, 40, 20))


@pytest.mark.parametrize("count", [7, 70_000])
def test_a_saved_flood_reads_back_as_it_was_written(tmp_path: Path, count: int) -> None:
    rng = np.random.default_rng(count)
    basins = rng.integers(0, count + 1, size=(6, 12, 4), dtype=np.uint64)
    basins.flat[0] = count  # the largest label decides the stored width
    layout = RunLayout(tmp_path)
    save_basins(layout, 3, ROI, basins)
    roi, labels = load_basins(layout, 3, WRITE)
    assert roi == ROI
    assert labels.dtype == np.uint64
    assert np.array_equal(labels, basins)
    # the same flood gives the same bytes (a retried block rewrites its file identically)
    first = layout.basin_path(3).read_bytes()
    save_basins(layout, 3, ROI, basins)
    assert layout.basin_path(3).read_bytes() == first


def test_a_missing_garbled_or_misplaced_flood_is_named(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path)
    with pytest.raises(BasinFileError, match=r"block_5\.npz is missing: extract_fragments block 5"):
        load_basins(layout, 5, WRITE)
    save_basins(layout, 5, ROI, np.ones((6, 12, 4), dtype=np.uint64))
    with pytest.raises(BasinFileError, match="not the block's write ROI"):
        load_basins(layout, 5, Roi((0, 0, 0), (100, 100, 100)))
    layout.basin_path(5).write_bytes(b"not an npz" * 10)
    with pytest.raises(BasinFileError, match=r"cannot read .*block_5\.npz"):
        load_basins(layout, 5, WRITE)


def test_cut_pairs_from_the_saved_flood_equal_those_of_a_second_flood(
    gala: Path, tmp_path: Path
) -> None:
    """With equal contexts, the saved flood is the flood agglomerate used to compute again.

    The reference floods each agglomerate block's read ROI a second time, inside
    the fragments (as agglomerate did before it read the saved flood), and finds
    the cut pairs in that flood.
    """
    data = gala_data(
        gala,
        tmp_path / "run",
        extract_fragments={"context_vx": [8, 8, 8]},
        agglomerate={"context_vx": [8, 8, 8]},
        segments={"method": "hierarchical"},
        evaluate={"enabled": False},
    )
    config = parse_config(data)
    result = run(config, multiprocessing=False, progress=False)
    assert result.ok, result.summary()
    ctx = RunContext(config)
    tiling = agglomerate.tiling(ctx)
    grid = tiling.grid
    assert grid is not None
    found = owned_found = 0
    for index in range(grid.num_blocks):
        write = grid.write_roi(index)
        block = tiling.block("agglomerate", write.grow(tiling.context_nm, tiling.context_nm), write)
        fragments = ctx.fragments.read(block.read_roi)
        saved = agglomerate.cut_basins(ctx, block, fragments)
        again, _ = fragments_for_config(
            ctx.read_affinities(block.read_roi),
            ctx.voxel_size,
            config.extract_fragments,
            fragments != 0,
        )
        expected = cut_pairs(fragments, again, ctx.fragment_ids.block_of_id)
        assert np.array_equal(saved[0], expected[0]) and np.array_equal(saved[1], expected[1])
        found += len(saved[0])
        # and the cheaper search of the pairs the block owns (u in the block) finds exactly those
        owned = agglomerate.owned_cut_basins(ctx, block, fragments)
        mine = ctx.fragment_ids.block_of_id(expected[0]) == index
        assert np.array_equal(owned[0], expected[0][mine])
        assert np.array_equal(owned[1], expected[1][mine])
        owned_found += len(owned[0])
    ctx.close()
    assert found > 0 and owned_found > 0  # the gala crop has basins cut by block faces
