"""Number a block's fragments with global ids, and measure their sizes and centres."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from blockwise.kernels import _block_numbering
from blockwise.kernels.checks import require_volume

__all__ = ["BlockFragments", "number_block"]


class BlockFragments(NamedTuple):
    """What :func:`number_block` returns."""

    #: (z, y, x) uint64 global fragment ids (0: none)
    ids: NDArray[np.uint64]
    #: the id of the first fragment: fragment ``k`` (from 0) has id ``first_id + k``
    first_id: int
    #: the number of fragments
    n_fragments: int
    #: voxels per fragment, int64
    sizes: NDArray[np.int64]
    #: per fragment, the sums of its voxels' (z, y, x) indices, int64 (exact)
    coordinate_sums: NDArray[np.int64]


def number_block(local: NDArray[np.uint64], top: int, first_id: int) -> BlockFragments:
    """Renumber the local ids of a block's write region as global ids, in one pass.

    The ids present in ``local`` (any of 1..``top``) become ``first_id``,
    ``first_id + 1``, ... in increasing local-id order: the ids of
    ``consecutive(local)`` (:func:`~blockwise.kernels.relabel.consecutive`)
    plus ``first_id - 1``. Sizes and coordinate sums come from the same pass.

    Args:
        local: (z, y, x) uint64 local ids, 0 for none; may be a strided view.
        top: the largest local id there can be.
        first_id: the global id of the first fragment, at least 1.

    Raises:
        ValueError: on a dtype or shape other than 3D uint64, ``first_id`` < 1,
            ids that would pass 2**64 - 1, or a local id above ``top``.
    """
    require_volume("local", local, np.uint64)
    if top < 0 or first_id < 1 or first_id + top - 1 > np.iinfo(np.uint64).max:
        raise ValueError(
            f"expected top >= 0 and global ids first_id..first_id + top - 1 in "
            f"1..2**64 - 1, received top {top} and first_id {first_id}"
        )
    ids = np.empty(local.shape, dtype=np.uint64)
    sizes = np.zeros(top, dtype=np.int64)
    sums = np.zeros((top, 3), dtype=np.int64)
    count = _block_numbering.number_block(local, top, first_id, ids, sizes, sums)
    if count < 0:
        raise ValueError(f"local holds an id above top = {top} (largest {int(local.max())})")
    return BlockFragments(ids, first_id, int(count), sizes[:count], sums[:count])
