"""Lookup tables prepared for relabel (blockwise.lut)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from blockwise import lut
from blockwise.lut import PreparedTable, PreparedTables, SegmentTable, save_table


def prepared(tmp_path: Path, threshold: float, keys: list[int], values: list[int]) -> PreparedTable:
    path = tmp_path / f"t{threshold}.npz"
    table = SegmentTable(threshold, np.array(keys, np.uint64), np.array(values, np.uint64))
    save_table(path, table)
    return PreparedTable.load(path, threshold)


def test_tables_over_the_same_keys_relabel_in_one_pass_as_one_by_one(tmp_path: Path) -> None:
    keys = [3, 5, 8, 13]
    tables = [
        prepared(tmp_path, 0.3, keys, [1, 1, 2, 2]),
        prepared(tmp_path, 0.5, keys, [1, 1, 1, 2]),
        prepared(tmp_path, 0.7, keys, [1, 1, 1, 1]),
    ]
    combined = PreparedTables.of(tables)
    assert combined.shared is not None
    fragments = np.array([[0, 3, 3, 5], [8, 8, 13, 0]], np.uint64)
    got = list(combined.relabel(fragments))
    assert len(got) == 3
    for table, segmentation in zip(tables, got, strict=True):
        np.testing.assert_array_equal(segmentation, table.relabel(fragments))


def test_tables_over_other_keys_are_applied_one_by_one(tmp_path: Path) -> None:
    tables = [prepared(tmp_path, 0.3, [3, 5], [1, 2]), prepared(tmp_path, 0.5, [3, 6], [1, 1])]
    combined = PreparedTables.of(tables)
    assert combined.shared is None
    fragments = np.array([0, 3, 3], np.uint64)
    got = list(combined.relabel(fragments))
    assert [g.tolist() for g in got] == [[0, 1, 1], [0, 1, 1]]
    assert list(PreparedTables.of([]).relabel(fragments)) == []


def test_a_block_too_large_for_one_pass_goes_table_by_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = [3, 5]
    tables = [prepared(tmp_path, 0.3, keys, [1, 2]), prepared(tmp_path, 0.5, keys, [1, 1])]
    combined = PreparedTables.of(tables)
    fragments = np.array([0, 3, 5, 5], np.uint64)
    calls = []
    monkeypatch.setattr(lut, "relabel_sorted_many", lambda *a: calls.append(a) or [])
    monkeypatch.setattr(lut, "ONE_PASS_BYTES", fragments.size * 8 * 2)
    assert list(combined.relabel(fragments)) == [] and len(calls) == 1
    monkeypatch.setattr(lut, "ONE_PASS_BYTES", fragments.size * 8 * 2 - 1)
    got = combined.relabel(fragments)
    first = next(got)
    # one table at a time: the next segmentation is made only when asked for
    relabelled = []
    monkeypatch.setattr(PreparedTable, "relabel", lambda self, f: relabelled.append(self) or f)
    rest = list(got)
    assert len(calls) == 1 and relabelled == [tables[1]]
    assert first.tolist() == [0, 1, 2, 2] and len(rest) == 1
