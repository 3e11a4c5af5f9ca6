"""Training losses for affinity networks: class-balanced MSE and constrained MALIS.

The paper (Funke et al. 2018, arXiv 1709.02974) trains with the balanced MSE
first and switches to MALIS later; both take the network output as is, so a
training loop picks one per iteration or adds them::

    loss = balanced_mse_loss(pred, target_affs, mask)          # early iterations
    loss = malis_loss(pred, labels, offsets)                   # later iterations
    loss = balanced_mse_loss(pred, target_affs, mask) + malis_loss(pred, labels, offsets)

Shapes: ``pred`` is ``(B, C, Z, Y, X)`` or one sample ``(C, Z, Y, X)``, with
values in [0, 1] (a sigmoid output); channel ``c`` at voxel ``p`` is the
affinity of ``p`` and ``p + offsets[c]``. Both losses return a 0-dim tensor of
``pred``'s dtype on ``pred``'s device, with gradients flowing into ``pred`` only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import NDArray

from blockwise.errors import InputError
from blockwise.kernels.malis import compute_malis_weights, same_object_edges, validated_offsets

__all__ = ["balance_weights", "balanced_mse_loss", "malis_loss"]

logger = logging.getLogger(__name__)

# gunpowder's BalanceLabels defaults: a class fraction is clipped into
# [0.05, 0.95] before weighting, so a class of a few edges is not weighted up
# by a huge factor.
CLIP_MIN = 0.05
CLIP_MAX = 0.95


def balance_weights(
    target_affs: torch.Tensor,
    mask: torch.Tensor | None = None,
    clip_min: float = CLIP_MIN,
    clip_max: float = CLIP_MAX,
) -> torch.Tensor:
    """Return per-edge weights that balance positive and negative edges.

    As gunpowder's ``BalanceLabels`` with one slab per sample and channel: in
    each (sample, channel) the edges with ``target > 0.5`` form the positive
    class; a class with fraction ``f`` of the masked-in edges (clipped into
    [clip_min, clip_max]) gets the weight ``1 / (2 f)``, so both classes add
    up to about half of the total weight. Masked-out edges get 0.

    Args:
        target_affs: (B, C, Z, Y, X) target affinities in [0, 1].
        mask: 1 (or True) where the target is known, 0 elsewhere: the shape of
            ``target_affs``, or (B, Z, Y, X) applied to every channel; None
            means everywhere.
        clip_min: Smallest class fraction used for weighting.
        clip_max: Largest class fraction used for weighting.

    Returns:
        Weights of the shape and dtype of ``target_affs``, without gradient.
    """
    with torch.no_grad():
        positive = target_affs > 0.5
        if mask is None:
            inside = torch.ones_like(positive)
        else:
            inside = mask.to(device=target_affs.device) != 0
            if inside.dim() == target_affs.dim() - 1:
                inside = inside.unsqueeze(1)
            inside = inside.expand_as(positive)
        spatial = (2, 3, 4)
        n_inside = inside.sum(dim=spatial, keepdim=True).to(torch.float64)
        n_positive = (positive & inside).sum(dim=spatial, keepdim=True).to(torch.float64)
        fraction = torch.where(n_inside > 0, n_positive / n_inside.clamp(min=1), 0.0)
        weight_positive = 0.5 / fraction.clamp(clip_min, clip_max)
        weight_negative = 0.5 / (1.0 - fraction).clamp(clip_min, clip_max)
        weights = torch.where(positive, weight_positive, weight_negative) * inside
        return weights.to(target_affs.dtype)


def balanced_mse_loss(
    pred: torch.Tensor,
    target_affs: torch.Tensor,
    labels_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Class-balanced mean squared error over the affinity edges.

    ``sum(w * (pred - target)^2) / n`` with ``w`` from :func:`balance_weights`
    and ``n`` the number of masked-in edges (tensorflow's "sum by non-zero
    weights", as the MALA training scripts use); without clipping the weights
    of the masked-in edges average to 1, so the loss is a balanced mean. 0 if
    no edge is masked in.

    Args:
        pred: (B, C, Z, Y, X) or (C, Z, Y, X) predicted affinities.
        target_affs: Target affinities of the same shape, in [0, 1].
        labels_mask: Where the target is known (non-zero): the shape of
            ``pred``, or its shape without the channel axis (applied to every
            channel); None means everywhere.

    Raises:
        InputError: if a shape or dtype does not fit.
    """
    pred5 = _batched_prediction(pred)
    if not isinstance(target_affs, torch.Tensor) or target_affs.shape != pred.shape:
        raise InputError(
            f"target_affs must be a tensor of the prediction's shape {tuple(pred.shape)}, "
            f"received {_describe(target_affs)}"
        )
    target5 = target_affs.reshape(pred5.shape).to(device=pred.device, dtype=pred.dtype)
    mask5 = None
    if labels_mask is not None:
        channel_free = (*pred.shape[:-4], *pred.shape[-3:])
        if not isinstance(labels_mask, torch.Tensor) or tuple(labels_mask.shape) not in (
            tuple(pred.shape),
            channel_free,
        ):
            raise InputError(
                f"labels_mask must be a tensor of shape {tuple(pred.shape)} (per edge) or "
                f"{channel_free} (per voxel, all channels), received {_describe(labels_mask)}"
            )
        mask5 = labels_mask.reshape(
            pred5.shape if labels_mask.shape == pred.shape else (pred5.shape[0], *pred5.shape[2:])
        )
    weights = balance_weights(target5, mask5)
    n_inside = int(torch.count_nonzero(weights))
    return (weights * (pred5 - target5) ** 2).sum() / max(n_inside, 1)


