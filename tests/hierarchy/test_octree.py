"""The octree over block grids of any shape, against brute-force definitions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from blockwise.octree import Octree, OctreeInputError

GRIDS = [(1, 1, 1), (2, 2, 2), (3, 5, 2), (1, 1, 7), (4, 4, 4), (5, 3, 9)]


def brute_lca_level(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """The smallest level at which both leaves lie in the same 2**L cube."""
    level = 0
    while any((x >> level) != (y >> level) for x, y in zip(a, b, strict=True)):
        level += 1
    return level


@pytest.mark.parametrize("grid", GRIDS)
def test_levels_cover_the_grid(grid: tuple[int, int, int]) -> None:
    octree = Octree(grid)
    assert 2**octree.root_level >= max(grid)
    assert octree.root_level == 0 or 2 ** (octree.root_level - 1) < max(grid)
    assert octree.level_shape(octree.root_level) == (1, 1, 1)
    assert octree.tasks_per_level()[0] == octree.num_blocks == int(np.prod(grid))
    assert octree.tasks_per_level()[-1] == 1
    assert sum(octree.tasks_per_level()) == octree.num_nodes
    assert octree.root == octree.num_nodes - 1


@pytest.mark.parametrize("grid", GRIDS)
def test_every_leaf_has_one_path_to_the_root(grid: tuple[int, int, int]) -> None:
    octree = Octree(grid)
    # children and parent agree, every node but the root has one parent, and a
    # node's leaves are exactly the grid leaves inside its 2**L cube
    for node in range(octree.num_nodes):
        for child in octree.children(node):
            assert octree.parent(int(child)) == node
    leaves_under: dict[int, set[int]] = {leaf: {leaf} for leaf in range(octree.num_blocks)}
    for level in range(1, octree.n_levels):
        for node in octree.nodes_at_level(level):
            leaves_under[int(node)] = set().union(
                *(leaves_under[int(c)] for c in octree.children(int(node)))
            )
            corner = octree.node_coords([node])[0] << level
            expected = {
                int(octree.block_index(np.array([c]))[0])
                for c in itertools.product(*(range(x, x + 2**level) for x in corner))
                if all(ci < g for ci, g in zip(c, grid, strict=True))
            }
            assert leaves_under[int(node)] == expected
            assert 1 <= len(octree.children(int(node))) <= 8
    assert leaves_under[octree.root] == set(range(octree.num_blocks))
    with pytest.raises(OctreeInputError, match="root"):
        octree.parent(octree.root)


def test_three_five_two_children_are_clipped() -> None:
    octree = Octree((3, 5, 2))
    assert octree.n_levels == 4
    assert octree.level_shape(1) == (2, 3, 1)
    # the level-1 node at (1, 2, 0) covers leaves z 2..3, y 4..5, x 0..1: only z 2, y 4
    node = int(octree.node_id(1, [[1, 2, 0]])[0])
    children = octree.children(node)
    assert sorted(map(tuple, octree.node_coords(children).tolist())) == [(2, 4, 0), (2, 4, 1)]


@pytest.mark.parametrize("grid", GRIDS)
def test_lca_level_and_node_match_brute_force(grid: tuple[int, int, int]) -> None:
    octree = Octree(grid)
    leaves = [tuple(c) for c in itertools.product(*(range(g) for g in grid))]
    pairs = list(itertools.product(range(len(leaves)), repeat=2))
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    levels = octree.lca_level(a, b)
    expected = [brute_lca_level(leaves[i], leaves[j]) for i, j in pairs]
    assert levels.tolist() == expected
    # the same from coordinates, and the node is the common ancestor at that level
    coords = np.array(leaves)
    assert octree.lca_level(coords[a], coords[b]).tolist() == expected
    nodes = octree.lca_node(a, b)
    parent = {node: octree.parent(node) for node in range(octree.root)}
    for k in np.random.default_rng(0).choice(len(pairs), size=min(len(pairs), 400), replace=False):
        ancestor_i, ancestor_j = pairs[k]
        for _ in range(levels[k]):
            ancestor_i, ancestor_j = parent[ancestor_i], parent[ancestor_j]
        assert ancestor_i == ancestor_j == nodes[k]


def test_extra_levels_and_node_ids() -> None:
    octree = Octree((2, 1, 1), n_levels=4)
    assert octree.tasks_per_level() == [2, 1, 1, 1]
    assert octree.children(octree.root).tolist() == [octree.root - 1]
    assert octree.node_level(np.arange(octree.num_nodes)).tolist() == [0, 0, 1, 2, 3]
    # leaf node ids are block indices
    grid = Octree((3, 5, 2))
    coords = np.array([[2, 4, 1], [0, 0, 0], [1, 3, 0]])
    assert grid.block_index(coords).tolist() == np.ravel_multi_index(coords.T, (3, 5, 2)).tolist()
    assert grid.node_id(0, coords).tolist() == grid.block_index(coords).tolist()
    assert grid.block_coords(grid.block_index(coords)).tolist() == coords.tolist()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Octree((0, 2, 2)), "3 positive block counts"),
        (lambda: Octree((2, 2)), "3 positive block counts"),
        (lambda: Octree((5, 1, 1), n_levels=2), "needs 4 to 64 levels"),
        (
            lambda: Octree((2, 2, 2)).lca_level([0, 8], [0, 1]),
            r"block indices must lie in \[0, 8\)",
        ),
        (lambda: Octree((2, 2, 2)).lca_level([[0, 0, 2]], [[0, 0, 0]]), "inside the grid"),
        (lambda: Octree((2, 2, 2)).lca_level([0, 1], [0]), "as many blocks"),
        (lambda: Octree((2, 2, 2)).lca_level([0.5], [0]), "block indices or"),
        (lambda: Octree((2, 2, 2)).level_shape(2), r"level must lie in 0..1"),
        (lambda: Octree((2, 2, 2)).children(9), r"node ids must lie in \[0, 9\)"),
    ],
)
def test_rejects_bad_input(make: object, message: str) -> None:
    with pytest.raises(OctreeInputError, match=message):
        make()  # type: ignore[operator]
