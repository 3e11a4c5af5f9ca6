"""Block grids (how a stage tiles the data) and the fragment ids a grid hands out.

Blocks tile the data ROI with a fixed write shape (border blocks are cut to
the data). :class:`FragmentIds` allocates ids over the extract_fragments grid:
a block's fragments get ids ``block_index * voxels_per_block + k`` for
``k = 1 .. voxels_per_block``, so no two blocks can ever produce the same id
and no coordination is needed; 0 is background.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from funlib.geometry import Coordinate, Roi

from blockwise.errors import ConfigError

UINT64_MAX = np.iinfo(np.uint64).max


@dataclass(frozen=True)
class IdRange:
    """The closed range ``[first, last]`` of fragment ids a block may use."""

    first: int
    last: int

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int | np.integer) and self.first <= int(value) <= self.last


@dataclass(frozen=True)
class BlockGrid:
    """Write blocks tiling ``data_roi``.

    Attributes:
        data_roi: the region processed, in nm.
        voxel_size: nm per voxel.
        block_shape_vx: write shape of a block, in voxels.
    """

    data_roi: Roi
    voxel_size: Coordinate
    block_shape_vx: Coordinate

    def __post_init__(self) -> None:
        if any(s % v for s, v in zip(self.data_roi.shape, self.voxel_size, strict=True)):
            raise ConfigError(
                f"ROI {self.data_roi} is not a whole number of voxels of size {self.voxel_size}"
            )

    @property
    def block_shape_nm(self) -> Coordinate:
        """Write shape of a block in nm."""
        return self.block_shape_vx * self.voxel_size

    @property
    def grid_shape(self) -> Coordinate:
        """Number of blocks along z, y, x."""
        shape_vx = self.data_roi.shape / self.voxel_size
        return Coordinate(-(-s // b) for s, b in zip(shape_vx, self.block_shape_vx, strict=True))

    @property
    def num_blocks(self) -> int:
        """Number of blocks in the grid."""
        return int(np.prod(list(self.grid_shape), dtype=object))

    @property
    def voxels_per_block(self) -> int:
        """Voxels of a full block."""
        return int(np.prod(list(self.block_shape_vx), dtype=object))

    def grid_position(self, write_roi: Roi) -> Coordinate:
        """Position of the block writing ``write_roi`` in the grid."""
        relative = write_roi.begin - self.data_roi.begin
        if any(r % b for r, b in zip(relative, self.block_shape_nm, strict=True)):
            raise ValueError(f"write ROI {write_roi} is not aligned to the block grid")
        return relative / self.block_shape_nm

    def block_index(self, write_roi: Roi) -> int:
        """Linear (C-order) index of the block writing ``write_roi``."""
        position = self.grid_position(write_roi)
        grid = self.grid_shape
        return int((position[0] * grid[1] + position[1]) * grid[2] + position[2])

    def write_roi(self, block_index: int) -> Roi:
        """The write ROI of block ``block_index``, cut to the data ROI."""
        grid = self.grid_shape
        z, rest = divmod(block_index, grid[1] * grid[2])
        y, x = divmod(rest, grid[2])
        begin = self.data_roi.begin + Coordinate(z, y, x) * self.block_shape_nm
        return Roi(begin, self.block_shape_nm).intersect(self.data_roi)

    def write_rois(self) -> Iterator[Roi]:
        """Every block's write ROI, in index order."""
        for index in range(self.num_blocks):
            yield self.write_roi(index)


