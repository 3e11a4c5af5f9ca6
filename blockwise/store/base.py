"""The graph store interface every backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Literal

import numpy as np
from funlib.geometry import Roi
from numpy.typing import NDArray

from blockwise.geometry import IdRange
from blockwise.store.tables import EdgeTable, NodeTable


class GraphStore(ABC):
    """A region-adjacency graph shared by every worker of a run.

    Nodes are fragments; edges join touching fragments. Writes are per block
    and idempotent: writing a block replaces exactly the nodes (edges) whose
    id (u) lies in the block's id range, so a re-run block never duplicates.
    """

    uri: str

    @abstractmethod
    def write_nodes(self, id_range: IdRange, nodes: NodeTable) -> None:
        """Replace the nodes with ids in ``id_range`` by ``nodes``.

        Raises:
            ValueError: if a node's id lies outside ``id_range``.
            StoreError: if the store cannot be written.
        """

    @abstractmethod
    def write_edges(self, id_range: IdRange, edges: EdgeTable) -> None:
        """Replace the edges whose ``u`` lies in ``id_range`` by ``edges``.

        An edge (u, v), u < v, is owned by the block that owns fragment u, so
        no two blocks ever write the same edge.

        Raises:
            ValueError: if an edge has u >= v or u outside ``id_range``.
            StoreError: if the store cannot be written.
        """

    @abstractmethod
    def read_nodes(self, roi: Roi | None = None) -> NodeTable:
        """Nodes whose centre lies in ``roi`` (all if None), ordered by id."""

    @abstractmethod
    def read_edges(self, roi: Roi | None = None, with_statistics: bool = False) -> EdgeTable:
        """Edges whose ``u`` has its centre in ``roi`` (all if None), ordered by (u, v).

        With ``with_statistics``, also each edge's stored statistic (empty bytes
        where the writer stored none).
        """

    @abstractmethod
    def node_ids(self) -> NDArray[np.uint64]:
        """Every node id, sorted."""

    @abstractmethod
    def stream_merged_edges(self, chunk_size: int) -> Iterator[EdgeTable]:
        """Edges with a merge score, in increasing merge score, ``chunk_size`` at a time."""

    @abstractmethod
    def count_nodes(self) -> int:
        """Number of nodes."""

    @abstractmethod
    def count_edges(self) -> int:
        """Number of edges."""

    @abstractmethod
    def clear(self, table: Literal["nodes", "edges"]) -> None:
        """Remove every node (or every edge): a stage's outputs when it is reset."""

    @abstractmethod
    def get_meta(self, key: str) -> str | None:
        """A run-metadata value, or None."""

    @abstractmethod
    def set_meta(self, key: str, value: str) -> None:
        """Set a run-metadata value."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""

    def __enter__(self) -> GraphStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_block_rows(id_range: IdRange, ids: NDArray[np.uint64], what: str) -> None:
    """Raise ValueError unless every id lies in ``id_range``."""
    if len(ids) == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < id_range.first or hi > id_range.last:
        raise ValueError(
            f"{what} ids must lie in the block's range [{id_range.first}, {id_range.last}], "
            f"got ids from {lo} to {hi}"
        )
