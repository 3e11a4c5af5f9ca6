"""Region merging against waterz 0.10.1 (same partitions, ties included) and slow references."""

from __future__ import annotations

import functools
import heapq
import importlib.machinery
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
import waterz
from numpy.typing import NDArray

from blockwise.kernels import _region_merging, region_merging
from blockwise.kernels.region_merging import (
    RegionGraph,
    RegionMergingInputError,
    Scoring,
    merge_regions,
    segment,
)

THRESHOLDS = [0.1, 0.3, 0.5, 0.7, 0.9]
IS_CI = os.environ.get("CI", "").lower() == "true"
DATA = Path(os.environ.get("BLOCKWISE_DATA", "/work/shared/data"))
FIB25_AFFS = DATA / "fib25_baseline_affs.h5"

MEAN = "OneMinus<MeanAffinity<RegionGraphType, ScoreValue>>"


def _histogram_quantile(q: int, init_with_max: bool) -> str:
    init = "true" if init_with_max else "false"
    return f"OneMinus<HistogramQuantileAffinity<RegionGraphType, {q}, ScoreValue, 256, {init}>>"


def _quantile(q: int, init_with_max: bool) -> str:
    init = "true" if init_with_max else "false"
    return f"OneMinus<QuantileAffinity<RegionGraphType, {q}, ScoreValue, {init}>>"


def _mean_max_k(k: int) -> str:
    return f"OneMinus<MeanMaxKAffinity<RegionGraphType, {k}, ScoreValue>>"


def _skip_or_fail(reason: str) -> None:
    """Skip, but fail on CI, where everything a test needs must be there."""
    if IS_CI:
        pytest.fail(f"{reason} (CI=true, so this is not skipped)")
    pytest.skip(reason)


# ---------------------------------------------------------------- inputs


