"""Reading zarr arrays chunk by chunk, keeping decoded chunks while their files are unchanged.

A block reads beyond its own region: agglomerate reads the fragments of its
read ROI (the block grown by its context), so with 64^3 blocks and chunks
every fragments chunk is decoded for 27 blocks, most of them served by the
same worker (workers go on from stage to stage,
:mod:`~blockwise.execution.worker_pool`). zarr keeps nothing between reads.
Here a worker keeps the chunks it decoded (:class:`DecodedChunks`, least
recently used out first) and serves them again while the chunk's file has
the modification time and size it had when its bytes were read (``fstat``
of the file that was read; zarr replaces a chunk's file as a whole when it
writes it), so a chunk written since, by any process, is read anew. A chunk
without a file reads as the fill value, as zarr reads it.

Only arrays whose chunks are files of a directory store are read this way
(:func:`cacheable`); decoding is zarr's own (compressor, filters, order).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import numpy as np
import zarr

from blockwise.chunk_grid import chunk_pieces, selection_bounds

__all__ = ["DecodedChunks", "cacheable", "read_cached"]

#: what identifies the bytes of a chunk file: (modification time in ns, size)
Stamp = tuple[int, int]


class DecodedChunks:
    """Decoded chunks of one array, at most ``max_bytes`` of them, least recently used out
    first, each with the :data:`Stamp` of the file it was decoded from.

    Args:
        max_bytes: the budget; a chunk larger than it is not kept.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._chunks: OrderedDict[tuple[int, ...], tuple[Stamp, np.ndarray]] = OrderedDict()
        self._bytes = 0
        #: chunks decoded (read from their files), for tests and measurements
        self.decoded = 0

    def get(self, index: tuple[int, ...], stamp: Stamp) -> np.ndarray | None:
        """The chunk decoded from a file with ``stamp``, or None (not kept, or since changed)."""
        kept = self._chunks.get(index)
        if kept is None or kept[0] != stamp:
            return None
        self._chunks.move_to_end(index)
        return kept[1]

    def put(self, index: tuple[int, ...], stamp: Stamp, chunk: np.ndarray) -> None:
        """Keep ``chunk``, replacing an older one of ``index``; drop the least recently used
        to fit."""
        old = self._chunks.pop(index, None)
        if old is not None:
            self._bytes -= old[1].nbytes
        if chunk.nbytes > self.max_bytes:
            return
        while self._chunks and self._bytes + chunk.nbytes > self.max_bytes:
            _, (_, dropped) = self._chunks.popitem(last=False)
            self._bytes -= dropped.nbytes
        self._chunks[index] = (stamp, chunk)
        self._bytes += chunk.nbytes


def cacheable(array: Any) -> bool:
    """Whether :func:`read_cached` reads ``array``: a zarr (v2) array whose chunks are
    files of a directory store (no separate chunk store), of a non-object dtype."""
    return (
        isinstance(array, zarr.Array)
        and getattr(array, "_version", 2) == 2
        and isinstance(array.store, zarr.storage.DirectoryStore)
        and array._chunk_store is None
        and array.dtype != object
    )


def read_cached(array: Any, selection: tuple[slice, ...], cache: DecodedChunks) -> np.ndarray:
    """``array[selection]`` for an array :func:`cacheable` accepts; the same values.

    Args:
        array: the zarr array.
        selection: one slice per axis, step 1 (or None).
        cache: the decoded chunks of this array kept between reads.

    Raises:
        ValueError: on a selection of another length or with a step.
        OSError, and whatever zarr's decoding raises: a chunk file that cannot
            be read or decoded.
    """
    bounds = selection_bounds(selection, tuple(int(s) for s in array.shape))
    out = np.empty(tuple(b - a for a, b in bounds), dtype=array.dtype)
    if out.size == 0:
        return out
    root = array.store.path
    for piece in chunk_pieces(bounds, tuple(int(c) for c in array.chunks)):
        path = os.path.join(root, array._chunk_key(piece.index))
        try:
            info = os.stat(path)
        except FileNotFoundError:
            out[piece.target] = array.fill_value  # as zarr reads a missing chunk
            continue
        chunk = cache.get(piece.index, (info.st_mtime_ns, info.st_size))
        if chunk is None:
            with open(path, "rb") as f:
                read = os.fstat(f.fileno())  # the stamp of the bytes read
                data = f.read()
            chunk = array._decode_chunk(data)
            cache.decoded += 1
            cache.put(piece.index, (read.st_mtime_ns, read.st_size), chunk)
        out[piece.target] = chunk[piece.source]
    return out
