"""Relabel id volumes through lookup tables, and list the ids they hold."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from blockwise.kernels import _relabel

__all__ = ["consecutive", "first_occurrences", "relabel", "relabel_sorted", "relabel_sorted_many"]


def relabel(
    array: NDArray[np.uint64], keys: NDArray[np.uint64], values: NDArray[np.uint64]
) -> NDArray[np.uint64]:
    """Map every id of ``array`` through the table ``keys[k] -> values[k]``.

    Args:
        array: Ids, any shape.
        keys: 1D table keys, distinct, in any order.
        values: 1D table values, one per key.

    Returns:
        A new array of the shape of ``array`` holding the mapped ids. 0 maps to 0
        unless 0 is a key.

    Raises:
        ValueError: if a dtype is not uint64, the table is not 1D, ``keys`` and
            ``values`` differ in length, a key repeats, or an id of ``array``
            (other than 0) is not a key; the message names the first such id in
            C order.
    """
    _check_uint64("array", array)
    _check_uint64("keys", keys)
    _check_uint64("values", values)
    if keys.ndim != 1 or values.ndim != 1:
        raise ValueError(
            f"keys and values must be 1D, received shapes {keys.shape} and {values.shape}"
        )
    if keys.shape != values.shape:
        raise ValueError(
            f"keys and values must have the same length, received {keys.size} keys "
            f"and {values.size} values"
        )
    order = np.argsort(keys, kind="stable")
    sorted_keys = np.ascontiguousarray(keys[order])
    sorted_values = np.ascontiguousarray(values[order])
    repeated = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
    if repeated.size:
        raise ValueError(
            f"keys must be distinct, but key {sorted_keys[repeated[0]]} appears more than once"
        )
    return _relabel_checked(array, sorted_keys, sorted_values)


def relabel_sorted(
    array: NDArray[np.uint64], sorted_keys: NDArray[np.uint64], values: NDArray[np.uint64]
) -> NDArray[np.uint64]:
    """:func:`relabel` through a table whose keys are already sorted and distinct.

    The caller vouches for the order (check it once, e.g. when loading the
    table); this skips the O(n log n) sort that :func:`relabel` pays per call.

    Raises:
        ValueError: on a dtype other than uint64, tables of different lengths, or
            an id of ``array`` (other than 0) that is not a key.
    """
    _check_uint64("array", array)
    _check_uint64("keys", sorted_keys)
    _check_uint64("values", values)
    if sorted_keys.ndim != 1 or sorted_keys.shape != values.shape:
        raise ValueError(
            f"keys and values must be 1D of one length, received shapes {sorted_keys.shape} "
            f"and {values.shape}"
        )
    return _relabel_checked(array, np.ascontiguousarray(sorted_keys), np.ascontiguousarray(values))


def relabel_sorted_many(
    array: NDArray[np.uint64], sorted_keys: NDArray[np.uint64], values: NDArray[np.uint64]
) -> NDArray[np.uint64]:
    """:func:`relabel_sorted` through several tables that share their keys, in one pass.

    Args:
        array: Ids, any shape.
        sorted_keys: 1D table keys, sorted and distinct (the caller vouches).
        values: (keys, tables): column ``t`` is table ``t``'s values.

    Returns:
        (tables, *array.shape): ``out[t]`` equals ``relabel_sorted(array, sorted_keys,
        values[:, t])``.

    Raises:
        ValueError: on a dtype other than uint64, a table of another length than the
            keys, or an id of ``array`` (other than 0) that is not a key.
    """
    _check_uint64("array", array)
    _check_uint64("keys", sorted_keys)
    _check_uint64("values", values)
    if sorted_keys.ndim != 1 or values.ndim != 2 or values.shape[0] != sorted_keys.size:
        raise ValueError(
            f"expected keys (n,) and values (n, tables), received shapes {sorted_keys.shape} "
            f"and {values.shape}"
        )
    flat = np.ascontiguousarray(array).reshape(-1)
    out = np.empty((values.shape[1], flat.size), dtype=np.uint64)
    missing = _relabel.relabel_flat_many(
        flat, np.ascontiguousarray(sorted_keys), np.ascontiguousarray(values), out
    )
    if missing >= 0:
        _raise_missing(array, flat, missing, sorted_keys.size)
    return out.reshape((values.shape[1], *array.shape))


def _raise_missing(
    array: NDArray[np.uint64], flat: NDArray[np.uint64], missing: int, n_keys: int
) -> None:
    index = np.unravel_index(missing, array.shape)
    raise ValueError(
        f"id {flat[missing]} (first at index {tuple(int(i) for i in index)}) is not "
        f"among the {n_keys} keys of the table; expected every non-zero id to "
        "be a key"
    )


def _relabel_checked(
    array: NDArray[np.uint64], sorted_keys: NDArray[np.uint64], sorted_values: NDArray[np.uint64]
) -> NDArray[np.uint64]:
    flat = np.ascontiguousarray(array).reshape(-1)
    out = np.empty(flat.shape, dtype=np.uint64)
    missing = _relabel.relabel_flat(flat, sorted_keys, sorted_values, out)
    if missing >= 0:
        _raise_missing(array, flat, missing, sorted_keys.size)
    return out.reshape(array.shape)


def consecutive(array: NDArray[np.uint64]) -> tuple[NDArray[np.uint64], int]:
    """Relabel the non-zero ids of ``array`` to 1..n in increasing id order.

    Args:
        array: Ids, any shape; 0 is background.

    Returns:
        The relabelled array (0 stays 0) and n, the number of distinct non-zero ids.

    Raises:
        ValueError: if ``array`` is not uint64.
    """
    _check_uint64("array", array)
    flat = np.ascontiguousarray(array).reshape(-1)
    ids = _relabel.unique_nonzero(flat)
    new_ids = np.arange(1, ids.size + 1, dtype=np.uint64)
    return relabel(array, ids, new_ids), int(ids.size)


def unique_nonzero(array: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """The distinct non-zero ids of ``array``, increasing (``np.unique`` without 0, faster
    on label volumes: runs of one id are skipped before the sort).

    Raises:
        ValueError: if ``array`` is not uint64.
    """
    _check_uint64("array", array)
    return _relabel.unique_nonzero(np.ascontiguousarray(array).reshape(-1))


def first_occurrences(array: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """List the distinct non-zero ids of ``array`` in the order of their first voxel.

    Args:
        array: Ids, any shape, read in C order.

    Returns:
        1D uint64 array of ids; ``first_occurrences(a)[k]`` is the (k+1)-th
        distinct non-zero id met when reading ``a`` in C order.

    Raises:
        ValueError: if ``array`` is not uint64.
    """
    _check_uint64("array", array)
    return _relabel.first_occurrences(np.ascontiguousarray(array).reshape(-1))


def _check_uint64(name: str, array: object) -> None:
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, received {type(array).__name__}")
    if array.dtype != np.uint64:
        raise ValueError(f"{name} must have dtype uint64, received {array.dtype}")
