"""Benchmark: constrained MALIS weights at training-batch sizes, against a numpy+Python baseline.

    python tests/benchmarks/bench_malis.py [--data DIR] [--repeats N] [--baseline-max-voxels N]

DIR defaults to $BLOCKWISE_DATA, else ../shared/data from the repository root.

Inputs are crops of the FIB-25 training half (z < 125): the ground-truth labels,
and as affinities the baseline U-Net's predictions (``fib25_baseline_affs.h5``,
uint8/255) with uniform noise below one quantisation step added, so that values
are continuous like a network's float32 output (``--quantised`` keeps the 256
levels and their ties). Long-range channels, which the stored prediction lacks,
get the ground-truth affinity blurred by noise: 0.8 gt + 0.1 + U(-0.1, 0.1).

For each case it prints the edge count, the wall-clock and CPU seconds of
``compute_malis_weights`` (both passes; best of ``--repeats``) with Mvox/s and
Medges/s from the CPU seconds, the CPU seconds of the whole ``malis_loss`` call on
a float32 tensor (weights + torch terms, torch on one thread) and of its backward
pass, and, where the volume has at most ``--baseline-max-voxels`` voxels, the CPU
seconds of a baseline written with numpy and plain Python (numpy's stable
argsort, then a Python Kruskal with a list union-find and dict label histograms
merged small into large); the baseline's weights are checked to equal the
kernel's. Everything runs on one thread, so CPU seconds are what a quiet machine
would show as wall-clock seconds; on a shared machine compare ratios only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import torch
from numpy.typing import NDArray

from blockwise.kernels.malis import compute_malis_weights, same_object_edges
from blockwise.nn.losses import malis_loss

REPO = Path(__file__).resolve().parents[2]
NEAREST = [(-1, 0, 0), (0, -1, 0), (0, 0, -1)]
LONG_RANGE = [*NEAREST, (-3, 0, 0), (0, -3, 0), (0, 0, -3), (-9, 0, 0), (0, -9, 0), (0, 0, -9)]
CASES = [(44, NEAREST), (44, LONG_RANGE), (84, NEAREST), (84, LONG_RANGE)]
CORNER = (20, 60, 60)  # crop origin in the training half (z < 125)


def load_case(
    data: Path, size: int, offsets: list[tuple[int, int, int]], quantised: bool, seed: int
) -> tuple[NDArray[np.float32], NDArray[np.uint64]]:
    crop = tuple(slice(c, c + size) for c in CORNER)
    with h5py.File(data / "fib25_training_sample2.h5", "r") as f:
        labels = np.ascontiguousarray(f["labels"][crop], dtype=np.uint64)
    with h5py.File(data / "fib25_baseline_affs.h5", "r") as f:
        predicted = f["affs"][(slice(None), *crop)].astype(np.float32) / np.float32(255)
    rng = np.random.default_rng(seed)
    if not quantised:
        predicted += rng.uniform(-0.5 / 255, 0.5 / 255, predicted.shape).astype(np.float32)
    extra = same_object_edges(labels, offsets[3:]).astype(np.float32) * np.float32(0.8)
    extra += np.float32(0.1) + rng.uniform(-0.1, 0.1, extra.shape).astype(np.float32)
    affs = np.concatenate([predicted, extra]).astype(np.float32)
    return np.ascontiguousarray(np.clip(affs, 0, 1)), labels


def baseline_weights(
    affs: NDArray[np.float32], labels: NDArray[np.uint64], offsets: list[tuple[int, int, int]]
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Both passes with numpy's stable argsort and a plain-Python Kruskal."""
    n = labels.size
    gt = same_object_edges(labels, offsets)
    exists = np.zeros(affs.shape, dtype=bool)
    for channel, offset in enumerate(offsets):
        here = tuple(
            slice(max(0, -o), max(0, min(s, s - o)))
            for o, s in zip(offset, labels.shape, strict=True)
        )
        exists[(channel, *here)] = True
    _, height, width = labels.shape
    flat_offset = [(dz * height + dy) * width + dx for dz, dy, dx in offsets]
    flat_labels = labels.reshape(-1).tolist()
    edge_ids = np.flatnonzero(exists.reshape(-1))
    out = []
    for positive in (True, False):
        values = np.minimum(affs, gt) if positive else np.maximum(affs, gt)
        order = edge_ids[np.argsort(-values.reshape(-1)[edge_ids], kind="stable")]
        parent = list(range(n))
        labelled = [int(label != 0) for label in flat_labels]
        histogram: list[dict[int, int]] = [{lb: 1} if lb else {} for lb in flat_labels]
        weights = np.zeros(affs.size, dtype=np.float32)
        for edge in order.tolist():
            channel, p = divmod(edge, n)
            a, b = p, p + flat_offset[channel]
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            while parent[b] != b:
                parent[b] = parent[parent[b]]
                b = parent[b]
            if a == b:
                continue
            small, large = histogram[a], histogram[b]
            if len(small) > len(large):
                small, large = large, small
            same = 0
            for label, count in small.items():
                other = large.get(label, 0)
                same += count * other
                large[label] = other + count
            weights[edge] = same if positive else labelled[a] * labelled[b] - same
            parent[a] = b
            histogram[b], histogram[a] = large, {}
            labelled[b] += labelled[a]
        out.append(weights.reshape(affs.shape))
    return out[0], out[1]


