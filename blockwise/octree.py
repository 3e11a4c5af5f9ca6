"""The octree over a grid of blocks, for hierarchical agglomeration (../shared/AGGLOMERATION.md).

Level 0 holds the leaf blocks, addressed by their grid coordinates ``(z, y, x)``
(0-based, in blocks) or by their block index, the C-order ravel of the
coordinates over the grid shape. A node at level ``L`` with coordinates ``c``
covers the leaf coordinates ``c * 2**L ... c * 2**L + 2**L - 1`` per axis
(clipped to the grid), so its parent is ``c // 2`` at level ``L + 1`` and its
children are the up to 8 nodes ``2 c + {0, 1}**3`` at level ``L - 1`` that lie
inside that level's grid; the others are simply absent. The grid may have any
shape (3 x 5 x 2 blocks, say): the level-``L`` grid has ``ceil(g / 2**L)``
nodes along an axis of ``g`` blocks. The root, at level ``n_levels - 1``, covers
the whole grid.

Node ids are deterministic: level-major, then C order of the node coordinates
within the level's grid. A leaf's node id is therefore its block index, and the
root's is the largest id.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from blockwise.errors import InputError

__all__ = ["Octree", "OctreeInputError"]


class OctreeInputError(InputError, ValueError):
    """A grid shape, level, node id or block address given to an Octree is invalid."""


def _minimal_levels(grid_shape: tuple[int, int, int]) -> int:
    extent = max(grid_shape)
    return max(1, int(extent - 1).bit_length() + 1)


@dataclass(frozen=True)
class Octree:
    """The octree over a ``grid_shape`` of leaf blocks.

    Attributes:
        grid_shape: blocks per axis ``(z, y, x)``, each >= 1.
        n_levels: number of levels, levels ``0 .. n_levels - 1``; None (the
            default) gives the fewest levels whose root covers the grid,
            ``ceil(log2(max(grid_shape))) + 1``. More levels are allowed: the
            extra top levels have one node with one child.
    """

    grid_shape: tuple[int, int, int]
    n_levels: int = 0

    def __init__(self, grid_shape: ArrayLike, n_levels: int | None = None) -> None:
        shape = tuple(int(g) for g in np.asarray(grid_shape).reshape(-1))
        if len(shape) != 3 or any(g < 1 for g in shape):
            raise OctreeInputError(
                f"grid_shape must be 3 positive block counts (z, y, x), received {grid_shape!r}"
            )
        minimal = _minimal_levels(shape)
        if n_levels is None:
            n_levels = minimal
        if isinstance(n_levels, bool) or not isinstance(n_levels, int | np.integer):
            raise OctreeInputError(f"n_levels must be an integer, received {n_levels!r}")
        if not minimal <= n_levels <= 64:
            raise OctreeInputError(
                f"a grid of {shape} blocks needs {minimal} to 64 levels, received {n_levels}"
            )
        object.__setattr__(self, "grid_shape", shape)
        object.__setattr__(self, "n_levels", int(n_levels))

    @property
    def root_level(self) -> int:
        """The level of the root, ``n_levels - 1``."""
        return self.n_levels - 1

    @property
    def num_blocks(self) -> int:
        """The number of leaf blocks."""
        return int(np.prod(self.grid_shape))

    @property
    def num_nodes(self) -> int:
        """The number of nodes over all levels."""
        return int(self._offsets()[-1])

    @property
    def root(self) -> int:
        """The root's node id."""
        return self.num_nodes - 1

    def level_shape(self, level: int) -> tuple[int, int, int]:
        """Nodes per axis at ``level``: ``ceil(grid_shape / 2**level)``."""
        self._check_level(level)
        z, y, x = (-(-g // (1 << level)) for g in self.grid_shape)
        return (z, y, x)

    def tasks_per_level(self) -> list[int]:
        """The number of nodes (tasks) at each level, from the leaves to the root."""
        return [int(np.prod(self.level_shape(level))) for level in range(self.n_levels)]

    def nodes_at_level(self, level: int) -> NDArray[np.int64]:
        """The node ids at ``level``, increasing."""
        offsets = self._offsets()
        return np.arange(offsets[level], offsets[level + 1], dtype=np.int64)

    def node_id(self, level: int, coords: ArrayLike) -> NDArray[np.int64]:
        """Node ids of the nodes at ``level`` with the (N, 3) node coordinates ``coords``."""
        self._check_level(level)
        c = self._coords_array("coords", coords, self.level_shape(level))
        index = np.ravel_multi_index(tuple(c.T), self.level_shape(level))
        return np.asarray(index, dtype=np.int64) + self._offsets()[level]

    def node_level(self, nodes: ArrayLike) -> NDArray[np.int64]:
        """The level of each node id."""
        n = self._nodes_array(nodes)
        return np.searchsorted(self._offsets(), n, side="right").astype(np.int64) - 1

    def node_coords(self, nodes: ArrayLike) -> NDArray[np.int64]:
        """The (N, 3) coordinates of each node id within its level's grid."""
        n = self._nodes_array(nodes)
        levels = self.node_level(n)
        out = np.empty((n.size, 3), dtype=np.int64)
        for level in np.unique(levels):
            here = levels == level
            local = n[here] - self._offsets()[level]
            out[here] = np.stack(np.unravel_index(local, self.level_shape(int(level))), axis=1)
        return out

    def parent(self, node: int) -> int:
        """The parent's node id; the root has none (OctreeInputError)."""
        level = int(self.node_level([node])[0])
        if level == self.root_level:
            raise OctreeInputError(f"node {node} is the root and has no parent")
        coords = self.node_coords([node])[0]
        return int(self.node_id(level + 1, (coords // 2)[None])[0])

    def children(self, node: int) -> NDArray[np.int64]:
        """The node ids of the up to 8 children, increasing; empty for a leaf."""
        level = int(self.node_level([node])[0])
        if level == 0:
            return np.zeros(0, dtype=np.int64)
        coords = self.node_coords([node])[0]
        below = np.array(self.level_shape(level - 1))
        corners = np.array(
            [(dz, dy, dx) for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)], dtype=np.int64
        )
        child = 2 * coords[None] + corners
        inside = np.all(child < below, axis=1)
        return np.sort(self.node_id(level - 1, child[inside]))

    def block_index(self, block_coords: ArrayLike) -> NDArray[np.int64]:
        """Block indices (= leaf node ids) of (N, 3) leaf coordinates."""
        c = self._coords_array("block_coords", block_coords, self.grid_shape)
        return np.asarray(np.ravel_multi_index(tuple(c.T), self.grid_shape), dtype=np.int64)

    def block_coords(self, blocks: ArrayLike) -> NDArray[np.int64]:
        """(N, 3) leaf coordinates of block indices, or of (N, 3) coordinates (checked)."""
        b = np.asarray(blocks)
        if b.ndim == 2:
            return self._coords_array("blocks", b, self.grid_shape)
        if b.ndim != 1 or not (b.size == 0 or np.issubdtype(b.dtype, np.integer)):
            raise OctreeInputError(
                f"blocks must be (N,) block indices or (N, 3) block coordinates, "
                f"received an array of shape {b.shape} and dtype {b.dtype}"
            )
        b = b.astype(np.int64)
        if b.size and (b.min() < 0 or b.max() >= self.num_blocks):
            raise OctreeInputError(
                f"block indices must lie in [0, {self.num_blocks}) for a grid of "
                f"{self.grid_shape} blocks, received {b.min()} to {b.max()}"
            )
        return np.stack(np.unravel_index(b, self.grid_shape), axis=1).astype(np.int64)

    def lca_level(self, blocks_a: ArrayLike, blocks_b: ArrayLike) -> NDArray[np.int64]:
        """The level of the lowest common ancestor of each pair of leaf blocks.

        The smallest ``L`` with ``a >> L == b >> L`` on every axis, i.e. the
        largest bit length of ``a xor b`` over the three axes; 0 for equal blocks.

        Args:
            blocks_a: (N,) block indices or (N, 3) leaf coordinates.
            blocks_b: the other blocks, in the same form, as many.
        """
        a = self.block_coords(blocks_a)
        b = self.block_coords(blocks_b)
        if a.shape != b.shape:
            raise OctreeInputError(
                f"blocks_a and blocks_b must hold as many blocks, received {len(a)} and {len(b)}"
            )
        diff = np.bitwise_or.reduce(a ^ b, axis=1) if len(a) else np.zeros(0, np.int64)
        level = np.zeros(diff.shape, dtype=np.int64)
        while np.any(diff):
            nonzero = diff != 0
            level[nonzero] += 1
            diff = diff >> 1
        return level

    def lca_node(self, blocks_a: ArrayLike, blocks_b: ArrayLike) -> NDArray[np.int64]:
        """The node id of the lowest common ancestor of each pair of leaf blocks."""
        a = self.block_coords(blocks_a)
        levels = self.lca_level(a, blocks_b)
        out = np.empty(levels.shape, dtype=np.int64)
        offsets = self._offsets()
        for level in np.unique(levels):
            here = levels == level
            shape = self.level_shape(int(level))
            local = np.ravel_multi_index(tuple((a[here] >> level).T), shape)
            out[here] = local + offsets[level]
        return out

    def _offsets(self) -> NDArray[np.int64]:
        counts = [0] + [
            int(np.prod([-(-g // (1 << level)) for g in self.grid_shape]))
            for level in range(self.n_levels)
        ]
        return np.cumsum(counts).astype(np.int64)

    def _check_level(self, level: int) -> None:
        if isinstance(level, bool) or not isinstance(level, int | np.integer):
            raise OctreeInputError(f"level must be an integer, received {level!r}")
        if not 0 <= level < self.n_levels:
            raise OctreeInputError(
                f"level must lie in 0..{self.n_levels - 1} for this octree, received {level}"
            )

    def _nodes_array(self, nodes: ArrayLike) -> NDArray[np.int64]:
        n = np.asarray(nodes).reshape(-1)
        if n.size and not np.issubdtype(n.dtype, np.integer):
            raise OctreeInputError(f"node ids must be integers, received dtype {n.dtype}")
        n = n.astype(np.int64)
        if n.size and (n.min() < 0 or n.max() >= self.num_nodes):
            raise OctreeInputError(
                f"node ids must lie in [0, {self.num_nodes}), received {n.min()} to {n.max()}"
            )
        return n

    @staticmethod
    def _coords_array(
        name: str, coords: ArrayLike, shape: tuple[int, int, int]
    ) -> NDArray[np.int64]:
        c = np.asarray(coords)
        if (
            c.ndim != 2
            or c.shape[1] != 3
            or not (c.size == 0 or np.issubdtype(c.dtype, np.integer))
        ):
            raise OctreeInputError(
                f"{name} must be an (N, 3) integer array of (z, y, x) coordinates, "
                f"received shape {c.shape} and dtype {c.dtype}"
            )
        c = c.astype(np.int64)
        if c.size and (np.any(c < 0) or np.any(c >= np.asarray(shape))):
            raise OctreeInputError(
                f"{name} must lie inside the grid of {shape} nodes, received "
                f"coordinates from {c.min(axis=0).tolist()} to {c.max(axis=0).tolist()}"
            )
        return c
