"""Selections over a chunk grid (blockwise.chunk_grid), against numpy's slicing."""

from __future__ import annotations

import numpy as np
import pytest

from blockwise.chunk_grid import chunk_pieces, selection_bounds


def test_pieces_assemble_every_selection_as_numpy_slices_it() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        ndim = int(rng.integers(1, 4))
        shape = tuple(int(n) for n in rng.integers(1, 12, size=ndim))
        chunks = tuple(int(c) for c in rng.integers(1, 6, size=ndim))
        array = rng.integers(0, 1000, size=shape)
        selection = tuple(
            slice(int(rng.integers(-n - 2, n + 2)), int(rng.integers(-n - 2, n + 3)))
            if rng.random() < 0.8
            else slice(None)
            for n in shape
        )
        bounds = selection_bounds(selection, shape)
        want = array[selection]
        got = np.full(tuple(b - a for a, b in bounds), -1)
        assert got.shape == want.shape
        if got.size == 0:
            continue
        seen = set()
        for piece in chunk_pieces(bounds, chunks):
            assert piece.index not in seen
            seen.add(piece.index)
            assert piece.origin == tuple(i * c for i, c in zip(piece.index, chunks, strict=True))
            chunk = array[tuple(slice(o, o + c) for o, c in zip(piece.origin, chunks, strict=True))]
            got[piece.target] = chunk[piece.source]
        np.testing.assert_array_equal(got, want)
        # every chunk the selection touches, once each
        touched = {
            tuple(int(i) for i in index)
            for index in np.ndindex(
                *(((b - 1) // c) - (a // c) + 1 for (a, b), c in zip(bounds, chunks, strict=True))
            )
        }
        assert len(seen) == len(touched)


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        ((slice(0, 2),), "one slice per axis"),
        ((slice(0, 2), slice(0, 4, 2)), "axis 1: expected a step of 1"),
    ],
)
def test_bounds_refuse_what_the_readers_cannot_assemble(
    selection: tuple[slice, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        selection_bounds(selection, (4, 4))
