"""Column tables of region-adjacency-graph nodes and edges."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class NodeTable:
    """Fragments: id, centre in nm (z, y, x) and size in voxels."""

    id: NDArray[np.uint64]
    center_nm: NDArray[np.float64]  # (n, 3)
    size_vx: NDArray[np.int64]

    def __post_init__(self) -> None:
        n = len(self.id)
        if self.center_nm.shape != (n, 3) or self.size_vx.shape != (n,):
            raise ValueError(
                f"node table columns disagree: {n} ids, centres of shape "
                f"{self.center_nm.shape}, sizes of shape {self.size_vx.shape}"
            )

    def __len__(self) -> int:
        return len(self.id)

    @staticmethod
    def empty() -> NodeTable:
        """A table with no rows."""
        return NodeTable(
            np.zeros(0, np.uint64), np.zeros((0, 3), np.float64), np.zeros(0, np.int64)
        )

    def sorted(self) -> NodeTable:
        """The same rows ordered by id."""
        order = np.argsort(self.id, kind="stable")
        return NodeTable(self.id[order], self.center_nm[order], self.size_vx[order])


@dataclass(frozen=True)
class EdgeTable:
    """Scored edges (u < v) between fragments.

    ``score`` is the edge's initial score, ``merge_score`` the score at which
    its two fragments were merged inside the block that owns it, NaN if never.
    ``statistics``, when present, holds each edge's serialized affinity
    statistic (the state the scoring function keeps for the edge's faces), from
    which the whole graph can be merged again globally.
    """

    u: NDArray[np.uint64]
    v: NDArray[np.uint64]
    score: NDArray[np.float32]
    merge_score: NDArray[np.float32]
    statistics: tuple[bytes, ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.u)
        if not (len(self.v) == len(self.score) == len(self.merge_score) == n):
            raise ValueError(
                f"edge table columns disagree: {n} u, {len(self.v)} v, {len(self.score)} "
                f"scores, {len(self.merge_score)} merge scores"
            )
        if self.statistics is not None and len(self.statistics) != n:
            raise ValueError(f"edge table has {n} edges but {len(self.statistics)} statistics")

    def select(self, rows: NDArray[np.intp] | NDArray[np.bool_]) -> EdgeTable:
        """The rows picked by an index or mask, in that order."""
        stats = None
        if self.statistics is not None:
            picked = np.arange(len(self))[rows]
            stats = tuple(self.statistics[i] for i in picked.tolist())
        return EdgeTable(
            self.u[rows], self.v[rows], self.score[rows], self.merge_score[rows], stats
        )

    def __len__(self) -> int:
        return len(self.u)

    @staticmethod
    def empty() -> EdgeTable:
        """A table with no rows."""
        return EdgeTable(
            np.zeros(0, np.uint64),
            np.zeros(0, np.uint64),
            np.zeros(0, np.float32),
            np.zeros(0, np.float32),
        )

    def sorted(self) -> EdgeTable:
        """The same rows ordered by (u, v)."""
        return self.select(np.lexsort((self.v, self.u)))

    @staticmethod
    def concatenate(tables: list[EdgeTable]) -> EdgeTable:
        """Rows of all tables, in order."""
        if not tables:
            return EdgeTable.empty()
        stats = None
        if all(t.statistics is not None for t in tables):
            stats = tuple(s for t in tables for s in t.statistics or ())
        return EdgeTable(
            np.concatenate([t.u for t in tables]),
            np.concatenate([t.v for t in tables]),
            np.concatenate([t.score for t in tables]),
            np.concatenate([t.merge_score for t in tables]),
            stats,
        )


# uint64 ids are stored as int64 with the top bit flipped: the mapping keeps
# the order, so range queries on ids work in stores that only know signed ints.
_FLIP = np.uint64(1 << 63)


def ids_to_signed(ids: NDArray[np.uint64]) -> NDArray[np.int64]:
    """Order-preserving map of uint64 ids onto int64."""
    return (np.asarray(ids, dtype=np.uint64) ^ _FLIP).view(np.int64)


def ids_from_signed(values: NDArray[np.int64]) -> NDArray[np.uint64]:
    """Inverse of :func:`ids_to_signed`."""
    return np.asarray(values, dtype=np.int64).view(np.uint64) ^ _FLIP


def id_to_signed(value: int) -> int:
    """:func:`ids_to_signed` for one Python int."""
    return int(ids_to_signed(np.array([value], dtype=np.uint64))[0])