def malis_loss(
    pred: torch.Tensor,
    target_labels: torch.Tensor | NDArray[np.integer],
    offsets: Sequence[Sequence[int]],
) -> torch.Tensor:
    """Constrained two-pass MALIS loss (Funke et al. 2018, Sec. 3.2).

    For every pair of labelled voxels joined by the affinity graph, the loss
    compares the affinity of its maximin edge with 1 (same object) or 0
    (different objects). Same-object pairs are scored on the positive pass's
    affinities ``min(pred, gt)``, different-object pairs on the negative pass's
    ``max(pred, gt)`` (``gt`` = 1 inside one object, else 0; see
    :mod:`blockwise.kernels.malis`). Summed over the edges with the pass
    weights ``w_pos`` and ``w_neg`` (pairs per maximin edge)::

        loss = sum(w_pos * (1 - min(pred, gt))^2 + w_neg * max(pred, gt)^2) / n_pairs

    Where the constraint is not active, this is ``w_pos (1 - pred)^2`` on edges
    inside objects and ``w_neg pred^2`` on the others, and the gradient flows
    into ``pred``. Where it is active, the term is the constant ``w``: a
    same-object pair joined only across a boundary (an object cut in two by the
    crop) has maximin affinity 0 in the positive pass, and pushing that boundary
    edge towards 1 would be wrong, so it gets no gradient; likewise a pair of
    different objects first joined by an edge inside an object.

    The normaliser ``n_pairs`` is the number of pairs counted, same-object plus
    different-object, over the whole batch (at least 1): the loss is the mean
    squared error per voxel pair, in [0, 1], whatever the crop size.

    The weights are computed by the compiled kernel on a detached float32 copy
    of ``pred`` (on the CPU) and held fixed: they depend on ``pred`` only through
    the order of the edges, so they are piecewise constant and the gradient of
    the loss is the gradient with fixed weights almost everywhere.

    Args:
        pred: (B, C, Z, Y, X) or (C, Z, Y, X) predicted affinities in [0, 1].
        target_labels: (B, Z, Y, X) or (Z, Y, X) non-negative integer object ids
            (0 = background/unlabelled: such voxels join no pair); a tensor or a
            numpy array.
        offsets: C offsets (dz, dy, dx) in voxels, one per channel.

    Raises:
        InputError: if a shape, dtype, offset or affinity value does not fit.
    """
    pred5 = _batched_prediction(pred)
    labels = _labels_array(target_labels)
    expected = (*pred.shape[:-4], *pred.shape[-3:])
    if labels.shape != expected:
        raise InputError(
            f"target_labels must have shape {expected} (the prediction {tuple(pred.shape)} "
            f"without its channel axis), received {labels.shape}"
        )
    offsets_array = validated_offsets(offsets, pred5.shape[1])
    labels4 = labels.reshape(pred5.shape[0], *pred5.shape[2:])
    affs = pred5.detach().to(device="cpu", dtype=torch.float32).numpy()

    w_positive = np.empty(affs.shape, dtype=np.float64)
    w_negative = np.empty(affs.shape, dtype=np.float64)
    inside = np.empty(affs.shape, dtype=bool)
    n_pairs = 0
    for sample in range(affs.shape[0]):
        weights = compute_malis_weights(affs[sample], labels4[sample], offsets_array.tolist())
        w_positive[sample] = weights.positive
        w_negative[sample] = weights.negative
        inside[sample] = same_object_edges(labels4[sample], offsets_array.tolist())
        n_pairs += weights.n_same_pairs + weights.n_different_pairs
    logger.debug("MALIS loss over %d voxel pairs", n_pairs)

    # normalised in float64, then cast once: pair counts reach ~1e11 on 84^3 crops
    scale = 1.0 / max(n_pairs, 1)
    w_pos = torch.from_numpy(w_positive * scale).to(device=pred.device, dtype=pred.dtype)
    w_neg = torch.from_numpy(w_negative * scale).to(device=pred.device, dtype=pred.dtype)
    gt = torch.from_numpy(inside).to(device=pred.device)
    one = torch.ones((), dtype=pred.dtype, device=pred.device)
    positive_error = torch.where(gt, (1.0 - pred5) ** 2, one)  # (1 - min(pred, gt))^2
    negative_error = torch.where(gt, one, pred5**2)  # max(pred, gt)^2
    return (w_pos * positive_error + w_neg * negative_error).sum()


def _batched_prediction(pred: object) -> torch.Tensor:
    """``pred`` as (B, C, Z, Y, X), a view; checks it is a floating tensor."""
    if not isinstance(pred, torch.Tensor) or not pred.is_floating_point():
        raise InputError(f"pred must be a floating-point tensor, received {_describe(pred)}")
    if pred.dim() == 4:
        return pred.unsqueeze(0)
    if pred.dim() == 5:
        return pred
    raise InputError(
        f"pred must have shape (B, C, Z, Y, X) or (C, Z, Y, X), received {tuple(pred.shape)}"
    )


def _labels_array(labels: object) -> NDArray[np.integer]:
    """Integer labels as a numpy array (tensors are copied to the CPU)."""
    if isinstance(labels, torch.Tensor):
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise InputError(f"target_labels must be integers, received {labels.dtype}")
        labels = labels.detach().cpu().numpy()
    if not isinstance(labels, np.ndarray) or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(
            f"target_labels must be an integer tensor or numpy array, received {_describe(labels)}"
        )
    return labels


def _describe(value: object) -> str:
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is None:
        return type(value).__name__
    return f"{type(value).__name__} of shape {tuple(shape)} and dtype {dtype}"
