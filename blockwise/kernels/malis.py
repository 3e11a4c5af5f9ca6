"""Constrained two-pass MALIS weights (Funke et al. 2018, Sec. 3.2; Turaga et al. 2009).

MALIS trains affinities on the edges that decide the segmentation: for a pair of
voxels, the *maximin edge* is the edge of smallest affinity on the path between
them whose smallest affinity is largest; it is the edge at which Kruskal's
algorithm (edges by affinity, descending) first joins the two voxels. The
weight of an edge is the number of voxel pairs whose maximin edge it is.

The constrained version counts the two kinds of pairs on two modified copies of
the predicted affinities ``pred``, with ``gt`` the ground-truth affinity of an
edge (1 if both ends carry the same non-zero label, else 0):

* **positive pass** on ``min(pred, gt)`` (every edge between different objects
  or touching background is 0): each Kruskal merge counts the pairs of voxels of
  the *same* object it joins;
* **negative pass** on ``max(pred, gt)`` (every edge inside one object is 1):
  each merge counts the pairs of voxels of *different* objects it joins.

Conventions:

* Channel ``c`` at voxel ``p`` is the edge ``(p, p + offsets[c])``; edges whose
  second end lies outside the volume do not exist and get weight 0. Any offsets
  work (long-range ones included); the graph need not be connected, and pairs
  in different connected components of the grid graph are never counted.
* Label 0 is background / unlabelled: its voxels are nodes of the graph (paths
  may run through them) but take part in no pair, so they add no weight.
* Ties: edges of equal (constrained) affinity are taken in ascending edge id,
  the index of the edge in the C-order flattened ``(C, Z, Y, X)`` array.
* Each weight is one exact integer count computed in 64 bits, returned as
  float32 (exact up to 2**24 pairs; relative error below 6e-8 above).

Cost: O(E) for the sort (radix on the float bits) plus O(E α(n)) for Kruskal
and O(n log n) for the per-component label histograms, merged small into large;
E ≤ C·Z·Y·X edges, n = Z·Y·X voxels. Memory: about 21 bytes per edge and 32 per
voxel on top of the inputs and the two float32 outputs. One thread, no GIL held.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from blockwise.errors import InputError
from blockwise.kernels import _malis

__all__ = [
    "MalisWeights",
    "compute_malis_weights",
    "malis_weights",
    "same_object_edges",
    "validated_offsets",
]

logger = logging.getLogger(__name__)

# Edge ids are 32-bit in the kernel.
_MAX_EDGES = 2**32 - 1


@dataclass(frozen=True)
class MalisWeights:
    """The weights of both passes and how many pairs they count.

    Attributes:
        positive: (C, Z, Y, X) float32; for each edge, the pairs of voxels of the
            same object whose maximin edge it is in the positive pass.
        negative: (C, Z, Y, X) float32; for each edge, the pairs of voxels of
            different objects whose maximin edge it is in the negative pass.
        n_same_pairs: exact sum of ``positive``: the pairs of labelled voxels of
            one object joined by some path (all such pairs when the offsets
            include the three nearest neighbours).
        n_different_pairs: exact sum of ``negative``: the pairs of labelled
            voxels of different objects joined by some path.
    """

    positive: NDArray[np.float32]
    negative: NDArray[np.float32]
    n_same_pairs: int
    n_different_pairs: int


def malis_weights(
    affinities: NDArray[np.float32],
    labels: NDArray[np.integer],
    offsets: Sequence[Sequence[int]],
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Return the positive- and negative-pass MALIS weights of every edge.

    See the module docstring for the passes, the background rule and the tie
    order; :func:`compute_malis_weights` also returns the pair totals.

    Args:
        affinities: (C, Z, Y, X) float32 predicted affinities, finite, in [0, 1].
        labels: (Z, Y, X) non-negative integer ground-truth object ids; 0 is
            background.
        offsets: C offsets (dz, dy, dx) in voxels, one per channel.

    Returns:
        (positive, negative), each float32 of the shape of ``affinities``.

    Raises:
        InputError: if a shape, dtype, offset or value is not as described.
    """
    weights = compute_malis_weights(affinities, labels, offsets)
    return weights.positive, weights.negative


