"""Union-find (disjoint sets) over the elements 0..n-1."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from blockwise.kernels import _union_find

__all__ = ["UnionFind"]


class UnionFind:
    """Disjoint sets over the elements 0..n-1, merged pair by pair.

    Union by size with path compression; parents are int64, so n may reach the
    memory limit rather than 2**31. Memory: 16 bytes per element.

    Args:
        n: Number of elements, at least 0.

    Raises:
        ValueError: if ``n`` is negative or not an integer.
    """

    def __init__(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
            raise ValueError(f"n must be an integer >= 0, received {n!r}")
        self._n = int(n)
        self._parent = np.arange(self._n, dtype=np.int64)
        self._size = np.ones(self._n, dtype=np.int64)

    def __len__(self) -> int:
        """Return the number of elements n."""
        return self._n

    def union(self, a: NDArray[np.int64], b: NDArray[np.int64]) -> None:
        """Merge the sets of ``a[k]`` and ``b[k]`` for every k, in order.

        Args:
            a: 1D integer element indices in [0, n).
            b: 1D integer element indices in [0, n), as many as ``a``.

        Raises:
            ValueError: if ``a`` or ``b`` is not a 1D integer array, their
                lengths differ, or an index lies outside [0, n).
        """
        a64 = self._checked_elements("a", a)
        b64 = self._checked_elements("b", b)
        if a64.shape != b64.shape:
            raise ValueError(
                f"a and b must have the same length, received {a64.size} and {b64.size}"
            )
        _union_find.union_pairs(self._parent, self._size, a64, b64)

    def roots(self) -> NDArray[np.int64]:
        """Return the representative (root) of every element.

        Roots depend on the order of unions; use :meth:`components` for a
        canonical labelling.
        """
        out = np.empty(self._n, dtype=np.int64)
        _union_find.find_roots(self._parent, out)
        return out

    def components(self) -> NDArray[np.int64]:
        """Return, for every element, the smallest element of its set.

        This labelling depends only on the partition, not on the order of unions.
        """
        out = np.empty(self._n, dtype=np.int64)
        _union_find.smallest_members(self._parent, out)
        return out

    def _checked_elements(self, name: str, elements: object) -> NDArray[np.int64]:
        if not isinstance(elements, np.ndarray):
            raise ValueError(f"{name} must be a numpy array, received {type(elements).__name__}")
        if elements.ndim != 1 or not np.issubdtype(elements.dtype, np.integer):
            raise ValueError(
                f"{name} must be a 1D integer array, received {elements.ndim}D {elements.dtype}"
            )
        if elements.size and (elements.min() < 0 or elements.max() >= self._n):
            raise ValueError(
                f"{name} must hold element indices in [0, {self._n}), received values "
                f"from {elements.min()} to {elements.max()}"
            )
        return np.ascontiguousarray(elements, dtype=np.int64)
