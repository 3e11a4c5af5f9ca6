"""Training losses: balanced MSE against gunpowder's BalanceLabels, MALIS against
a pair-by-pair reference, and their gradients against finite differences."""

from __future__ import annotations

import heapq
import itertools

import gunpowder as gp
import numpy as np
import pytest
import torch

from blockwise.errors import InputError
from blockwise.kernels.malis import compute_malis_weights, same_object_edges
from blockwise.nn.losses import balance_weights, balanced_mse_loss, malis_loss

NEAREST = [(-1, 0, 0), (0, -1, 0), (0, 0, -1)]
LONG_RANGE = [*NEAREST, (0, -2, 0), (0, 0, -3), (-1, 1, 2)]


def gunpowder_scales(target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """gunpowder's BalanceLabels on every sample, one slab per channel."""
    node = gp.BalanceLabels(gp.ArrayKey("T"), gp.ArrayKey("S"), slab=(1, -1, -1, -1))
    scales = mask.astype(np.float32).copy()
    for sample, channel in itertools.product(range(target.shape[0]), range(target.shape[1])):
        node._BalanceLabels__balance(  # type: ignore[attr-defined]
            target[sample, channel : channel + 1].astype(np.int64),
            scales[sample, channel : channel + 1],
        )
    return scales


@pytest.mark.parametrize("positive_fraction", [0.5, 0.2, 0.02, 0.0, 1.0])
def test_balance_weights_equal_gunpowder(positive_fraction: float) -> None:
    rng = np.random.default_rng(int(positive_fraction * 100))
    target = (rng.random((2, 3, 4, 5, 6)) < positive_fraction).astype(np.float32)
    mask = (rng.random((2, 3, 4, 5, 6)) < 0.8).astype(np.float32)
    mask[1, 2] = 0  # one channel without any known edge
    ours = balance_weights(torch.from_numpy(target), torch.from_numpy(mask))
    np.testing.assert_allclose(ours.numpy(), gunpowder_scales(target, mask), rtol=1e-6)


def test_balance_weights_voxel_mask_applies_to_every_channel() -> None:
    rng = np.random.default_rng(1)
    target = torch.from_numpy((rng.random((2, 3, 4, 5, 6)) < 0.3).astype(np.float32))
    voxel_mask = torch.from_numpy(rng.random((2, 4, 5, 6)) < 0.7)
    edge_mask = voxel_mask[:, None].expand(2, 3, 4, 5, 6)
    torch.testing.assert_close(
        balance_weights(target, voxel_mask), balance_weights(target, edge_mask)
    )
    # without a mask every edge is known
    np.testing.assert_allclose(
        balance_weights(target).numpy(),
        gunpowder_scales(target.numpy(), np.ones(target.shape, np.float32)),
        rtol=1e-6,
    )


def test_balanced_mse_value_and_gradient() -> None:
    rng = np.random.default_rng(2)
    target = torch.from_numpy((rng.random((2, 3, 4, 5, 6)) < 0.25).astype(np.float64))
    mask = torch.from_numpy((rng.random((2, 3, 4, 5, 6)) < 0.9).astype(np.float64))
    pred = torch.from_numpy(rng.random((2, 3, 4, 5, 6))).requires_grad_()
    loss = balanced_mse_loss(pred, target, mask)
    scales = gunpowder_scales(target.numpy(), mask.numpy()).astype(np.float64)
    expected = (scales * (pred.detach().numpy() - target.numpy()) ** 2).sum() / mask.sum()
    assert loss.dtype == torch.float64 and loss.dim() == 0
    np.testing.assert_allclose(loss.item(), expected, rtol=1e-6)
    assert torch.autograd.gradcheck(lambda p: balanced_mse_loss(p, target, mask), (pred,))
    # one sample without batch axis: the same as a batch of one
    single = balanced_mse_loss(pred[0], target[0], mask[0])
    torch.testing.assert_close(single, balanced_mse_loss(pred[:1], target[:1], mask[:1]))


def test_balanced_mse_without_known_edges_is_zero_with_zero_gradient() -> None:
    pred = torch.full((3, 2, 3, 4), 0.3, requires_grad=True)
    loss = balanced_mse_loss(pred, torch.ones(3, 2, 3, 4), torch.zeros(3, 2, 3, 4))
    loss.backward()
    assert loss.item() == 0.0
    assert pred.grad is not None and not pred.grad.any()


def test_balanced_mse_is_zero_at_the_target() -> None:
    target = (torch.rand(3, 4, 5, 6, generator=torch.Generator().manual_seed(3)) < 0.4).float()
    assert balanced_mse_loss(target.clone(), target).item() == 0.0


def widest_paths(values: np.ndarray, offsets: list[tuple[int, int, int]]) -> np.ndarray:
    """(n, n) maximin affinity of every voxel pair by widest-path search."""
    shape = values.shape[1:]
    n = int(np.prod(shape))
    neighbours: list[list[tuple[float, int]]] = [[] for _ in range(n)]
    for c, offset in enumerate(offsets):
        for voxel in itertools.product(*(range(s) for s in shape)):
            other = tuple(v + o for v, o in zip(voxel, offset, strict=True))
            if all(0 <= v < s for v, s in zip(other, shape, strict=True)):
                p, q = np.ravel_multi_index(voxel, shape), np.ravel_multi_index(other, shape)
                neighbours[p].append((float(values[(c, *voxel)]), int(q)))
                neighbours[q].append((float(values[(c, *voxel)]), int(p)))
    best = np.full((n, n), -np.inf)
    for source in range(n):
        best[source, source] = np.inf
        heap = [(-np.inf, source)]
        while heap:
            width, u = heapq.heappop(heap)
            if -width < best[source, u]:
                continue
            for value, v in neighbours[u]:
                through = min(best[source, u], value)
                if through > best[source, v]:
                    best[source, v] = through
                    heapq.heappush(heap, (-through, v))
    return best


def reference_malis_loss(
    pred: np.ndarray, labels: np.ndarray, offsets: list[tuple[int, int, int]]
) -> tuple[float, int]:
    """Summed squared error of every labelled pair's constrained maximin affinity, and the pairs."""
    gt = same_object_edges(labels, offsets)
    maximin_positive = widest_paths(np.minimum(pred, gt), offsets)
    maximin_negative = widest_paths(np.maximum(pred, gt), offsets)
    flat = labels.reshape(-1)
    total, n_pairs = 0.0, 0
    for u, v in itertools.combinations(range(flat.size), 2):
        if flat[u] == 0 or flat[v] == 0:
            continue
        if flat[u] == flat[v] and maximin_positive[u, v] > -np.inf:
            total += (1.0 - maximin_positive[u, v]) ** 2
            n_pairs += 1
        elif flat[u] != flat[v] and maximin_negative[u, v] > -np.inf:
            total += maximin_negative[u, v] ** 2
            n_pairs += 1
    return total, n_pairs


def separated_case(
    seed: int, shape: tuple[int, int, int], n_channels: int, n_labels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Affinities at least 1/(2 E) apart (so that ties and tiny steps do not reorder them)."""
    rng = np.random.default_rng(seed)
    n_edges = n_channels * int(np.prod(shape))
    pred = (rng.permutation(n_edges) + 0.5) / n_edges
    labels = rng.integers(0, n_labels + 1, (2, 2, 2)).repeat(2, 0).repeat(2, 1).repeat(3, 2)
    labels = labels[: shape[0], : shape[1], : shape[2]].copy()
    labels[rng.random(shape) < 0.1] = 0
    return pred.reshape(n_channels, *shape), labels


@pytest.mark.parametrize(("seed", "offsets"), [(0, NEAREST), (1, LONG_RANGE), (2, NEAREST)])
def test_malis_loss_is_the_mean_pair_error_of_constrained_maximin_affinities(
    seed: int, offsets: list[tuple[int, int, int]]
) -> None:
    pred, labels = separated_case(seed, (3, 4, 5), len(offsets), 3)
    # quantised copies: many ties, which the pair-wise reference does not care about
    for values in (pred, np.round(pred * 4) / 4):
        total, n_pairs = reference_malis_loss(values, labels, offsets)
        loss = malis_loss(torch.from_numpy(values), torch.from_numpy(labels), offsets)
        assert loss.dtype == torch.float64 and loss.dim() == 0
        assert n_pairs > 0
        np.testing.assert_allclose(loss.item(), total / n_pairs, rtol=1e-6)


@pytest.mark.parametrize(("seed", "offsets"), [(3, NEAREST), (4, LONG_RANGE)])
def test_malis_gradient_matches_finite_differences(
    seed: int, offsets: list[tuple[int, int, int]]
) -> None:
    # The weights depend on pred only through the order of the edges, so they
    # are piecewise constant; gradcheck's steps (1e-6) stay far inside one piece
    # because the affinities are at least ~1e-3 apart, and the numerical
    # derivative then sees the weights held fixed, like the analytic one.
    pred, labels = separated_case(seed, (3, 4, 5), len(offsets), 3)
    pred_t = torch.from_numpy(np.stack([pred, pred[:, ::-1].copy()])).requires_grad_()
    labels_t = torch.from_numpy(np.stack([labels, labels[:, ::-1].copy()]))
    assert torch.autograd.gradcheck(lambda p: malis_loss(p, labels_t, offsets), (pred_t,))


def test_malis_weights_are_constant_under_small_steps() -> None:
    pred, labels = separated_case(5, (3, 4, 5), 3, 3)
    step = np.random.default_rng(5).uniform(-1e-4, 1e-4, pred.shape)
    before = compute_malis_weights(pred.astype(np.float32), labels, NEAREST)
    after = compute_malis_weights((pred + step).astype(np.float32), labels, NEAREST)
    np.testing.assert_array_equal(before.positive, after.positive)
    np.testing.assert_array_equal(before.negative, after.negative)


def test_malis_gradient_is_the_fixed_weight_formula() -> None:
    pred, labels = separated_case(6, (3, 4, 5), 3, 3)
    pred_t = torch.from_numpy(pred).requires_grad_()
    malis_loss(pred_t, torch.from_numpy(labels), NEAREST).backward()
    weights = compute_malis_weights(pred.astype(np.float32), labels, NEAREST)
    gt = same_object_edges(labels, NEAREST)
    n_pairs = weights.n_same_pairs + weights.n_different_pairs
    expected = (
        np.where(gt, -2 * weights.positive * (1 - pred), 0.0)
        + np.where(gt, 0.0, 2 * weights.negative * pred)
    ) / n_pairs
    assert pred_t.grad is not None
    np.testing.assert_allclose(pred_t.grad.numpy(), expected, rtol=1e-6, atol=1e-12)
    assert (expected < 0).any() and (expected > 0).any()


def test_object_cut_in_two_gets_no_gradient_on_the_boundary() -> None:
    # voxels 0 and 2 are one object, separated by background voxel 1: the only
    # pair is joined across 0-affinity (positive pass) edges, a constant error 1
    pred = torch.tensor([[[[0.1, 0.7, 0.4]]]], dtype=torch.float64, requires_grad=True)
    labels = np.array([[[1, 0, 1]]])
    loss = malis_loss(pred, labels, [(0, 0, -1)])
    loss.backward()
    assert loss.item() == 1.0
    assert pred.grad is not None and not pred.grad.any()


def test_batch_loss_is_the_pair_weighted_mean_of_sample_losses() -> None:
    pred_a, labels_a = separated_case(7, (3, 4, 5), 3, 3)
    pred_b, labels_b = separated_case(8, (3, 4, 5), 3, 4)
    losses, pairs = [], []
    for pred, labels in ((pred_a, labels_a), (pred_b, labels_b)):
        losses.append(malis_loss(torch.from_numpy(pred), labels, NEAREST).item())
        weights = compute_malis_weights(pred.astype(np.float32), labels, NEAREST)
        pairs.append(weights.n_same_pairs + weights.n_different_pairs)
    batch = malis_loss(
        torch.from_numpy(np.stack([pred_a, pred_b])),
        torch.from_numpy(np.stack([labels_a, labels_b])),
        NEAREST,
    )
    np.testing.assert_allclose(batch.item(), np.average(losses, weights=pairs), rtol=1e-6)


def test_malis_and_mse_combine_in_float32() -> None:
    generator = torch.Generator().manual_seed(9)
    pred = torch.rand(2, 3, 4, 5, 6, generator=generator, requires_grad=True)
    labels = torch.randint(0, 4, (2, 4, 5, 6), generator=generator)
    target = torch.from_numpy(
        np.stack([same_object_edges(s.numpy(), NEAREST) for s in labels]).astype(np.float32)
    )
    loss = balanced_mse_loss(pred, target) + malis_loss(pred, labels, NEAREST)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_perfect_prediction_has_zero_malis_loss() -> None:
    labels = np.array([[[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 3, 3]]])
    gt = same_object_edges(labels, NEAREST).astype(np.float32)
    assert malis_loss(torch.from_numpy(gt), labels, NEAREST).item() == 0.0


GOOD_PRED = torch.full((3, 2, 3, 4), 0.5)
GOOD_LABELS = torch.ones((2, 3, 4), dtype=torch.int64)


@pytest.mark.parametrize(
    ("pred", "labels", "offsets", "message"),
    [
        (GOOD_PRED.numpy(), GOOD_LABELS, NEAREST, "floating-point tensor"),
        (GOOD_PRED.int(), GOOD_LABELS, NEAREST, "floating-point tensor"),
        (GOOD_PRED[0], GOOD_LABELS, NEAREST, r"\(B, C, Z, Y, X\) or \(C, Z, Y, X\)"),
        (GOOD_PRED, GOOD_LABELS[0], NEAREST, r"shape \(2, 3, 4\)"),
        (GOOD_PRED[None], GOOD_LABELS, NEAREST, r"shape \(1, 2, 3, 4\)"),
        (GOOD_PRED, GOOD_LABELS.float(), NEAREST, "integers"),
        (GOOD_PRED, GOOD_LABELS.tolist(), NEAREST, "integer tensor or numpy array"),
        (GOOD_PRED, GOOD_LABELS, NEAREST[:2], "3 channels but 2 offsets"),
        (GOOD_PRED * 3, GOOD_LABELS, NEAREST, r"in \[0, 1\]"),
        (GOOD_PRED, -GOOD_LABELS, NEAREST, ">= 0"),
    ],
)
def test_malis_loss_rejects_bad_input(
    pred: object, labels: object, offsets: object, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        malis_loss(pred, labels, offsets)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("target", "mask", "message"),
    [
        (GOOD_PRED[0], None, "target_affs must be a tensor of the prediction's shape"),
        (GOOD_PRED.numpy(), None, "target_affs must be a tensor"),
        (GOOD_PRED, torch.ones(2, 3), "labels_mask must be a tensor of shape"),
        (GOOD_PRED, np.ones((3, 2, 3, 4)), "labels_mask must be a tensor"),
    ],
)
def test_balanced_mse_rejects_bad_input(target: object, mask: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        balanced_mse_loss(GOOD_PRED, target, mask)  # type: ignore[arg-type]
