"""Region-adjacency graph stores behind one interface (:class:`GraphStore`)."""

from __future__ import annotations

from blockwise.errors import StoreError
from blockwise.store.base import GraphStore
from blockwise.store.tables import EdgeTable, NodeTable

__all__ = ["EdgeTable", "GraphStore", "NodeTable", "StoreError", "open_store"]


def open_store(uri: str) -> GraphStore:
    """Open the graph store named by ``uri``.

    ``sqlite:///path/to/graph.sqlite`` is the embedded default;
    ``mongodb://host:port/dbname`` is for clusters.

    Raises:
        StoreError: if the scheme is unknown or the store cannot be opened.
    """
    if uri.startswith("sqlite:///"):
        from blockwise.store.sqlite import SQLiteGraphStore

        return SQLiteGraphStore(uri[len("sqlite:///") :])
    if uri.startswith(("mongodb://", "mongodb+srv://")):
        from blockwise.store.mongo import MongoGraphStore

        return MongoGraphStore(uri)
    raise StoreError(
        f"graph store URI {uri!r} is not understood; expected sqlite:///PATH or "
        "mongodb://HOST:PORT/DBNAME"
    )
