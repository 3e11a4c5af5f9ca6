"""number_block against consecutive() plus the offset, and per-fragment sizes and sums."""

from __future__ import annotations

import importlib.machinery

import numpy as np
import pytest

from blockwise.kernels import _block_numbering
from blockwise.kernels.block_numbering import number_block
from blockwise.kernels.relabel import consecutive


def test_compiled_kernel_is_loaded() -> None:
    assert _block_numbering.__file__ is not None
    assert _block_numbering.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


@pytest.mark.parametrize("seed", range(5))
def test_matches_consecutive_ids_and_per_fragment_sums_on_strided_crops(seed: int) -> None:
    # the crop of a flood's write region is a strided view; local ids missing from
    # it (fragments of the context only) are skipped in the numbering
    rng = np.random.default_rng(seed)
    for _ in range(40):
        shape = tuple(int(s) for s in rng.integers(1, 12, 3))
        top = int(rng.integers(0, 80))
        flood = rng.integers(0, top + 1, size=tuple(s + 5 for s in shape)).astype(np.uint64)
        crop = flood[2 : 2 + shape[0], 1 : 1 + shape[1], 3 : 3 + shape[2]]
        first_id = int(rng.integers(1, 2**40))
        numbered = number_block(crop, top, first_id)
        labels, count = consecutive(np.ascontiguousarray(crop))
        assert numbered.n_fragments == count
        expected = np.where(labels != 0, labels + np.uint64(first_id - 1), np.uint64(0))
        np.testing.assert_array_equal(numbered.ids, expected)
        for k in range(count):
            voxels = np.argwhere(labels == k + 1)
            assert numbered.sizes[k] == len(voxels)
            np.testing.assert_array_equal(numbered.coordinate_sums[k], voxels.sum(axis=0))


def test_empty_and_background_only_blocks() -> None:
    for local in (np.zeros((0, 3, 3), np.uint64), np.zeros((2, 3, 4), np.uint64)):
        numbered = number_block(local, 5, 1)
        assert numbered.n_fragments == 0 and numbered.sizes.shape == (0,)
        assert numbered.coordinate_sums.shape == (0, 3)
        np.testing.assert_array_equal(numbered.ids, np.zeros(local.shape, np.uint64))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: number_block(np.zeros((2, 2), np.uint64), 1, 1), "3D uint64 .* received 2D"),
        (lambda: number_block(np.zeros((2, 2, 2), np.int64), 1, 1), "received 3D int64"),
        (lambda: number_block(np.zeros((2, 2, 2), np.uint64), 1, 0), "first_id 0"),
        (lambda: number_block(np.full((2, 2, 2), 7, np.uint64), 6, 1), "above top = 6"),
        (lambda: number_block(np.zeros((1, 1, 1), np.uint64), 3, 2**64 - 2), "2\\*\\*64 - 1"),
    ],
)
def test_bad_input_is_refused_with_what_was_expected(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]
