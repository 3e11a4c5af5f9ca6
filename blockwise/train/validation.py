"""Validation on a held-out region of the training volume.

The region is predicted with the current weights in tiles of the training
output shape (the last tile of an axis is shifted back to end at the region's
end), and scored two ways:

- ``loss``: class-balanced MSE against the ground-truth affinities;
- a cheap segmentation: connected components of the graph whose edges are the
  nearest-neighbour affinities above ``threshold`` (no watershed, no
  agglomeration), scored with VOI split/merge and adapted Rand error against
  the labels (label 0 ignored). It tracks whether the boundaries close, not the
  pipeline's final quality.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import product

import numpy as np
import torch
from funlib.geometry import Coordinate, Roi
from gunpowder.nodes.add_affinities import seg_to_affgraph
from numpy.typing import NDArray
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from blockwise.config import Vec3
from blockwise.geometry import roi_slices
from blockwise.metrics import Contingency, scores
from blockwise.nn.architecture import normalize_raw
from blockwise.train.data import TrainingVolume


@dataclass(frozen=True)
class ValidationResult:
    """Scores of one validation pass."""

    loss: float
    voi_split: float
    voi_merge: float
    arand: float
    seconds: float


def tile_starts(size: int, tile: int) -> list[int]:
    """Starts of tiles of length ``tile`` covering ``[0, size)``; the last ends at ``size``."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile + 1, tile))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def predict_region(
    model: torch.nn.Module,
    raw: NDArray[np.uint8],
    context_vx: Vec3,
    tile_output_vx: Vec3,
    device: str = "cpu",
) -> NDArray[np.float32]:
    """Affinities for the centre of ``raw`` (``raw`` minus ``context_vx`` on every side).

    Args:
        model: the U-Net (eval mode is set here and restored by the caller).
        raw: uint8 intensities including the context.
        context_vx: the network's context per side (z, y, x).
        tile_output_vx: a valid output shape of the network, at most the region's shape.
        device: torch device.

    Returns:
        float32 ``(channels, z, y, x)`` for the region.
    """
    region = tuple(s - 2 * c for s, c in zip(raw.shape, context_vx, strict=True))
    out: NDArray[np.float32] | None = None
    starts = [tile_starts(r, t) for r, t in zip(region, tile_output_vx, strict=True)]
    with torch.no_grad():
        for z, y, x in product(*starts):
            begin = (z, y, x)
            window = tuple(
                slice(b, b + t + 2 * c)
                for b, t, c in zip(begin, tile_output_vx, context_vx, strict=True)
            )
            tensor = torch.from_numpy(normalize_raw(raw[window]))[None, None].to(device)
            pred = model(tensor)[0].float().cpu().numpy()
            if out is None:
                out = np.zeros((pred.shape[0], *region), dtype=np.float32)
            target = tuple(slice(b, b + t) for b, t in zip(begin, tile_output_vx, strict=True))
            out[(slice(None), *target)] = pred
    assert out is not None
    return out


def affinity_components(affs: NDArray[np.float32], threshold: float) -> NDArray[np.uint64]:
    """Connected components of voxels linked by nearest-neighbour affinities > ``threshold``.

    ``affs[0:3]`` are the offsets (-1, 0, 0), (0, -1, 0), (0, 0, -1): channel
    ``d`` at voxel v links v and its predecessor along axis ``d``.
    """
    shape = affs.shape[1:]
    index = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    rows, cols = [], []
    for d in range(3):
        cut = [slice(None)] * 3
        cut[d] = slice(1, None)
        prev = [slice(None)] * 3
        prev[d] = slice(None, -1)
        linked = affs[d][tuple(cut)] > threshold
        rows.append(index[tuple(cut)][linked])
        cols.append(index[tuple(prev)][linked])
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    graph = coo_matrix((np.ones(r.size, dtype=np.int8), (r, c)), shape=(index.size,) * 2)
    _, labels = connected_components(graph, directed=False)
    return (labels.reshape(shape) + 1).astype(np.uint64)


def balanced_mse(
    pred: NDArray[np.float32], target: NDArray[np.float32], mask: NDArray[np.float32]
) -> float:
    """:func:`blockwise.nn.losses.balanced_mse_loss` of numpy arrays (the training loss)."""
    from blockwise.nn.losses import balanced_mse_loss

    return float(
        balanced_mse_loss(torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(mask))
    )


def validate(
    model: torch.nn.Module,
    volume: TrainingVolume,
    roi: Roi,
    offsets: list[Vec3],
    context_vx: Vec3,
    tile_output_vx: Vec3,
    threshold: float,
    device: str = "cpu",
) -> ValidationResult:
    """Predict ``roi`` (nm, inside the training region with its context) and score it."""
    start = time.perf_counter()
    vs = volume.voxel_size
    context_nm = Coordinate(context_vx) * vs
    read = roi.grow(context_nm, context_nm)
    raw = volume.raw[roi_slices(read, volume.roi, vs)]
    was_training = model.training
    model.eval()
    try:
        affs = predict_region(model, raw, context_vx, tile_output_vx, device)
    finally:
        model.train(was_training)
    labels = volume.labels[roi_slices(roi, volume.roi, vs)]
    # targets need each voxel's neighbours: take them from the grown region
    reach = Coordinate(max(abs(o[d]) for o in offsets) for d in range(3)) * vs
    grown = roi.grow(reach, reach).intersect(volume.roi)
    target_full = seg_to_affgraph(volume.labels[roi_slices(grown, volume.roi, vs)], offsets)
    crop = roi_slices(roi, grown, vs)
    target = target_full[(slice(None), *crop)].astype(np.float32)
    mask = np.ones_like(target)
    loss = balanced_mse(affs, target, mask)
    contingency = Contingency()
    contingency.add(labels, affinity_components(affs[:3], threshold))
    result = scores(contingency)
    return ValidationResult(
        loss=loss,
        voi_split=result.voi_split,
        voi_merge=result.voi_merge,
        arand=result.arand,
        seconds=time.perf_counter() - start,
    )
