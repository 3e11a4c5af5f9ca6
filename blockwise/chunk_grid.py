"""A box selection over a grid of chunks: which chunks it touches and which part of each.

Shared by the readers that assemble a selection from whole chunks themselves
(:mod:`blockwise.hdf5_chunks`, :mod:`blockwise.zarr_chunks`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

Bounds = tuple[tuple[int, int], ...]


def selection_bounds(selection: tuple[slice, ...], shape: tuple[int, ...]) -> Bounds:
    """``(start, stop)`` per axis of a selection of one step-1 slice per axis.

    Raises:
        ValueError: on a selection of another length or with a step other than 1.
    """
    if len(selection) != len(shape):
        raise ValueError(f"expected one slice per axis of {shape}, received {selection}")
    bounds = []
    for axis, (item, extent) in enumerate(zip(selection, shape, strict=True)):
        start, stop, step = item.indices(extent)
        if step != 1:
            raise ValueError(f"axis {axis}: expected a step of 1, received {item}")
        bounds.append((start, max(start, stop)))
    return tuple(bounds)


@dataclass(frozen=True)
class ChunkPiece:
    """The part of one chunk that a selection holds.

    Attributes:
        index: the chunk's grid index.
        origin: the chunk's first voxel in the array.
        target: where the part goes in the selection's array.
        source: where it lies in the chunk.
    """

    index: tuple[int, ...]
    origin: tuple[int, ...]
    target: tuple[slice, ...]
    source: tuple[slice, ...]


def chunk_pieces(bounds: Bounds, chunk_shape: tuple[int, ...]) -> Iterator[ChunkPiece]:
    """The pieces of every chunk the (non-empty) selection ``bounds`` touches, in C order."""
    ranges = [
        range(a // c, (b - 1) // c + 1) for (a, b), c in zip(bounds, chunk_shape, strict=True)
    ]
    for index in itertools.product(*ranges):
        origin = tuple(i * c for i, c in zip(index, chunk_shape, strict=True))
        target = []
        source = []
        for (a, b), o, c in zip(bounds, origin, chunk_shape, strict=True):
            lo, hi = max(a, o), min(b, o + c)
            target.append(slice(lo - a, hi - a))
            source.append(slice(lo - o, hi - o))
        yield ChunkPiece(index, origin, tuple(target), tuple(source))
