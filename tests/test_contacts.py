"""Edge statistics between fragments against a voxel-by-voxel loop."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from blockwise.contacts import contact_statistics, quantise_affinities

OFFSETS = [(-1, 0, 0), (0, -1, 0), (0, 0, -1), (-2, 0, 0), (0, 3, 0), (1, -1, 2)]


def slow_statistics(fragments: np.ndarray, affs: np.ndarray, offsets: list) -> dict:
    found: dict[tuple[int, int], list[int]] = {}
    shape = fragments.shape
    for c, offset in enumerate(offsets):
        for p in itertools.product(*(range(s) for s in shape)):
            q = tuple(pi + oi for pi, oi in zip(p, offset, strict=True))
            if not all(0 <= qi < s for qi, s in zip(q, shape, strict=True)):
                continue
            a, b = int(fragments[p]), int(fragments[q])
            if a == b or a == 0 or b == 0:
                continue
            key = (min(a, b), max(a, b))
            entry = found.setdefault(key, [0, 0])
            entry[0] += int(affs[(c, *p)])
            entry[1] += 1
    return found


@pytest.mark.parametrize("seed", range(4))
def test_contact_statistics_equal_a_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (5, 6, 7)
    fragments = rng.integers(0, 5, shape).astype(np.uint64) * np.uint64(2**40)
    affs = rng.integers(0, 256, (len(OFFSETS), *shape), dtype=np.uint8)
    got = contact_statistics(fragments, affs, OFFSETS)
    expected = slow_statistics(fragments, affs, OFFSETS)
    assert list(zip(got.u.tolist(), got.v.tolist(), strict=True)) == sorted(expected)
    assert [[s, n] for s, n in zip(got.s.tolist(), got.n.tolist(), strict=True)] == [
        expected[k] for k in sorted(expected)
    ]


def test_quantisation_is_the_nearest_uint8() -> None:
    affs = np.array([0.0, 0.5, 1.0, 0.9981, 0.0019], dtype=np.float32)
    assert quantise_affinities(affs).tolist() == [0, 128, 255, 255, 0]
    raw = np.array([3, 250], dtype=np.uint8)
    assert quantise_affinities(raw) is raw or quantise_affinities(raw).tolist() == [3, 250]


def test_shapes_must_agree() -> None:
    with pytest.raises(ValueError, match="same voxels"):
        contact_statistics(
            np.zeros((2, 2, 2), np.uint64), np.zeros((3, 2, 2, 3), np.uint8), OFFSETS[:3]
        )
    with pytest.raises(ValueError, match="uint8"):
        contact_statistics(
            np.zeros((2, 2, 2), np.uint64), np.zeros((3, 2, 2, 2), np.float32), OFFSETS[:3]
        )
