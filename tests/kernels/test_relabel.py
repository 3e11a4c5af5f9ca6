"""relabel, consecutive and first_occurrences against plain-Python dict references."""

from __future__ import annotations

import importlib.machinery

import numpy as np
import pytest

from blockwise.kernels import _relabel
from blockwise.kernels.relabel import (
    consecutive,
    first_occurrences,
    relabel,
    relabel_sorted,
    relabel_sorted_many,
)

SHAPES = [(), (0,), (1,), (57,), (6, 9), (4, 5, 6), (2, 3, 4, 5)]


def random_ids(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Ids with runs of equal values, zeros, and values on both sides of 2**63."""
    palette = np.concatenate(
        [
            np.array([0, 1, 2**63 - 1, 2**63, 2**64 - 1], dtype=np.uint64),
            rng.integers(0, 2**64 - 1, 20, dtype=np.uint64, endpoint=True),
        ]
    )
    n = int(np.prod(shape))
    run_starts = rng.random(n) < 0.3
    choice = rng.integers(0, palette.size, n)
    # a voxel repeats its predecessor's id unless a run starts there
    index = np.maximum.accumulate(np.where(run_starts, np.arange(n), 0)) if n else choice
    return palette[choice[index]].reshape(shape)


def reference_relabel(array: np.ndarray, table: dict[int, int]) -> np.ndarray:
    mapped = [table.get(int(v), 0 if int(v) == 0 else -1) for v in array.reshape(-1)]
    assert -1 not in mapped
    return np.array(mapped, dtype=np.uint64).reshape(array.shape)


def test_compiled_kernel_is_loaded() -> None:
    assert _relabel.__file__ is not None
    assert _relabel.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", range(3))
def test_relabel_matches_dict(shape: tuple[int, ...], seed: int) -> None:
    rng = np.random.default_rng([seed, len(shape)])
    array = random_ids(rng, shape)
    ids = np.unique(array[array != 0])
    keys = rng.permutation(np.concatenate([ids, rng.integers(1, 2**64 - 1, 5, np.uint64)]))
    keys = np.unique(keys)[rng.permutation(np.unique(keys).size)]  # distinct, unsorted
    values = rng.integers(0, 2**64 - 1, keys.size, dtype=np.uint64, endpoint=True)
    table = dict(zip(keys.tolist(), values.tolist(), strict=True))
    result = relabel(array, keys, values)
    assert result.dtype == np.uint64
    np.testing.assert_array_equal(result, reference_relabel(array, table))


def test_zero_maps_to_zero_unless_it_is_a_key() -> None:
    array = np.array([0, 5, 0, 5], dtype=np.uint64)
    keys = np.array([5], dtype=np.uint64)
    np.testing.assert_array_equal(relabel(array, keys, np.array([9], np.uint64)), [0, 9, 0, 9])
    keys = np.array([5, 0], dtype=np.uint64)
    values = np.array([9, 4], dtype=np.uint64)
    np.testing.assert_array_equal(relabel(array, keys, values), [4, 9, 4, 9])


def test_relabel_reads_non_contiguous_views() -> None:
    rng = np.random.default_rng(1)
    array = random_ids(rng, (6, 8, 10))
    view = array.transpose(2, 0, 1)[::2]
    ids = np.unique(array)
    values = rng.integers(0, 2**64 - 1, ids.size, dtype=np.uint64)
    table = dict(zip(ids.tolist(), values.tolist(), strict=True))
    np.testing.assert_array_equal(relabel(view, ids, values), reference_relabel(view, table))


def test_missing_id_names_the_first_one_in_c_order() -> None:
    array = np.array([[3, 3, 0], [2**64 - 2, 7, 2**64 - 2]], dtype=np.uint64)
    keys = np.array([3], dtype=np.uint64)
    with pytest.raises(ValueError, match=rf"id {2**64 - 2} \(first at index \(1, 0\)\)"):
        relabel(array, keys, np.array([1], np.uint64))


@pytest.mark.parametrize(
    ("array", "keys", "values", "message"),
    [
        (np.zeros(3, np.int64), np.zeros(1, np.uint64), np.zeros(1, np.uint64), "array"),
        (np.zeros(3, np.uint64), np.zeros(1, np.int64), np.zeros(1, np.uint64), "keys"),
        (np.zeros(3, np.uint64), np.zeros(1, np.uint64), np.zeros(1, np.float64), "values"),
        (np.zeros(3, np.uint64), np.zeros((1, 1), np.uint64), np.zeros(1, np.uint64), "1D"),
        (np.zeros(3, np.uint64), np.arange(3, dtype=np.uint64), np.zeros(2, np.uint64), "length"),
        (
            np.zeros(3, np.uint64),
            np.array([4, 2, 4], np.uint64),
            np.zeros(3, np.uint64),
            "key 4 appears more than once",
        ),
        ([1, 2], np.zeros(1, np.uint64), np.zeros(1, np.uint64), "numpy array"),
    ],
)
def test_relabel_rejects_bad_inputs(
    array: object, keys: object, values: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        relabel(array, keys, values)  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", range(3))
def test_consecutive_matches_sorted_ids(shape: tuple[int, ...], seed: int) -> None:
    rng = np.random.default_rng([seed, len(shape), 1])
    array = random_ids(rng, shape)
    ids = sorted({int(v) for v in array.reshape(-1)} - {0})
    table = {old: new for new, old in enumerate(ids, start=1)}
    result, n = consecutive(array)
    assert n == len(ids)
    np.testing.assert_array_equal(result, reference_relabel(array, table))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", range(3))
def test_first_occurrences_matches_reference(shape: tuple[int, ...], seed: int) -> None:
    rng = np.random.default_rng([seed, len(shape), 2])
    array = random_ids(rng, shape)
    order: list[int] = []
    for v in array.reshape(-1).tolist():
        if v != 0 and v not in order:
            order.append(v)
    result = first_occurrences(array)
    assert result.dtype == np.uint64
    np.testing.assert_array_equal(result, np.array(order, dtype=np.uint64))


def test_consecutive_and_first_occurrences_reject_other_dtypes() -> None:
    with pytest.raises(ValueError, match="dtype uint64, received int32"):
        consecutive(np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="dtype uint64, received int32"):
        first_occurrences(np.zeros(3, np.int32))


@pytest.mark.parametrize("seed", range(4))
def test_relabel_many_equals_one_table_at_a_time(seed: int) -> None:
    rng = np.random.default_rng(seed)
    keys = np.unique(rng.integers(1, 10**12, size=300, dtype=np.uint64))
    if seed == 0:
        keys = np.concatenate([np.zeros(1, np.uint64), keys])  # 0 as a key maps too
    values = rng.integers(0, 10**9, size=(keys.size, 1 + seed), dtype=np.uint64)
    # runs of equal ids, as in a fragment volume, and zeros
    ids = np.repeat(rng.choice(np.concatenate([keys, [np.uint64(0)]]), 2000), 7)
    ids = ids[: 13 * 17 * 19].reshape(13, 17, 19)
    many = relabel_sorted_many(ids, keys, values)
    assert many.shape == (values.shape[1], *ids.shape)
    for t in range(values.shape[1]):
        np.testing.assert_array_equal(many[t], relabel_sorted(ids, keys, values[:, t]))


def test_relabel_many_names_the_first_missing_id() -> None:
    keys = np.array([1, 2, 3], np.uint64)
    ids = np.array([[1, 2], [9, 4]], np.uint64)
    with pytest.raises(ValueError, match=r"id 9 \(first at index \(1, 0\)\)"):
        relabel_sorted_many(ids, keys, np.ones((3, 2), np.uint64))
    with pytest.raises(ValueError, match="values \\(n, tables\\)"):
        relabel_sorted_many(ids, keys, np.ones((2, 2), np.uint64))