def _random_inputs(
    seed: int,
    shape: tuple[int, int, int] = (20, 30, 40),
    n_seeds: int = 80,
    levels: int | None = None,
) -> tuple[NDArray[np.float32], NDArray[np.uint64]]:
    """Voronoi fragments with some background, smooth affinities; ``levels``
    quantizes the affinities to k/levels (many tied scores)."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, dtype=np.uint64)
    points = tuple(rng.integers(0, s, n_seeds) for s in shape)
    seeds[points] = rng.permutation(n_seeds).astype(np.uint64) + 1
    nearest = ndi.distance_transform_edt(seeds == 0, return_distances=False, return_indices=True)
    fragments = seeds[tuple(nearest)]
    fragments[rng.random(shape) < 0.02] = 0
    affs = ndi.gaussian_filter(rng.random((3, *shape)), sigma=(0, 1, 1, 1))
    affs = (affs - affs.min()) / (affs.max() - affs.min())
    if levels is not None:
        affs = np.round(affs * levels) / levels
    return affs.astype(np.float32), fragments


def _fib25_fragments(affs: NDArray[np.float32], cell: int = 8) -> NDArray[np.uint64]:
    """Fixed fragments: components of mean affinity > 0.9, cut by a grid of
    ``cell`` voxels, grown into the boundary by nearest label."""
    labels, _ = ndi.label(affs.mean(axis=0) > 0.9)
    cells = [np.arange(s) // cell for s in labels.shape]
    cell_id = (cells[0][:, None, None] * 1000 + cells[1][None, :, None]) * 1000 + cells[2]
    key = np.where(labels > 0, labels.astype(np.int64) * 10**9 + cell_id, 0)
    _, inverse = np.unique(key, return_inverse=True)  # key 0 (boundary) stays 0
    fragments = inverse.reshape(labels.shape).astype(np.uint64)
    nearest = ndi.distance_transform_edt(
        fragments == 0, return_distances=False, return_indices=True
    )
    return fragments[tuple(nearest)]


@pytest.fixture(scope="module")
def fib25() -> tuple[NDArray[np.float32], NDArray[np.uint64]]:
    """A 64 x 96 x 96 crop of the evaluation half of the FIB-25 predictions."""
    if not FIB25_AFFS.exists():
        _skip_or_fail(f"{FIB25_AFFS} is missing (set BLOCKWISE_DATA)")
    import h5py

    with h5py.File(FIB25_AFFS, "r") as f:
        affs = f["affs"][:, 125:189, :96, :96].astype(np.float32) / 255
    return affs, _fib25_fragments(affs)


# ---------------------------------------------------------------- comparing


def _same_partition(a: NDArray[np.uint64], b: NDArray[np.uint64]) -> bool:
    """Whether two labelings are one partition: their label pairs are a bijection."""
    labels_a, index_a = np.unique(a, return_inverse=True)
    labels_b, index_b = np.unique(b, return_inverse=True)
    n_pairs = np.unique(index_a.astype(np.int64) * labels_b.size + index_b).size
    return n_pairs == labels_a.size == labels_b.size


def _waterz_segmentations(
    affs: NDArray[np.float32], fragments: NDArray[np.uint64], scoring_function: str
) -> list[NDArray[np.uint64]]:
    # waterz relabels the fragments it is given in place, and yields that one array
    return [
        segmentation.copy()
        for segmentation in waterz.agglomerate(
            affs,
            THRESHOLDS,
            fragments=fragments.copy(),
            scoring_function=scoring_function,
            discretize_queue=0,
        )
    ]


def _assert_matches_waterz(
    affs: NDArray[np.float32],
    fragments: NDArray[np.uint64],
    scoring: Scoring,
    scoring_function: str,
) -> None:
    graph = merge_regions(affs, fragments, max(THRESHOLDS), scoring)
    expected = _waterz_segmentations(affs, fragments, scoring_function)
    for threshold, theirs in zip(THRESHOLDS, expected, strict=True):
        ours = segment(fragments, graph, threshold)
        assert _same_partition(ours, theirs), (
            f"partition at {threshold} differs from waterz's {scoring_function}: "
            f"{np.unique(ours).size} vs {np.unique(theirs).size} segments"
        )


@functools.cache
def _has_boost() -> bool:
    """Whether the C++ compiler finds the boost headers waterz's JIT needs."""
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        return False
    result = subprocess.run(
        [compiler, "-fsyntax-only", "-x", "c++", "-"],
        input="#include <boost/multi_array.hpp>\n",
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode == 0


def _require_waterz_jit() -> None:
    if not _has_boost():
        _skip_or_fail(
            "waterz compiles this scoring function at first use and needs the boost "
            "headers (apt-get install libboost-dev)"
        )
    try:
        import witty  # noqa: F401
    except ImportError:
        _skip_or_fail("waterz compiles this scoring function with witty, not installed")


# ---------------------------------------------------------------- the build


def test_extension_is_compiled() -> None:
    assert _region_merging.__file__ is not None
    assert _region_merging.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    assert region_merging._region_merging is _region_merging


# ---------------------------------------------------------------- against waterz (prebuilt)


@pytest.mark.parametrize("levels", [None, 255, 4], ids=["smooth", "k/255", "k/4"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mean_matches_waterz(seed: int, levels: int | None) -> None:
    affs, fragments = _random_inputs(seed, levels=levels)
    _assert_matches_waterz(affs, fragments, Scoring("mean"), MEAN)


def test_mean_matches_waterz_on_fib25(fib25: tuple) -> None:
    _assert_matches_waterz(*fib25, Scoring("mean"), MEAN)


# inputs for the other scoring functions: two random ones (one with ties), and FIB-25
INPUTS = ["smooth", "k/255", "fib25"]


def _inputs(name: str, seed: int, request: pytest.FixtureRequest) -> tuple:
    if name == "fib25":
        return request.getfixturevalue("fib25")
    return _random_inputs(seed, levels=None if name == "smooth" else 255)


@pytest.mark.parametrize("inputs", INPUTS)
@pytest.mark.parametrize("init_with_max", [False, True])
@pytest.mark.parametrize("q", [25, 50, 75])
def test_histogram_quantile_matches_waterz(
    q: int, init_with_max: bool, inputs: str, request: pytest.FixtureRequest
) -> None:
    _assert_matches_waterz(
        *_inputs(inputs, 3, request),
        Scoring("histogram_quantile", quantile=q, init_with_max=init_with_max),
        _histogram_quantile(q, init_with_max),
    )


def test_initial_region_graph_is_waterz_s() -> None:
    """Same edges in the same order and bitwise the same initial scores."""
    affs, fragments = _random_inputs(5, levels=255)
    for scoring, function in [
        (Scoring("mean"), MEAN),
        (Scoring("histogram_quantile", 50, init_with_max=False), _histogram_quantile(50, False)),
    ]:
        graph = merge_regions(affs, fragments, 0.0, scoring)
        ((_, edges),) = waterz.agglomerate(
            affs,
            [-1.0],
            fragments=fragments.copy(),
            scoring_function=function,
            return_region_graph=True,
        )
        np.testing.assert_array_equal(graph.u, [e["u"] for e in edges])
        np.testing.assert_array_equal(graph.v, [e["v"] for e in edges])
        np.testing.assert_array_equal(graph.score, np.float32([e["score"] for e in edges]))


# ---------------------------------------------------------------- against waterz (JIT)


@pytest.mark.parametrize("inputs", INPUTS)
@pytest.mark.parametrize("init_with_max", [False, True])
def test_quantile_matches_waterz(
    init_with_max: bool, inputs: str, request: pytest.FixtureRequest
) -> None:
    _require_waterz_jit()
    _assert_matches_waterz(
        *_inputs(inputs, 6, request),
        Scoring("quantile", quantile=50, init_with_max=init_with_max),
        _quantile(50, init_with_max),
    )


@pytest.mark.parametrize("inputs", INPUTS)
def test_mean_max_k_matches_waterz(inputs: str, request: pytest.FixtureRequest) -> None:
    _require_waterz_jit()
    _assert_matches_waterz(*_inputs(inputs, 8, request), Scoring("mean_max_k", k=4), _mean_max_k(4))


# ---------------------------------------------------------------- against a slow reference


def _faces(
    affs: NDArray[np.float32], fragments: NDArray[np.uint64]
) -> dict[tuple[int, int], list[np.float32]]:
    """Face affinities per fragment pair, in voxel scan order then channel order."""
    faces: dict[tuple[int, int], list[np.float32]] = {}
    depth, height, width = fragments.shape
    for z in range(depth):
        for y in range(height):
            for x in range(width):
                for d, (dz, dy, dx) in enumerate([(1, 0, 0), (0, 1, 0), (0, 0, 1)]):
                    if (z, y, x)[d] == 0:
                        continue
                    a = int(fragments[z, y, x])
                    b = int(fragments[z - dz, y - dy, x - dx])
                    if a != b and a != 0 and b != 0:
                        faces.setdefault((min(a, b), max(a, b)), []).append(affs[d, z, y, x])
    return faces


def _one_minus(statistic: np.float32) -> np.float32:
    return np.float32(1.0 - float(statistic))


def _quantile_statistic(q: int, init_with_max: bool) -> Callable:
    """waterz's VectorQuantileProvider, from the original edges between two regions."""

    def statistic(edges: list[list[np.float32]]) -> np.float32:
        values = [max(f) for f in edges] if init_with_max else [a for f in edges for a in f]
        if len(edges) > 1:  # merged edges are partitioned by nth_element
            values = sorted(values)
        pivot = min(q * len(values) // 100, len(values) - 1)
        return values[pivot]

    return statistic


def _mean_max_k_statistic(k: int) -> Callable:
    def statistic(edges: list[list[np.float32]]) -> np.float32:
        largest = sorted((a for f in edges for a in f), reverse=True)[:k]
        total = np.float32(0)
        for a in largest:
            total = np.float32(total + a)
        return np.float32(total / np.float32(len(largest)))

    return statistic


def _reference_partition(
    fragments: NDArray[np.uint64],
    faces: dict[tuple[int, int], list[np.float32]],
    statistic: Callable,
    threshold: float,
) -> NDArray[np.uint64]:
    """waterz's mergeUntil(threshold), plainly: a heap of (score, edge) with
    stale and deleted edges; each edge keeps the face lists of the original
    edges it stands for and is scored from them from scratch. Without ties
    (continuous affinities), the heap's tie-breaking does not matter."""
    threshold = np.float32(threshold)
    ends = dict(enumerate(sorted(faces)))
    members = {e: [faces[pair]] for e, pair in ends.items()}
    score = {e: _one_minus(statistic(members[e])) for e in ends}
    heap = [(s, e) for e, s in score.items()]
    heapq.heapify(heap)
    adjacent: dict[int, dict[int, int]] = {}
    for e, (u, v) in ends.items():
        adjacent.setdefault(u, {})[v] = e
        adjacent.setdefault(v, {})[u] = e
    stale: set[int] = set()
    deleted: set[int] = set()
    parent: dict[int, int] = {}

    while heap and heap[0][0] < threshold:
        _, e = heapq.heappop(heap)
        if e in deleted:
            continue
        if e in stale:
            stale.discard(e)
            score[e] = _one_minus(statistic(members[e]))
            heapq.heappush(heap, (score[e], e))
            continue
        a, b = ends[e]  # b merges into a
        parent[b] = a
        del adjacent[a][b]
        for n, edge_of_b in adjacent.pop(b).items():
            if n == a:
                continue
            del adjacent[n][b]
            edge_of_a = adjacent[a].get(n)
            if edge_of_a is not None and score[edge_of_b] > score[edge_of_a]:
                members[edge_of_a] += members.pop(edge_of_b)
                deleted.add(edge_of_b)
                stale.add(edge_of_a)
                continue
            if edge_of_a is not None:
                members[edge_of_b] += members.pop(edge_of_a)
                deleted.add(edge_of_a)
                stale.add(edge_of_b)
            adjacent[a][n] = adjacent[n][a] = edge_of_b
            ends[edge_of_b] = (min(a, n), max(a, n))

    def root(n: int) -> int:
        while n in parent:
            n = parent[n]
        return n

    label = {n: root(n) for n in np.unique(fragments).tolist()}
    return np.vectorize(label.__getitem__, otypes=[np.uint64])(fragments)


@pytest.mark.parametrize(
    ("scoring", "statistic"),
    [
        (Scoring("quantile", 50, init_with_max=True), _quantile_statistic(50, True)),
        (Scoring("quantile", 50, init_with_max=False), _quantile_statistic(50, False)),
        (Scoring("quantile", 80, init_with_max=False), _quantile_statistic(80, False)),
        (Scoring("quantile", 0, init_with_max=False), _quantile_statistic(0, False)),
        (Scoring("quantile", 100, init_with_max=False), _quantile_statistic(100, False)),
        (Scoring("mean_max_k", k=3), _mean_max_k_statistic(3)),
        (Scoring("mean_max_k", k=1), _mean_max_k_statistic(1)),
        (Scoring("mean_max_k", k=64), _mean_max_k_statistic(64)),
    ],
    ids=[
        "quantile50-max",
        "quantile50",
        "quantile80",
        "quantile0",
        "quantile100",
        "max3",
        "max1",
        "max64",
    ],
)
@pytest.mark.parametrize("seed", [10, 11, 12])
def test_matches_slow_reference(seed: int, scoring: Scoring, statistic: Callable) -> None:
    # continuous affinities: no two candidate merges tie, so the order is unique
    affs, fragments = _random_inputs(seed, shape=(5, 6, 7), n_seeds=12)
    faces = _faces(affs, fragments)
    graph = merge_regions(affs, fragments, 2.0, scoring)

    assert list(zip(graph.u.tolist(), graph.v.tolist(), strict=True)) == sorted(faces)
    expected_scores = [_one_minus(statistic([faces[pair]])) for pair in sorted(faces)]
    np.testing.assert_array_equal(graph.score, np.float32(expected_scores))

    for threshold in [0.0, *THRESHOLDS, 1.5]:
        assert _same_partition(
            segment(fragments, graph, threshold),
            _reference_partition(fragments, faces, statistic, threshold),
        ), f"partition at {threshold}"


def test_histogram_quantile_100_scores_as_waterz() -> None:
    """waterz's histogram never reaches its pivot at q=100 and scores with bin 256."""
    affs, fragments = _random_inputs(17)
    graph = merge_regions(affs, fragments, 0.5, Scoring("histogram_quantile", quantile=100))
    np.testing.assert_array_equal(graph.score, np.float32(1.0 - 256.5 / 256))


# ---------------------------------------------------------------- properties


@pytest.mark.parametrize("threshold", [0.0, 0.4, 0.8, 1.0])
def test_graph_properties(threshold: float) -> None:
    affs, fragments = _random_inputs(13, levels=255)
    graph = merge_regions(affs, fragments, threshold)

    assert graph.u.dtype == np.uint64 and graph.v.dtype == np.uint64
    assert graph.score.dtype == np.float32 and graph.merge_score.dtype == np.float32
    assert np.all(graph.u < graph.v) and np.all(graph.u > 0)
    keys = np.stack([graph.u, graph.v], axis=1)
    assert np.unique(keys, axis=0).shape[0] == keys.shape[0]
    assert np.all(np.lexsort((graph.v, graph.u)) == np.arange(graph.u.size))

    merged = ~np.isnan(graph.merge_score)
    assert np.all(graph.merge_score[merged] < np.float32(threshold))
    n_segments = np.unique(segment(fragments, graph, threshold)[fragments > 0]).size
    assert np.unique(fragments[fragments > 0]).size - n_segments == graph.n_merges

    faces = _faces(affs, fragments)
    means = [np.mean(np.float64(faces[(u, v)])) for u, v in zip(graph.u, graph.v, strict=True)]
    np.testing.assert_allclose(graph.score, 1 - np.array(means), atol=1e-6)


def test_huge_ids_give_the_same_graph() -> None:
    """Ids above 2**63 work; relabeling in order changes nothing but the ids."""
    affs, fragments = _random_inputs(14, levels=255)
    ids = np.unique(fragments)
    huge = np.zeros(ids.size, dtype=np.uint64)
    huge[1:] = np.uint64(2**63) + np.arange(1, ids.size, dtype=np.uint64) * np.uint64(2**40)
    relabeled = huge[np.searchsorted(ids, fragments)]

    small = merge_regions(affs, fragments, 0.8)
    large = merge_regions(affs, relabeled, 0.8)
    np.testing.assert_array_equal(large.u, huge[np.searchsorted(ids, small.u)])
    np.testing.assert_array_equal(large.v, huge[np.searchsorted(ids, small.v)])
    np.testing.assert_array_equal(large.score, small.score)
    np.testing.assert_array_equal(large.merge_score, small.merge_score)
    segmentation = segment(relabeled, large, 0.5)
    assert _same_partition(segmentation, segment(fragments, small, 0.5))
    assert set(np.unique(segmentation).tolist()) <= set(huge.tolist())


def test_segment_labels_are_smallest_ids_and_inputs_untouched() -> None:
    affs, fragments = _random_inputs(15)
    affs_before, fragments_before = affs.copy(), fragments.copy()
    graph = merge_regions(affs, fragments, 0.6)
    segmentation = segment(fragments, graph, 0.6)

    np.testing.assert_array_equal(affs, affs_before)
    np.testing.assert_array_equal(fragments, fragments_before)
    assert np.all((segmentation == 0) == (fragments == 0))
    for label in np.unique(segmentation[segmentation > 0]):
        assert fragments[segmentation == label].min() == label


def test_non_contiguous_and_read_only_inputs_give_the_same_graph() -> None:
    affs, fragments = _random_inputs(16)
    expected = merge_regions(affs, fragments, 0.7)
    ours = merge_regions(np.asfortranarray(affs), np.asfortranarray(fragments), 0.7)
    np.testing.assert_array_equal(ours.merge_score, expected.merge_score)

    affs.flags.writeable = False
    fragments.flags.writeable = False
    ours = merge_regions(affs, fragments, 0.7)
    np.testing.assert_array_equal(ours.merge_score, expected.merge_score)
    np.testing.assert_array_equal(
        segment(fragments, ours, 0.7), segment(fragments.copy(), expected, 0.7)
    )


def test_no_edges() -> None:
    affs = np.full((3, 4, 5, 6), 0.5, dtype=np.float32)
    fragments = np.zeros((4, 5, 6), dtype=np.uint64)
    fragments[:2] = 7
    graph = merge_regions(affs, fragments, 0.5)
    assert graph.u.size == 0 and graph.n_merges == 0
    np.testing.assert_array_equal(segment(fragments, graph, 0.5), fragments)
    empty = merge_regions(np.zeros((3, 0, 5, 6), np.float32), np.zeros((0, 5, 6), np.uint64), 0.5)
    assert empty.u.size == 0


# ---------------------------------------------------------------- bad input


def _valid() -> tuple[NDArray[np.float32], NDArray[np.uint64]]:
    return np.full((3, 2, 3, 4), 0.5, np.float32), np.ones((2, 3, 4), np.uint64)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a, f: (a[:2], f), "3 channels"),
        (lambda a, f: (a, f[:, :2]), "spatial shape of fragments"),
        (lambda a, f: (a[0], f), "must be 4D"),
        (lambda a, f: (a.astype(np.float64), f), "dtype float32"),
        (lambda a, f: (a, f.astype(np.int64)), "dtype uint64"),
        (lambda a, f: (np.where(a > 0, np.nan, a).astype(np.float32), f), "NaN"),
        (lambda a, f: (a + 1, f), r"\[0, 1\]"),
        (lambda a, f: (-a, f), r"\[0, 1\]"),
        (lambda a, f: (a * np.inf, f), r"\[0, 1\]"),
        (lambda a, f: (a.tolist(), f), "numpy array"),
    ],
    ids=[
        "channels",
        "shape",
        "ndim",
        "affs-dtype",
        "fragments-dtype",
        "nan",
        "above-1",
        "below-0",
        "inf",
        "list",
    ],
)
def test_bad_volumes_raise(change: Callable, message: str) -> None:
    affs, fragments = change(*_valid())
    with pytest.raises(RegionMergingInputError, match=message):
        merge_regions(affs, fragments, 0.5)


@pytest.mark.parametrize(
    ("scoring", "threshold", "message"),
    [
        (Scoring("quantile", quantile=101), 0.5, "0..100"),
        (Scoring("histogram_quantile", quantile=-1), 0.5, "0..100"),
        (Scoring("quantile", quantile=50.0), 0.5, "0..100"),  # type: ignore[arg-type]
        (Scoring("mean_max_k", k=0), 0.5, "1..64"),
        (Scoring("mean_max_k", k=65), 0.5, "1..64"),
        (Scoring("median"), 0.5, "kind"),  # type: ignore[arg-type]
        (Scoring(), float("nan"), "finite"),
        (Scoring(), float("inf"), "finite"),
        (Scoring(), "0.5", "finite number"),
    ],
)
def test_bad_parameters_raise(scoring: Scoring, threshold: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        merge_regions(*_valid(), threshold, scoring)


def test_input_error_is_a_value_error() -> None:
    assert issubclass(RegionMergingInputError, ValueError)
    assert isinstance(merge_regions(*_valid(), 0.5), RegionGraph)