@dataclass(frozen=True)
class FragmentIds:
    """The fragment ids each block of ``grid`` may hand out (the extract_fragments grid).

    Attributes:
        grid: the grid whose blocks make fragments.
    """

    grid: BlockGrid

    def __post_init__(self) -> None:
        if self.max_fragment_id > UINT64_MAX:
            raise ConfigError(
                f"{self.grid.num_blocks} blocks of {self.grid.voxels_per_block} voxels need "
                f"fragment ids up to {self.max_fragment_id}, which does not fit uint64; use "
                "fewer, or smaller, blocks"
            )

    @property
    def max_fragment_id(self) -> int:
        """The largest id any block may hand out."""
        return self.grid.num_blocks * self.grid.voxels_per_block

    def id_range(self, block_index: int) -> IdRange:
        """The fragment ids block ``block_index`` owns."""
        first = block_index * self.grid.voxels_per_block + 1
        return IdRange(first, first + self.grid.voxels_per_block - 1)

    def block_of_id(self, fragment_ids: np.ndarray) -> np.ndarray:
        """Index of the block owning each (non-zero) fragment id."""
        ids = np.asarray(fragment_ids, dtype=np.uint64)
        return ((ids - np.uint64(1)) // np.uint64(self.grid.voxels_per_block)).astype(np.int64)


def roi_slices(inner: Roi, outer: Roi, voxel_size: Coordinate) -> tuple[slice, ...]:
    """Slices selecting ``inner`` out of an array that covers ``outer`` (both nm)."""
    begin = (inner.begin - outer.begin) / voxel_size
    end = (inner.end - outer.begin) / voxel_size
    return tuple(slice(int(b), int(e)) for b, e in zip(begin, end, strict=True))


def grow_clipped(roi: Roi, context_nm: Coordinate, bounds: Roi) -> Roi:
    """``roi`` grown by ``context_nm`` on every side, cut to ``bounds``."""
    return roi.grow(context_nm, context_nm).intersect(bounds)


def voxels(roi: Roi, voxel_size: Coordinate) -> int:
    """Number of voxels in ``roi``."""
    return int(np.prod(list(roi.shape / voxel_size), dtype=object))


def cantor_number(position: tuple[int, ...]) -> int:
    """daisy's spatial id of the block at grid ``position`` (daisy 1.x and 2.0 alike).

    The id of position ``(x_0, .., x_{n-1})`` is the sum over ``d`` of
    ``C(s_d + d, d + 1)``, where ``s_d = x_0 + .. + x_d``: the blocks are
    numbered along diagonals of growing ``s_{n-1}`` (a Cantor enumeration of
    the grid), so the numbering does not depend on the grid's extent.
    """
    number = total = 0
    for d, x in enumerate(position):
        total += x
        number += math.comb(total + d, d + 1)
    return number


def cantor_position(number: int, dims: int) -> tuple[int, ...]:
    """The grid position whose :func:`cantor_number` is ``number`` (its inverse).

    Raises:
        ValueError: if ``number`` is negative or ``dims`` < 1.
    """
    if number < 0 or dims < 1:
        raise ValueError(f"expected a number >= 0 and dims >= 1, received {number} and {dims}")
    sums = [0] * dims
    rest = number
    for d in range(dims - 1, 0, -1):
        sums[d] = _largest_sum(rest, d)
        rest -= math.comb(sums[d] + d, d + 1)
    sums[0] = rest
    return tuple(sums[d] - (sums[d - 1] if d else 0) for d in range(dims))


def _largest_sum(rest: int, d: int) -> int:
    """The largest ``s`` >= 0 with ``C(s + d, d + 1) <= rest``.

    Starts from the float estimate (``C(s + d, k)`` is about ``(s + d / 2)^k / k!``)
    and corrects it exactly: the bracket doubles until it holds the answer, then
    halves, so numbers beyond float precision cost a few dozen steps, not millions.
    """
    k = d + 1
    if rest == 0:
        return 0
    s = max(0, int(math.exp((math.log(rest) + math.lgamma(k + 1)) / k)) - d)
    low, step = s, 1
    while low > 0 and math.comb(low + d, k) > rest:
        low, step = max(0, low - step), step * 2
    high, step = s + 1, 1
    while math.comb(high + d, k) <= rest:
        high, step = high + step, step * 2
    # C(low + d, k) <= rest < C(high + d, k)
    while high - low > 1:
        middle = (low + high) // 2
        if math.comb(middle + d, k) <= rest:
            low = middle
        else:
            high = middle
    return low
