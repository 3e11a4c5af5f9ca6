"""Block grid: indices, id ranges and their uniqueness."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from funlib.geometry import Coordinate, Roi

from blockwise.errors import ConfigError
from blockwise.geometry import BlockGrid, FragmentIds


def grid() -> BlockGrid:
    return BlockGrid(Roi((100, 0, 0), (250, 300, 70)), Coordinate(10, 10, 10), Coordinate(8, 8, 4))


def test_grid_shape_and_rois_tile_the_data() -> None:
    g = grid()
    assert g.grid_shape == Coordinate(4, 4, 2)
    rois = list(g.write_rois())
    assert len(rois) == g.num_blocks == 32
    covered = sum(int(np.prod(list(r.shape / g.voxel_size))) for r in rois)
    assert covered == 25 * 30 * 7
    for i, roi in enumerate(rois):
        assert g.data_roi.contains(roi)
        assert g.block_index(roi) == i
        for other in rois[i + 1 :]:
            assert not roi.intersects(other)


def test_id_ranges_disjoint_and_block_of_id() -> None:
    g = grid()
    ids_of = FragmentIds(g)
    ranges = [ids_of.id_range(i) for i in range(g.num_blocks)]
    for a, b in itertools.pairwise(ranges):
        assert a.last + 1 == b.first
    ids = np.array([r.first for r in ranges] + [r.last for r in ranges], dtype=np.uint64)
    expected = np.r_[np.arange(g.num_blocks), np.arange(g.num_blocks)]
    assert np.array_equal(ids_of.block_of_id(ids), expected)


def test_ids_must_fit_uint64() -> None:
    with pytest.raises(ConfigError, match=r"does not fit uint64"):
        FragmentIds(
            BlockGrid(
                Roi((0, 0, 0), (2**22, 2**22, 2**22)),
                Coordinate(1, 1, 1),
                Coordinate(256, 256, 256),
            )
        )


def test_unaligned_write_roi() -> None:
    with pytest.raises(ValueError, match=r"not aligned"):
        grid().block_index(Roi((105, 0, 0), (80, 80, 40)))


def test_tiling_block_cuts_and_indexes_like_funlib() -> None:
    # Tiling.block uses plain integers; funlib's Roi operations are the reference
    from blockwise.stage import Tiling

    rng = np.random.default_rng(7)
    for _ in range(20):
        voxel = Coordinate(rng.integers(1, 9, size=3).tolist())
        begin = Coordinate(rng.integers(-5, 5, size=3).tolist()) * voxel
        shape_vx = Coordinate(rng.integers(5, 60, size=3).tolist())
        data = Roi(begin, shape_vx * voxel)
        block_vx = Coordinate(rng.integers(2, 20, size=3).tolist())
        context_vx = Coordinate(rng.integers(0, 4, size=3).tolist())
        bounds = None
        if rng.random() < 0.5:
            grow = context_vx * voxel
            bounds = data.grow(grow, grow)
        tiling = Tiling(data, voxel, block_vx, context_vx, bounds)
        grid = tiling.grid
        assert grid is not None
        context = tiling.context_nm
        for index, write in enumerate(grid.write_rois()):
            full_write = Roi(write.begin, block_vx * voxel)
            read = full_write.grow(context, context)
            block = tiling.block("s", read, full_write)
            assert block.index == index == grid.block_index(write)
            assert block.write_roi == full_write.intersect(data) == write
            assert block.read_roi == read.intersect(bounds if bounds is not None else data)
        whole = Tiling(data, voxel)
        block = whole.block("s", data, data)
        assert (block.index, block.read_roi, block.write_roi) == (0, data, data)
    with pytest.raises(ValueError, match="not aligned"):
        tiling.block("s", data, Roi(data.begin + voxel, block_vx * voxel))
