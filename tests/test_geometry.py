"""Block grid: indices, id ranges and their uniqueness."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from funlib.geometry import Coordinate, Roi

from blockwise.errors import ConfigError
from blockwise.geometry import BlockGrid, FragmentIds, cantor_number, cantor_position


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


def test_cantor_position_inverts_cantor_number() -> None:
    numbers = set()
    for position in itertools.product(range(12), repeat=3):
        number = cantor_number(position)
        numbers.add(number)
        assert cantor_position(number, 3) == position
    assert len(numbers) == 12**3
    # every number is some position: the first ones in order, and far out
    assert [cantor_number(cantor_position(n, 3)) for n in range(500)] == list(range(500))
    for position in [
        (4000, 3, 7),
        (0, 0, 10**6),
        (123456, 654321, 99),
        (0, 5, 0),
        # beyond float precision (and float range): exact, in few steps
        (10**17, 3, 10**16),
        (7, 10**120, 5),
    ]:
        assert cantor_position(cantor_number(position), 3) == position
    assert cantor_position(cantor_number((3, 9)), 2) == (3, 9)
    assert cantor_position(17, 1) == (17,)
    with pytest.raises(ValueError, match="number >= 0"):
        cantor_position(-1, 3)


def test_daisy_block_ids_give_the_tiling_index() -> None:
    # the tasks blockwise.tasks builds (total = data grown by the context, fit
    # "shrink"): daisy's own block ids, read back through Tiling.daisy_block, give
    # the index and ROIs Tiling.block computes from the ROIs
    import daisy.v2 as daisy

    from blockwise.stage import Tiling

    rng = np.random.default_rng(11)
    for _ in range(12):
        voxel = Coordinate(rng.integers(1, 5, size=3).tolist())
        data = Roi(
            Coordinate(rng.integers(-5, 5, size=3).tolist()) * voxel,
            Coordinate(rng.integers(5, 40, size=3).tolist()) * voxel,
        )
        block_vx = Coordinate(rng.integers(2, 12, size=3).tolist())
        # contexts of a block or more too: daisy's positions are shifted by them
        context_vx = Coordinate(rng.integers(0, 30, size=3).tolist())
        tiling = Tiling(data, voxel, block_vx, context_vx)
        context = tiling.context_nm
        seen: list[int] = []

        def check(block: daisy.Block, tiling: Tiling = tiling, seen: list[int] = seen) -> None:
            fast = tiling.daisy_block("s", block, 2)
            slow = tiling.block("s", block.read_roi, block.write_roi, 2)
            assert (fast.index, fast.level) == (slow.index, 2)
            assert (fast.read_roi, fast.write_roi) == (slow.read_roi, slow.write_roi)
            assert fast == slow
            seen.append(fast.index)

        block = Roi((0, 0, 0), block_vx * voxel)
        task = daisy.Task(
            "s",
            total_roi=data.grow(context, context),
            read_roi=block.grow(context, context),
            write_roi=block,
            process_function=check,
            read_write_conflict=False,
            fit="shrink",
        )
        assert daisy.run_blockwise(task, multiprocessing=False, progress=False, summary=False)
        assert sorted(seen) == list(range(tiling.num_blocks))


def test_daisy_block_whose_id_and_rois_disagree_is_refused() -> None:
    from types import SimpleNamespace

    from blockwise.stage import Tiling

    tiling = Tiling(Roi((0, 0, 0), (40, 40, 40)), Coordinate(1, 1, 1), Coordinate(10, 10, 10))
    write = Roi((10, 0, 0), (10, 10, 10))  # grid position (1, 0, 0): block 16
    wrong = SimpleNamespace(
        block_id=("s", cantor_number((0, 1, 0))), read_roi=write, write_roi=write
    )
    block = tiling.daisy_block("s", wrong)
    assert block.index == 4  # what the id says; the ROIs are not read yet
    with pytest.raises(ValueError, match="daisy block id 2 names block 4 of s, but its write ROI"):
        _ = block.read_roi
    outside = SimpleNamespace(
        block_id=("s", cantor_number((0, 0, 4))), read_roi=write, write_roi=write
    )
    with pytest.raises(ValueError, match=r"grid position \(0, 0, 4\), outside the grid"):
        tiling.daisy_block("s", outside)
    right = SimpleNamespace(
        block_id=("s", cantor_number((1, 0, 0))), read_roi=write, write_roi=write
    )
    assert (tiling.daisy_block("s", right).index, tiling.daisy_block("s", right).write_roi) == (
        16,
        write,
    )


def test_a_stage_block_is_immutable_and_pickles_resolved() -> None:
    import pickle

    from blockwise.stage import StageBlock

    calls = []
    read, write = Roi((0, 0, 0), (12, 12, 12)), Roi((2, 2, 2), (8, 8, 8))

    def resolve() -> tuple[Roi, Roi]:
        calls.append(1)
        return read, write

    block = StageBlock.deferred("s", 3, 1, resolve)
    with pytest.raises(AttributeError, match="immutable"):
        block.index = 5  # type: ignore[misc]
    copy = pickle.loads(pickle.dumps(block))
    assert (copy.stage, copy.index, copy.level, copy.read_roi, copy.write_roi) == (
        "s",
        3,
        1,
        read,
        write,
    )
    assert copy == block == StageBlock("s", 3, read, write, 1) and hash(copy) == hash(block)
    assert len(calls) == 1  # resolved once, for the pickle
