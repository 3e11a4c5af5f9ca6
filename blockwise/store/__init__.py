"""Region-adjacency graph stores behind one interface (:class:`GraphStore`)."""

from __future__ import annotations

from blockwise.errors import StoreError
from blockwise.store.base import GraphStore
from blockwise.store.tables import EdgeTable, NodeTable

__all__ = ["EdgeTable", "GraphStore", "NodeTable", "StoreError", "open_store"]


def open_store(
    uri: str,
    retry_attempts: int = 5,
    retry_first_backoff_s: float = 1.0,
    server_timeout_s: float = 3.0,
) -> GraphStore:
    """Open the graph store named by ``uri``.

    ``sqlite:///path/to/graph.sqlite`` is the embedded default;
    ``mongodb://host:port/dbname`` is for clusters; its operations are tried
    ``retry_attempts`` times with exponential back-off from
    ``retry_first_backoff_s`` before a :class:`StoreError`, each try waiting
    ``server_timeout_s`` for the server.

    Raises:
        StoreError: if the scheme is unknown or the store cannot be opened.
    """
    if uri.startswith("sqlite:///"):
        from blockwise.store.sqlite import SQLiteGraphStore

        return SQLiteGraphStore(uri[len("sqlite:///") :])
    if uri.startswith(("mongodb://", "mongodb+srv://")):
        from blockwise.store.mongo import MongoGraphStore, RetryPolicy

        policy = RetryPolicy(
            attempts=retry_attempts,
            first_backoff_s=retry_first_backoff_s,
            server_selection_timeout_s=server_timeout_s,
            connect_timeout_s=server_timeout_s,
        )
        return MongoGraphStore(uri, retry=policy)
    raise StoreError(
        f"graph store URI {uri!r} is not understood; expected sqlite:///PATH or "
        "mongodb://HOST:PORT/DBNAME"
    )
