"""Fragment -> segment lookup tables: the file format and a prepared relabel.

find_segments writes one table per threshold (``.npz`` with ``fragment_ids``,
sorted, and ``segment_ids``); relabel loads each once per worker as a
:class:`PreparedTable`, whose keys are already sorted and checked, so a block
is relabelled without re-sorting the whole table.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from blockwise.errors import InputError
from blockwise.kernels.relabel import relabel_sorted, relabel_sorted_many


@dataclass(frozen=True)
class SegmentTable:
    """Fragment ids (sorted) and the segment id of each at one threshold."""

    threshold: float
    fragment_ids: NDArray[np.uint64]
    segment_ids: NDArray[np.uint64]

    @property
    def num_segments(self) -> int:
        """Number of distinct segments."""
        return len(np.unique(self.segment_ids))


def save_table(path: Path, table: SegmentTable) -> None:
    """Write a lookup table atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, fragment_ids=table.fragment_ids, segment_ids=table.segment_ids)
    tmp.replace(path)


def load_table(path: Path, threshold: float) -> SegmentTable:
    """Read the lookup table of one threshold.

    Raises:
        InputError: if the file is missing or not a lookup table.
    """
    if not path.is_file():
        raise InputError(
            f"lookup table {path} does not exist; find_segments has not finished for "
            f"threshold {threshold}"
        )
    with np.load(path) as data:
        if set(data.files) != {"fragment_ids", "segment_ids"}:
            raise InputError(
                f"{path} is not a lookup table: expected arrays fragment_ids and segment_ids, "
                f"found {sorted(data.files)}"
            )
        return SegmentTable(threshold, data["fragment_ids"], data["segment_ids"])


@dataclass(frozen=True)
class PreparedTable:
    """A lookup table ready to relabel many blocks: keys sorted, distinct, uint64."""

    table: SegmentTable

    @classmethod
    def load(cls, path: Path, threshold: float) -> PreparedTable:
        """Load a table and check it once.

        Raises:
            InputError: if the keys are not sorted and distinct uint64.
        """
        table = load_table(path, threshold)
        keys = table.fragment_ids
        if keys.dtype != np.uint64 or table.segment_ids.dtype != np.uint64:
            raise InputError(f"{path}: lookup table ids must be uint64, found {keys.dtype}")
        if keys.shape != table.segment_ids.shape or keys.ndim != 1:
            raise InputError(
                f"{path}: {keys.shape} fragment ids but {table.segment_ids.shape} segment ids"
            )
        if keys.size > 1 and not np.all(keys[1:] > keys[:-1]):
            raise InputError(f"{path}: fragment ids are not sorted and distinct")
        return cls(table)

    def relabel(self, fragments: NDArray[np.uint64]) -> NDArray[np.uint64]:
        """The segmentation of ``fragments`` (0 stays 0)."""
        return relabel_sorted(fragments, self.table.fragment_ids, self.table.segment_ids)


#: the most bytes of segmentations a block relabels in one pass (else one table at a time)
ONE_PASS_BYTES = 256 << 20


@dataclass(frozen=True)
class PreparedTables:
    """Every threshold's table, relabelling a block in one pass where they share keys.

    find_segments writes every threshold's table over the same fragments; one
    lookup per run of equal fragment ids then serves all of them
    (:func:`~blockwise.kernels.relabel.relabel_sorted_many`). Tables over
    different keys are applied one by one.
    """

    tables: tuple[PreparedTable, ...]
    #: (fragments, thresholds) segment ids where every table has the same keys, else None
    shared: NDArray[np.uint64] | None

    @classmethod
    def of(cls, tables: list[PreparedTable]) -> PreparedTables:
        """Combine prepared tables (their keys are compared once, here)."""
        first = tables[0].table.fragment_ids if tables else None
        if first is not None and all(
            np.array_equal(t.table.fragment_ids, first) for t in tables[1:]
        ):
            shared = np.stack([t.table.segment_ids for t in tables], axis=1)
            return cls(tuple(tables), shared)
        return cls(tuple(tables), None)

    def relabel(self, fragments: NDArray[np.uint64]) -> Iterator[NDArray[np.uint64]]:
        """The segmentation of ``fragments`` at each table's threshold, in table order.

        One pass holds every threshold's segmentation at once; a block whose
        segmentations together exceed :data:`ONE_PASS_BYTES` goes one table
        at a time, computing each when the one before has been taken (write
        it before asking for the next: a whole 100 MVox volume at 4
        thresholds would hold 3.2 GB instead of 0.8).
        """
        one_pass = fragments.size * 8 * len(self.tables) <= ONE_PASS_BYTES
        if self.shared is None or not one_pass:
            for table in self.tables:
                yield table.relabel(fragments)
            return
        keys = self.tables[0].table.fragment_ids
        yield from relabel_sorted_many(fragments, keys, self.shared)
