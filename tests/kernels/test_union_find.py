"""UnionFind against scipy's connected components on random pairs."""

from __future__ import annotations

import importlib.machinery

import numpy as np
import pytest
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components

from blockwise.kernels import _union_find
from blockwise.kernels.union_find import UnionFind


def reference_components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smallest element of every element's connected component."""
    graph = coo_array((np.ones(a.size), (a, b)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    smallest = np.full(component.max() + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(smallest, component, np.arange(n))
    return smallest[component]


def random_pairs(rng: np.random.Generator, n: int, n_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.integers(0, n, n_pairs, dtype=np.int64), rng.integers(0, n, n_pairs, dtype=np.int64)


def test_compiled_kernel_is_loaded() -> None:
    assert _union_find.__file__ is not None
    assert _union_find.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


@pytest.mark.parametrize(
    ("n", "pairs_per_element"),
    [(1, 1.0), (2, 1.0), (10, 0.5), (1000, 0.3), (1000, 2.0), (100_000, 0.45), (100_000, 1.5)],
)
def test_components_match_scipy(n: int, pairs_per_element: float) -> None:
    rng = np.random.default_rng([n, int(pairs_per_element * 10)])
    a, b = random_pairs(rng, n, int(n * pairs_per_element))
    union_find = UnionFind(n)
    union_find.union(a, b)
    expected = reference_components(n, a, b)
    np.testing.assert_array_equal(union_find.components(), expected)

    roots = union_find.roots()
    assert roots.dtype == np.int64
    np.testing.assert_array_equal(roots[roots], roots)  # roots represent themselves
    # same root exactly when same component
    _, root_ids = np.unique(roots, return_inverse=True)
    _, component_ids = np.unique(expected, return_inverse=True)
    pairs = set(zip(root_ids.tolist(), component_ids.tolist(), strict=True))
    assert len(pairs) == len(set(root_ids.tolist())) == len(set(component_ids.tolist()))


def test_components_do_not_depend_on_union_order_or_batches() -> None:
    rng = np.random.default_rng(0)
    n = 5000
    a, b = random_pairs(rng, n, 3000)
    whole = UnionFind(n)
    whole.union(a, b)
    shuffled = UnionFind(n)
    order = rng.permutation(a.size)
    for batch in np.array_split(order, 7):
        shuffled.union(b[batch], a[batch])
    np.testing.assert_array_equal(whole.components(), shuffled.components())


def test_accepts_other_integer_dtypes_and_empty_pairs() -> None:
    union_find = UnionFind(4)
    union_find.union(np.array([0, 2], np.uint8), np.array([1, 3], np.int32))
    union_find.union(np.array([], np.int64), np.array([], np.int64))
    np.testing.assert_array_equal(union_find.components(), [0, 0, 2, 2])
    assert len(union_find) == 4


def test_empty_union_find() -> None:
    union_find = UnionFind(0)
    assert union_find.roots().shape == (0,)
    assert union_find.components().shape == (0,)


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        (np.array([0, 1]), np.array([1]), "same length"),
        (np.array([0, 5]), np.array([1, 1]), r"\[0, 5\)"),
        (np.array([0, -1]), np.array([1, 1]), r"\[0, 5\)"),
        (np.array([0.0]), np.array([1]), "integer"),
        (np.array([[0]]), np.array([1]), "1D"),
        ([0], np.array([1]), "numpy array"),
    ],
)
def test_union_rejects_bad_pairs(a: object, b: object, message: str) -> None:
    union_find = UnionFind(5)
    with pytest.raises(ValueError, match=message):
        union_find.union(a, b)  # type: ignore[arg-type]
    np.testing.assert_array_equal(union_find.components(), np.arange(5))


@pytest.mark.parametrize("n", [-1, 2.5, True, "3"])
def test_rejects_bad_sizes(n: object) -> None:
    with pytest.raises(ValueError, match="n must be an integer"):
        UnionFind(n)  # type: ignore[arg-type]
