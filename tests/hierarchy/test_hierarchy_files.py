"""The hierarchy's file helpers that are not exercised alone by the stage tests."""

from __future__ import annotations

import numpy as np
import pytest

from blockwise.hierarchy_files import _membership


@pytest.mark.parametrize(
    "ids",
    [
        np.arange(100, 160, dtype=np.uint64),  # a leaf block's fragments: one run of ids
        np.array([100, 101, 103, 104], dtype=np.uint64),  # a gap
        np.array([103, 101, 102, 100], dtype=np.uint64),  # the span fits, unsorted
        np.array([100, 100, 101, 102], dtype=np.uint64),  # repeated, span 3 of 4 ids
        np.array([7], dtype=np.uint64),
        np.zeros(0, dtype=np.uint64),
    ],
)
def test_membership_is_isin(ids: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    values = rng.integers(90, 170, size=5000, dtype=np.uint64)
    values[:3] = [0, 2**64 - 1, 99]
    assert np.array_equal(_membership(ids)(values), np.isin(values, ids))
