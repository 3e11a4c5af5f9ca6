"""Evaluation metrics against scikit-image, to 1e-6."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import adapted_rand_error, variation_of_information

from blockwise.metrics import Contingency, scores


@pytest.mark.parametrize("seed", range(6))
def test_against_skimage(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (12, 17, 23)
    gt = rng.integers(0, 9, size=shape).astype(np.uint64)
    gt[rng.random(shape) < 0.3] = gt.ravel()[0]
    seg = (gt * 3 + rng.integers(0, 3, size=shape)).astype(np.uint64)
    seg[rng.random(shape) < 0.1] = rng.integers(0, 50)
    if seed % 2:
        seg = seg + np.uint64(2**63)  # ids above 2**63 must work
    c = Contingency()
    for z in range(0, shape[0], 5):  # accumulate in chunks
        c.add(gt[z : z + 5], seg[z : z + 5])
    ours = scores(c)
    split, merge = variation_of_information(
        gt.astype(np.int64), (seg - seg.min()).astype(np.int64), ignore_labels=[0]
    )
    are, _, _ = adapted_rand_error(
        gt.astype(np.int64), (seg - seg.min()).astype(np.int64), ignore_labels=[0]
    )
    assert ours.voi_split == pytest.approx(split, abs=1e-6)
    assert ours.voi_merge == pytest.approx(merge, abs=1e-6)
    assert ours.arand == pytest.approx(are, abs=1e-6)
    assert ours.num_voxels == int(np.count_nonzero(gt))


def test_identical_is_zero() -> None:
    rng = np.random.default_rng(0)
    gt = rng.integers(1, 20, size=(8, 8, 8)).astype(np.uint64)
    c = Contingency()
    c.add(gt, gt * np.uint64(7))
    s = scores(c)
    assert s.voi_split == pytest.approx(0.0, abs=1e-12)
    assert s.voi_merge == pytest.approx(0.0, abs=1e-12)
    assert s.arand == pytest.approx(0.0, abs=1e-12)


def test_errors() -> None:
    c = Contingency()
    with pytest.raises(ValueError, match=r"shapes? .*must match|must match"):
        c.add(np.zeros((2, 2, 2), np.uint64), np.zeros((2, 2, 3), np.uint64))
    c.add(np.zeros((2, 2, 2), np.uint64), np.ones((2, 2, 2), np.uint64))
    with pytest.raises(ValueError, match=r"no voxel"):
        scores(c)