def best_seconds(function: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Best wall-clock and best CPU seconds of ``repeats`` calls (all kernels are one thread)."""
    wall = cpu = np.inf
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        function()
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return float(wall), float(cpu)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-max-voxels", type=int, default=100_000)
    parser.add_argument("--quantised", action="store_true")
    args = parser.parse_args()
    data = args.data or Path(os.environ.get("BLOCKWISE_DATA", REPO.parent / "shared" / "data"))
    torch.set_num_threads(1)

    header = (
        f"{'case':>12} {'voxels':>8} {'edges':>9} {'kernel s':>9} {'cpu s':>6} {'Mvox/s':>7} "
        f"{'Medge/s':>8} {'loss cpu s':>10} {'backw s':>8} {'baseline cpu s':>14} "
        f"{'speed-up':>9}"
    )
    sys.stdout.write(header + "\n")
    for size, offsets in CASES:
        affs, labels = load_case(data, size, offsets, args.quantised, seed=size)
        n_edges = sum(
            int(np.prod([max(0, s - abs(o)) for o, s in zip(offset, labels.shape, strict=True)]))
            for offset in offsets
        )
        weights = compute_malis_weights(affs, labels, offsets)
        wall, cpu = best_seconds(
            lambda a=affs, lb=labels, o=offsets: compute_malis_weights(a, lb, o), args.repeats
        )
        pred = torch.from_numpy(affs).requires_grad_()
        labels_t = torch.from_numpy(labels.astype(np.int64))
        _, loss_cpu = best_seconds(
            lambda p=pred, lb=labels_t, o=offsets: malis_loss(p, lb, o), args.repeats
        )
        loss = malis_loss(pred, labels_t, offsets)
        start = time.process_time()
        loss.backward()
        backward = time.process_time() - start
        baseline = speed_up = "-"
        if labels.size <= args.baseline_max_voxels:
            start = time.process_time()
            positive, negative = baseline_weights(affs, labels, offsets)
            seconds = time.process_time() - start
            if not (
                np.array_equal(positive, weights.positive)
                and np.array_equal(negative, weights.negative)
            ):
                sys.stdout.write("baseline weights differ from the kernel's\n")
                return 1
            baseline, speed_up = f"{seconds:.2f}", f"{seconds / cpu:.0f}x"
        sys.stdout.write(
            f"{len(offsets)}x{size}^3".rjust(12)
            + f" {labels.size:>8} {n_edges:>9} {wall:>9.3f} {cpu:>6.3f}"
            f" {labels.size / cpu / 1e6:>7.2f} {n_edges / cpu / 1e6:>8.2f} {loss_cpu:>10.3f}"
            f" {backward:>8.3f} {baseline:>14} {speed_up:>9}\n"
            f"{'':>12} pairs: {weights.n_same_pairs} same-object, "
            f"{weights.n_different_pairs} different-object; "
            f"{len(np.unique(labels))} labels\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