def compute_malis_weights(
    affinities: NDArray[np.float32],
    labels: NDArray[np.integer],
    offsets: Sequence[Sequence[int]],
) -> MalisWeights:
    """Compute both MALIS passes; arguments and errors as :func:`malis_weights`."""
    if not isinstance(affinities, np.ndarray):
        raise InputError(f"affinities must be a numpy array, received {type(affinities).__name__}")
    if affinities.ndim != 4 or affinities.shape[0] < 1:
        raise InputError(
            f"affinities must have shape (channels >= 1, z, y, x), received {affinities.shape}"
        )
    if affinities.dtype != np.float32:
        raise InputError(f"affinities must be float32, received {affinities.dtype}")
    if not isinstance(labels, np.ndarray):
        raise InputError(f"labels must be a numpy array, received {type(labels).__name__}")
    if labels.shape != affinities.shape[1:]:
        raise InputError(
            f"labels must have the spatial shape of the affinities {affinities.shape[1:]}, "
            f"received {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"labels must be an integer array, received {labels.dtype}")
    offsets_array = validated_offsets(offsets, affinities.shape[0])
    if affinities.size > _MAX_EDGES:
        raise InputError(
            f"affinities hold {affinities.size} edges, more than the kernel's limit of "
            f"{_MAX_EDGES}; compute the weights on smaller crops"
        )

    positive = np.zeros(affinities.shape, dtype=np.float32)
    negative = np.zeros(affinities.shape, dtype=np.float32)
    if affinities.size == 0:
        return MalisWeights(positive, negative, 0, 0)
    if labels.size and np.issubdtype(labels.dtype, np.signedinteger) and labels.min() < 0:
        raise InputError(
            f"labels must be >= 0 (0 = background), received a minimum of {labels.min()}"
        )
    low, high = float(affinities.min()), float(affinities.max())
    if not (np.isfinite(low) and np.isfinite(high)) or low < 0.0 or high > 1.0:
        raise InputError(
            f"affinities must be finite and in [0, 1], received values from {low} to {high}"
            + ("" if np.isfinite(affinities).all() else " (NaN or infinite values included)")
        )
    # Both arrays are only read by the kernel: no copy if already C-contiguous uint64/float32.
    n_same, n_different = _malis.malis_weights_kernel(
        np.ascontiguousarray(affinities),
        np.ascontiguousarray(labels, dtype=np.uint64),
        offsets_array,
        positive,
        negative,
    )
    logger.debug(
        "MALIS weights on %s: %d same-object and %d different-object pairs",
        affinities.shape,
        n_same,
        n_different,
    )
    return MalisWeights(positive, negative, int(n_same), int(n_different))


def validated_offsets(
    offsets: Sequence[Sequence[int]], n_channels: int | None = None
) -> NDArray[np.int64]:
    """Return ``offsets`` as a C-contiguous (n_channels, 3) int64 array.

    Args:
        offsets: One (dz, dy, dx) integer offset in voxels per channel.
        n_channels: The number of affinity channels, if it must match.

    Raises:
        InputError: if there are not ``n_channels`` offsets, an offset does not
            hold three integers (each of magnitude below 2**31), or an
            offset is (0, 0, 0).
    """
    if isinstance(offsets, str | bytes) or not isinstance(offsets, Sequence | np.ndarray):
        raise InputError(
            f"offsets must be a sequence of (dz, dy, dx) integer triples, received "
            f"{type(offsets).__name__}"
        )
    if n_channels is not None and len(offsets) != n_channels:
        raise InputError(
            f"affinities have {n_channels} channels but {len(offsets)} offsets were given; "
            "they must match"
        )
    rows = []
    for channel, offset in enumerate(offsets):
        values = list(offset) if isinstance(offset, Sequence | np.ndarray) else None
        if (
            values is None
            or len(values) != 3
            or not all(
                isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_)
                for v in values
            )
        ):
            raise InputError(
                f"offset {channel} must be three integers (dz, dy, dx), received {offset!r}"
            )
        if any(abs(int(v)) >= 2**31 for v in values):
            raise InputError(
                f"offset {channel} must have components in (-2**31, 2**31), received {offset!r}"
            )
        if not any(values):
            raise InputError(f"offset {channel} is (0, 0, 0): a voxel has no edge to itself")
        rows.append([int(v) for v in values])
    return np.ascontiguousarray(np.array(rows, dtype=np.int64).reshape(len(rows), 3))


def same_object_edges(
    labels: NDArray[np.integer], offsets: Sequence[Sequence[int]]
) -> NDArray[np.bool_]:
    """Return the ground-truth affinities of ``labels``: edges inside one object.

    Args:
        labels: (Z, Y, X) non-negative integer object ids; 0 is background.
        offsets: One (dz, dy, dx) offset in voxels per output channel.

    Returns:
        (C, Z, Y, X) bool, True at channel ``c``, voxel ``p`` where ``p`` and
        ``p + offsets[c]`` both lie in the volume and carry the same non-zero
        label: the ``gt`` of the module docstring.

    Raises:
        InputError: if ``labels`` is not a 3D integer array or an offset is bad.
    """
    if not isinstance(labels, np.ndarray) or labels.ndim != 3:
        raise InputError(
            f"labels must be a 3D (z, y, x) numpy array, received "
            f"{getattr(labels, 'shape', type(labels).__name__)}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"labels must be an integer array, received {labels.dtype}")
    offsets_array = validated_offsets(offsets)
    out = np.zeros((len(offsets_array), *labels.shape), dtype=bool)
    offset: list[int]
    for channel, offset in enumerate(offsets_array.tolist()):
        # p runs over the voxels whose p + offset is inside; stops are clamped
        # at 0 so that an offset longer than the volume selects nothing
        here: tuple[slice, ...] = tuple(
            slice(max(0, -o), max(0, min(s, s - o)))
            for o, s in zip(offset, labels.shape, strict=True)
        )
        there: tuple[slice, ...] = tuple(
            slice(max(0, o), max(0, min(s, s + o)))
            for o, s in zip(offset, labels.shape, strict=True)
        )
        a, b = labels[here], labels[there]
        out[channel][here] = (a == b) & (a != 0)
    return out
