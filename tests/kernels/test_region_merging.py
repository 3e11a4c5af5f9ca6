"""Region merging against waterz 0.10.1 (same partitions, ties included) and slow references."""

from __future__ import annotations

import functools
import heapq
import importlib.machinery
import os
import shutil
import struct
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
    ScoringKind,
    merge_graph,
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


# ---------------------------------------------------------------- statistics and merge_graph

GRAPH_SCORINGS = [
    Scoring("mean"),
    Scoring("histogram_quantile", 50, init_with_max=False),
    Scoring("histogram_quantile", 75, init_with_max=True),
    Scoring("quantile", 50, init_with_max=False),
    Scoring("quantile", 80, init_with_max=True),
    Scoring("mean_max_k", k=4),
    Scoring("mean_max_k", k=1),
]
GRAPH_SCORING_IDS = ["mean", "hq50", "hq75-max", "q50", "q80-max", "max4", "max1"]
# two smooth random inputs, one with affinities k/4 (ties everywhere), FIB-25
GRAPH_INPUTS = ["smooth-20", "smooth-21", "k/4-22", "fib25"]


def _graph_inputs(name: str, request: pytest.FixtureRequest) -> tuple:
    if name == "fib25":
        return request.getfixturevalue("fib25")
    levels, seed = name.split("-")
    return _random_inputs(int(seed), levels=None if levels == "smooth" else 4)


def _assert_same_graph(ours: RegionGraph, expected: RegionGraph) -> None:
    """Bitwise the same edges, scores and merge scores (NaN where NaN)."""
    for field in ("u", "v", "score", "merge_score"):
        a, b = getattr(ours, field), getattr(expected, field)
        assert a.dtype == b.dtype and a.shape == b.shape, field
        assert a.tobytes() == b.tobytes(), f"{field} differs at {np.flatnonzero(a != b)[:10]}"
    assert ours.n_merges == expected.n_merges


@pytest.mark.parametrize("inputs", GRAPH_INPUTS)
@pytest.mark.parametrize("scoring", GRAPH_SCORINGS, ids=GRAPH_SCORING_IDS)
def test_merge_graph_reproduces_merge_regions(
    scoring: Scoring, inputs: str, request: pytest.FixtureRequest
) -> None:
    affs, fragments = _graph_inputs(inputs, request)
    graph = merge_regions(affs, fragments, 0.9, scoring, with_statistics=True)
    assert graph.statistics is not None and len(graph.statistics) == graph.u.size
    assert merge_regions(affs, fragments, 0.9, scoring).statistics is None
    _assert_same_graph(merge_regions(affs, fragments, 0.9, scoring), graph)

    merged = merge_graph(graph.u, graph.v, graph.statistics, 0.9, scoring)
    _assert_same_graph(merged, graph)
    assert merged.statistics is None

    # forced edges: the same on the graph as on the volume
    forced = np.random.default_rng(0).random(graph.u.size) < 0.05
    expected = merge_regions(
        affs, fragments, 0.9, scoring, forced_pairs=(graph.v[forced], graph.u[forced])
    )
    _assert_same_graph(
        merge_graph(graph.u, graph.v, graph.statistics, 0.9, scoring, forced=forced), expected
    )
    assert np.all(expected.merge_score[forced] == 0.0)
    np.testing.assert_array_equal(expected.score, graph.score)


def test_merge_graph_takes_edges_in_any_order_and_integer_dtype() -> None:
    affs, fragments = _random_inputs(24, levels=255)
    graph = merge_regions(affs, fragments, 0.8, with_statistics=True)
    assert graph.statistics is not None
    rng = np.random.default_rng(1)
    forced = rng.random(graph.u.size) < 0.1
    order = rng.permutation(graph.u.size)
    shuffled = merge_graph(
        graph.u[order].astype(np.int64),
        graph.v[order].astype(np.int64),
        [graph.statistics[i] for i in order],
        0.8,
        forced=forced[order],
    )
    _assert_same_graph(
        shuffled, merge_graph(graph.u, graph.v, graph.statistics, 0.8, forced=forced)
    )


def test_merge_graph_of_no_edges() -> None:
    empty = np.zeros(0, np.uint64)
    graph = merge_graph(empty, empty, (), 0.5, forced=np.zeros(0, bool))
    assert graph.u.size == 0 and graph.n_merges == 0
    volume = merge_regions(np.zeros((3, 0, 5, 6), np.float32), np.zeros((0, 5, 6), np.uint64), 0.5)
    assert volume.statistics is None
    volume = merge_regions(*_valid(), 0.5, with_statistics=True)
    assert volume.statistics == ()


def _running_mean(values: list[np.float32]) -> np.float32:
    """The kernel's (and waterz's) float32 running mean, in scan order."""
    mean = np.float32(0)
    for n, a in enumerate(values):
        mean = np.float32((a + mean * np.float32(n)) / np.float32(n + 1))
    return mean


def _bin(affinity: np.float32) -> int:
    """waterz's discretize(affinity, 256)."""
    if not affinity > 0:
        return 0
    return min(int(np.float32(affinity) * np.float32(256)), 255)


@pytest.mark.parametrize("scoring", GRAPH_SCORINGS, ids=GRAPH_SCORING_IDS)
def test_statistics_are_the_documented_scan_state(scoring: Scoring) -> None:
    affs, fragments = _random_inputs(25, shape=(5, 6, 7), n_seeds=12)
    faces = _faces(affs, fragments)
    graph = merge_regions(affs, fragments, 0.5, scoring, with_statistics=True)
    assert graph.statistics is not None
    tag = 0x10 | ["mean", "histogram_quantile", "quantile", "mean_max_k"].index(scoring.kind)
    if scoring.init_with_max and scoring.kind in ("quantile", "histogram_quantile"):
        tag |= 0x08
    for u, v, blob in zip(graph.u.tolist(), graph.v.tolist(), graph.statistics, strict=True):
        values = faces[(u, v)]
        assert isinstance(blob, bytes) and blob[0] == tag
        payload = blob[1:]
        if scoring.kind == "mean":
            mean, count = struct.unpack("<fQ", payload)
            assert np.float32(mean) == _running_mean(values) and count == len(values)
        elif scoring.kind == "histogram_quantile":
            bins = np.frombuffer(payload, dtype=[("bin", "u1"), ("count", "<u4")])
            if scoring.init_with_max:
                expected_bins, counts = np.array([_bin(max(values))]), np.array([1])
            else:
                expected_bins, counts = np.unique([_bin(a) for a in values], return_counts=True)
            np.testing.assert_array_equal(bins["bin"], expected_bins)
            np.testing.assert_array_equal(bins["count"], counts)
        elif scoring.kind == "quantile":
            expected = [max(values)] if scoring.init_with_max else values
            np.testing.assert_array_equal(np.frombuffer(payload, "<f4"), np.float32(expected))
        else:
            largest = sorted(values, reverse=True)[: scoring.k]
            padding = [np.finfo(np.float32).min] * (scoring.k - len(largest))
            np.testing.assert_array_equal(
                np.frombuffer(payload, "<f4"), np.float32(largest + padding)
            )


@pytest.mark.parametrize("kind", ["quantile", "histogram_quantile"])
def test_one_blob_serves_every_quantile(kind: ScoringKind) -> None:
    affs, fragments = _random_inputs(26)
    graph = merge_regions(
        affs, fragments, 0.9, Scoring(kind, 50, init_with_max=False), with_statistics=True
    )
    assert graph.statistics is not None
    for quantile in (0, 20, 90):
        scoring = Scoring(kind, quantile, init_with_max=False)
        _assert_same_graph(
            merge_graph(graph.u, graph.v, graph.statistics, 0.9, scoring),
            merge_regions(affs, fragments, 0.9, scoring),
        )


def _small_graph(scoring: Scoring | None = None) -> RegionGraph:
    affs, fragments = _random_inputs(27, shape=(5, 6, 7), n_seeds=12)
    return merge_regions(affs, fragments, 0.5, scoring or Scoring(), with_statistics=True)


def _nan_mean(stats: list) -> list:
    return [bytes([0x10]) + struct.pack("<fQ", float("nan"), 3), *stats[1:]]


HQ = Scoring("histogram_quantile", init_with_max=False)
HQ_MAX = Scoring("histogram_quantile", init_with_max=True)
Q = Scoring("quantile", init_with_max=False)
Q_MAX = Scoring("quantile", init_with_max=True)


@pytest.mark.parametrize(
    ("made_with", "change", "scoring", "message"),
    [
        (Scoring(), lambda u, v, s, f: (u[:-1], v, s, f), Scoring(), "one entry per edge"),
        (Scoring(), lambda u, v, s, f: (u, v, s[:-1], f), Scoring(), "one blob per edge"),
        (Scoring(), lambda u, v, s, f: (u, v, s, f[:-1]), Scoring(), "forced must hold"),
        (Scoring(), lambda u, v, s, f: (u, v, s, f.astype(np.uint8)), Scoring(), "dtype bool"),
        (Scoring(), lambda u, v, s, f: (v, u, s, f), Scoring(), "u < v"),
        (
            Scoring(),
            lambda u, v, s, f: (np.r_[u, u[:1]], np.r_[v, v[:1]], [*s, s[0]], None),
            Scoring(),
            "unique",
        ),
        (Scoring(), lambda u, v, s, f: (u * 0, v, s, f), Scoring(), "> 0"),
        (Scoring(), lambda u, v, s, f: (u.astype(np.int64) - 99, v, s, f), Scoring(), "> 0"),
        (Scoring(), lambda u, v, s, f: (u.tolist(), v, s, f), Scoring(), "numpy array"),
        (Scoring(), lambda u, v, s, f: (u.astype(float), v, s, f), Scoring(), "integer"),
        (Scoring(), lambda u, v, s, f: (u, v, b"".join(s), f), Scoring(), "sequence of bytes"),
        (Scoring(), lambda u, v, s, f: (u, v, [x.hex() for x in s], f), Scoring(), "bytes"),
        (Scoring(), lambda u, v, s, f: (u, v, list(s), f), HQ, r'"mean" statistic.*"histo'),
        (Scoring(), lambda u, v, s, f: (u, v, [s[0] + b"\0", *s[1:]], f), Scoring(), "14 bytes"),
        (Scoring(), lambda u, v, s, f: (u, v, [b"", *s[1:]], f), Scoring(), "is empty"),
        (
            Scoring(),
            lambda u, v, s, f: (u, v, [b"\x20" + s[0][1:], *s[1:]], f),
            Scoring(),
            "format tag",
        ),
        (Scoring(), lambda u, v, s, f: (u, v, _nan_mean(list(s)), f), Scoring(), "not finite"),
        (HQ, lambda u, v, s, f: (u, v, s, f), HQ_MAX, "made with init_with_max=False, but"),
        (Q_MAX, lambda u, v, s, f: (u, v, s, f), Q, "made with init_with_max=True, but"),
        (
            HQ_MAX,
            lambda u, v, s, f: (u, v, [s[0][:2] + struct.pack("<I", 2), *s[1:]], f),
            HQ_MAX,
            "several faces",
        ),
        (
            Q_MAX,
            lambda u, v, s, f: (u, v, [s[0][:1] + s[0][1:] * 2, *s[1:]], f),
            Q_MAX,
            "holds 2 affinities",
        ),
        (Scoring("mean_max_k", k=2), lambda u, v, s, f: (u, v, s, f), Scoring(), 'is "mean"'),
        (
            Scoring("mean_max_k", k=4),
            lambda u, v, s, f: (u, v, s, f),
            Scoring("mean_max_k", k=3),
            r"k = 3 has 13 \(the blob holds k = 4\)",
        ),
        (Scoring(), lambda u, v, s, f: (u, v, s, f), Scoring("quantile", 101), "0..100"),
    ],
    ids=[
        "u-length",
        "statistics-length",
        "forced-length",
        "forced-dtype",
        "u>=v",
        "duplicate",
        "zero-id",
        "negative-id",
        "list",
        "float-ids",
        "one-bytes",
        "str-blobs",
        "wrong-kind",
        "wrong-size",
        "empty-blob",
        "unknown-version",
        "nan-mean",
        "histogram-init-with-max",
        "quantile-init-with-max",
        "histogram-count-two",
        "quantile-two-values",
        "max-k-for-mean",
        "wrong-k",
        "bad-scoring",
    ],
)
def test_bad_graphs_raise(
    made_with: Scoring, change: Callable, scoring: Scoring, message: str
) -> None:
    graph = _small_graph(made_with)
    forced = np.zeros(graph.u.size, dtype=bool)
    u, v, statistics, forced = change(graph.u, graph.v, graph.statistics, forced)
    with pytest.raises(RegionMergingInputError, match=message):
        merge_graph(u, v, statistics, 0.5, scoring, forced=forced)


@pytest.mark.parametrize("threshold", [float("nan"), float("inf"), "0.5"])
def test_merge_graph_bad_threshold_raises(threshold: float) -> None:
    graph = _small_graph()
    assert graph.statistics is not None
    with pytest.raises(RegionMergingInputError, match="finite"):
        merge_graph(graph.u, graph.v, graph.statistics, threshold)


# ---------------------------------------------------------------- forced pairs


def test_no_or_absent_forced_pairs_change_nothing() -> None:
    affs, fragments = _random_inputs(28, levels=255)
    expected = merge_regions(affs, fragments, 0.8)
    empty = np.zeros(0, np.uint64)
    absent = np.uint64(fragments.max() + 1)
    # pairs that are no edge: not touching, absent ids, background, a fragment with itself
    touching = set(zip(expected.u.tolist(), expected.v.tolist(), strict=True))
    ids = np.unique(fragments[fragments > 0]).tolist()
    apart = [(a, b) for a in ids for b in ids if a < b and (a, b) not in touching][:20]
    assert len(apart) == 20
    no_edges = (
        np.array([a for a, _ in apart] + [1, absent, 0, 5], dtype=np.uint64),
        np.array([b for _, b in apart] + [absent, absent + 1, 3, 5], dtype=np.uint64),
    )
    for forced_pairs in [None, (empty, empty), (empty.astype(np.int64), empty), no_edges]:
        _assert_same_graph(merge_regions(affs, fragments, 0.8, forced_pairs=forced_pairs), expected)


@pytest.mark.parametrize(
    ("forced_pairs", "message"),
    [
        ((np.ones(2, np.uint64),), "pair"),
        (np.ones((2, 3), np.uint64), "pair"),
        ((np.ones(2, np.uint64), np.ones(3, np.uint64)), "same length"),
        ((np.ones(2), np.ones(2, np.uint64)), "integer"),
        ((np.ones(2, np.int64), -np.ones(2, np.int64)), ">= 0"),
        (([1, 2], np.ones(2, np.uint64)), "numpy array"),
    ],
    ids=["one-array", "2d-array", "lengths", "float", "negative", "list"],
)
def test_bad_forced_pairs_raise(forced_pairs: object, message: str) -> None:
    with pytest.raises(RegionMergingInputError, match=message):
        merge_regions(*_valid(), 0.5, forced_pairs=forced_pairs)  # type: ignore[arg-type]


def test_forced_edges_merge_first_at_merge_score_zero() -> None:
    affs, fragments = _random_inputs(29)
    graph = merge_regions(affs, fragments, 0.8)
    # the most expensive edges, which would not merge below 0.8 otherwise
    forced = graph.score >= np.quantile(graph.score, 0.9)
    pairs = (graph.u[forced], graph.v[forced])

    at_zero = merge_regions(affs, fragments, 0.0, forced_pairs=pairs)
    np.testing.assert_array_equal(at_zero.score, graph.score)
    assert np.all(at_zero.merge_score[forced] == 0.0)
    # at threshold 0 only the forced merges happen: the forced edges' components
    components = segment(
        fragments,
        RegionGraph(pairs[0], pairs[1], pairs[0] * 0.0, np.zeros(forced.sum(), np.float32), 0),
        0.5,
    )
    assert _same_partition(segment(fragments, at_zero, 1e-30), components)
    assert (
        np.unique(fragments[fragments > 0]).size - at_zero.n_merges
        == np.unique(components[components > 0]).size
    )

    # the merge scores stay a cut of the merging at every threshold: forced
    # merges first, then the running maximum of the real scores
    full = merge_regions(affs, fragments, 0.8, forced_pairs=pairs)
    assert np.all(full.merge_score[forced] == 0.0)
    assert np.all(full.merge_score[~np.isnan(full.merge_score)] >= 0.0)
    for threshold in [0.1, 0.3, 0.5, 0.7]:
        partial = merge_regions(affs, fragments, threshold, forced_pairs=pairs)
        assert _same_partition(
            segment(fragments, partial, threshold), segment(fragments, full, threshold)
        )


def _split_at(
    fragments: NDArray[np.uint64], x: int, only_touching: bool
) -> tuple[NDArray[np.uint64], tuple[NDArray[np.uint64], NDArray[np.uint64]]]:
    """Cut fragments by the plane between x - 1 and x: their part at >= x gets
    the id + max id + 1. Returns the cut fragments and the pairs of halves;
    with ``only_touching``, only fragments whose halves touch across the plane
    are cut (the others would stay apart after forced merges)."""
    lower, upper = fragments[:, :, :x], fragments[:, :, x:]
    if only_touching:
        at_plane = lower[:, :, -1]
        cut = np.unique(at_plane[(at_plane == upper[:, :, 0]) & (at_plane > 0)])
    else:
        cut = np.intersect1d(lower[lower > 0], upper[upper > 0])
    offset = np.uint64(fragments.max() + 1)
    result = fragments.copy()
    part = result[:, :, x:]
    part[np.isin(part, cut)] += offset
    return result, (cut, cut + offset)


def _pairwise_constant_affinities(fragments: NDArray[np.uint64], seed: int) -> NDArray[np.float32]:
    """Random affinities, except that all faces between two fragments hold one
    value, a different histogram bin centre (2 b + 1)/512 per pair: every
    statistic of the faces of two edges of one pair combined is then exactly
    that of one edge, and no two live edges ever tie."""
    rng = np.random.default_rng(seed)
    affs = rng.random((3, *fragments.shape)).astype(np.float32)
    faces = []
    for d in range(3):
        upper = tuple(slice(1, None) if i == d else slice(None) for i in range(3))
        lower = tuple(slice(None, -1) if i == d else slice(None) for i in range(3))
        a, b = fragments[upper], fragments[lower]
        key = (np.minimum(a, b) << np.uint64(32)) | np.maximum(a, b)
        faces.append((upper, key, (a != b) & (a > 0) & (b > 0)))
    keys = np.unique(np.concatenate([key[boundary] for _, key, boundary in faces]))
    assert keys.size <= 256
    values = (rng.permutation(256)[: keys.size] * 2 + 1).astype(np.float32) / 512
    for d, (upper, key, boundary) in enumerate(faces):
        affs[d][upper][boundary] = values[np.searchsorted(keys, key[boundary])]
    return affs


@pytest.mark.parametrize(
    "scoring",
    [
        Scoring("mean"),
        Scoring("histogram_quantile", 50, init_with_max=False),
        Scoring("quantile", 50, init_with_max=False),
        Scoring("mean_max_k", k=4),
    ],
    ids=["mean", "hq50", "q50", "max4"],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_forced_halves_merge_as_one_fragment(seed: int, scoring: Scoring) -> None:
    """Where combining the statistics of the halves' edges is exact (one value
    per fragment pair), the cut fragments with forced halves give the
    partition of the uncut ones at every threshold. (With init_with_max each
    half contributes its own maximum, so that is left out.)"""
    _, fragments = _random_inputs(seed, shape=(12, 16, 20), n_seeds=30)
    affs = _pairwise_constant_affinities(fragments, seed)
    cut, halves = _split_at(fragments, 10, only_touching=True)
    assert halves[0].size >= 5
    whole = merge_regions(affs, fragments, 1.0, scoring)
    forced = merge_regions(affs, cut, 1.0, scoring, forced_pairs=halves)
    for threshold in np.linspace(0, 1, 41)[1:]:
        assert _same_partition(
            segment(fragments, whole, threshold), segment(cut, forced, threshold)
        ), f"partition at {threshold}"


def _mismatched_voxels(a: NDArray[np.uint64], b: NDArray[np.uint64]) -> int:
    """Voxels outside the largest overlap of their segment with the other
    labeling, counted both ways (0 for the same partition)."""
    _, index_a = np.unique(a, return_inverse=True)
    _, index_b = np.unique(b, return_inverse=True)
    n_b = int(index_b.max()) + 1
    pairs, counts = np.unique(index_a.ravel() * n_b + index_b.ravel(), return_counts=True)
    best_a = np.zeros(int(index_a.max()) + 1, np.int64)
    best_b = np.zeros(n_b, np.int64)
    np.maximum.at(best_a, pairs // n_b, counts)
    np.maximum.at(best_b, pairs % n_b, counts)
    return 2 * a.size - int(best_a.sum()) - int(best_b.sum())


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_forced_halves_with_mean_merge_almost_as_one_fragment(seed: int) -> None:
    """With the float mean, the halves' edges to a common neighbour combine by
    the edge-merge formula, which can round otherwise than one scan, and the
    extra edges change the queue's tie-breaking: the partitions agree up to a
    few voxels on continuous affinities (not where exact ties abound, e.g.
    saturated predictions)."""
    affs, fragments = _random_inputs(seed)
    cut, halves = _split_at(fragments, 20, only_touching=True)
    whole = merge_regions(affs, fragments, 1.0)
    forced = merge_regions(affs, cut, 1.0, forced_pairs=halves)
    for threshold in np.linspace(0, 1, 21)[1:]:
        mismatched = _mismatched_voxels(
            segment(fragments, whole, threshold), segment(cut, forced, threshold)
        )
        assert mismatched <= 0.01 * fragments.size, f"at {threshold}: {mismatched} voxels"


# ---------------------------------------------------------------- block-wise composition


def _x_extents(
    fragments: NDArray[np.uint64],
) -> tuple[dict[int, tuple[int, int]], dict[tuple[int, int], tuple[int, int]]]:
    """The x range (first, last) of each fragment's voxels, and of the voxels
    on both sides of each edge's faces."""
    x = np.broadcast_to(np.arange(fragments.shape[2]), fragments.shape)
    ids, index = np.unique(fragments, return_inverse=True)
    first = np.full(ids.size, fragments.shape[2])
    last = np.full(ids.size, -1)
    np.minimum.at(first, index.ravel(), x.ravel())
    np.maximum.at(last, index.ravel(), x.ravel())
    fragment_extent = {int(i): (int(a), int(b)) for i, a, b in zip(ids, first, last, strict=True)}

    keys, low, high = [], [], []
    for d in range(3):
        upper = tuple(slice(1, None) if i == d else slice(None) for i in range(3))
        lower = tuple(slice(None, -1) if i == d else slice(None) for i in range(3))
        a, b = fragments[upper], fragments[lower]
        face = (a != b) & (a > 0) & (b > 0)
        keys.append(((np.minimum(a, b) << np.uint64(32)) | np.maximum(a, b))[face])
        low.append(x[lower][face])
        high.append(x[upper][face])
    edge_keys, index = np.unique(np.concatenate(keys), return_inverse=True)
    first = np.full(edge_keys.size, fragments.shape[2])
    last = np.full(edge_keys.size, -1)
    np.minimum.at(first, index, np.concatenate(low))
    np.maximum.at(last, index, np.concatenate(high))
    edge_extent = {
        (int(k >> np.uint64(32)), int(k & np.uint64(2**32 - 1))): (int(a), int(b))
        for k, a, b in zip(edge_keys, first, last, strict=True)
    }
    return fragment_extent, edge_extent


def _blocks(width: int) -> list[tuple[int, int, int, int]]:
    """Two blocks along x: write ROI [x0, x1), read ROI [r0, r1) one voxel wider."""
    middle = width // 2
    return [
        (x0, x1, max(x0 - 1, 0), min(x1 + 1, width)) for x0, x1 in [(0, middle), (middle, width)]
    ]


BLOCK_SCORINGS = [
    Scoring("mean"),
    Scoring("histogram_quantile", 50, init_with_max=False),
    Scoring("quantile", 50, init_with_max=True),
    Scoring("mean_max_k", k=4),
]
BLOCK_SCORING_IDS = ["mean", "hq50", "q50-max", "max4"]


@pytest.mark.parametrize("inputs", ["smooth-23", "fib25"])
@pytest.mark.parametrize("scoring", BLOCK_SCORINGS, ids=BLOCK_SCORING_IDS)
def test_block_statistics_are_those_of_the_whole_volume(
    scoring: Scoring, inputs: str, request: pytest.FixtureRequest
) -> None:
    """A block's read ROI gives an edge the statistic of the whole volume if it
    holds all the edge's faces, in particular if one of the edge's fragments
    lies in the block; merge_graph over the union is the whole volume's merge."""
    affs, fragments = _graph_inputs(inputs, request)
    whole = merge_regions(affs, fragments, 0.7, scoring, with_statistics=True)
    assert whole.statistics is not None
    fragment_extent, edge_extent = _x_extents(fragments)
    statistic = {
        edge: blob
        for edge, blob in zip(
            zip(whole.u.tolist(), whole.v.tolist(), strict=True), whole.statistics, strict=True
        )
    }

    from_blocks: dict[tuple[int, int], bytes] = {}
    for x0, x1, r0, r1 in _blocks(fragments.shape[2]):
        block = merge_regions(
            affs[..., r0:r1], fragments[..., r0:r1], 0.7, scoring, with_statistics=True
        )
        assert block.statistics is not None
        n_inside = 0
        for u, v, blob in zip(block.u.tolist(), block.v.tolist(), block.statistics, strict=True):
            first, last = edge_extent[(u, v)]
            if not (r0 <= first and last < r1):
                continue
            assert blob == statistic[(u, v)], f"edge {(u, v)} of block {(x0, x1)}"
            from_blocks[(u, v)] = blob
            n_inside += 1
        # the edges of the fragments that lie in the block are among them
        inside = {
            f for f, (first, last) in fragment_extent.items() if f > 0 and x0 <= first <= last < x1
        }
        owned = {edge for edge in statistic if edge[0] in inside or edge[1] in inside}
        assert owned <= from_blocks.keys()
        assert n_inside > 0.3 * whole.u.size

    union = [from_blocks.get(edge, blob) for edge, blob in statistic.items()]
    _assert_same_graph(merge_graph(whole.u, whole.v, union, 0.7, scoring), whole)


@pytest.mark.parametrize("inputs", ["smooth-23", "k/4-22", "fib25"])
@pytest.mark.parametrize("scoring", BLOCK_SCORINGS, ids=BLOCK_SCORING_IDS)
def test_blockwise_cut_fragments_merge_as_the_whole_volume(
    scoring: Scoring, inputs: str, request: pytest.FixtureRequest
) -> None:
    """The real use: fragments cut at the block face, each block stores the
    edges of its fragments (the smaller id in the block) with their
    statistics, and merge_graph over all of them, the halves forced, is the
    whole cut volume merged with the halves forced, bit for bit."""
    affs, fragments = _graph_inputs(inputs, request)
    middle = fragments.shape[2] // 2
    cut, halves = _split_at(fragments, middle, only_touching=False)
    whole = merge_regions(affs, cut, 0.7, scoring, forced_pairs=halves, with_statistics=True)
    assert whole.statistics is not None
    fragment_extent, _ = _x_extents(cut)

    u, v, statistics = [], [], []
    for x0, x1, r0, r1 in _blocks(cut.shape[2]):
        block = merge_regions(
            affs[..., r0:r1],
            cut[..., r0:r1],
            0.7,
            scoring,
            forced_pairs=halves,
            with_statistics=True,
        )
        assert block.statistics is not None
        owned = np.array(
            [x0 <= fragment_extent[a][0] and fragment_extent[a][1] < x1 for a in block.u.tolist()],
            dtype=bool,
        )
        u.append(block.u[owned])
        v.append(block.v[owned])
        statistics += [
            blob for blob, is_owned in zip(block.statistics, owned, strict=True) if is_owned
        ]
    u_all, v_all = np.concatenate(u), np.concatenate(v)
    order = np.lexsort((v_all, u_all))
    np.testing.assert_array_equal(u_all[order], whole.u)
    np.testing.assert_array_equal(v_all[order], whole.v)
    assert [statistics[i] for i in order] == list(whole.statistics)

    halves_set = set(zip(halves[0].tolist(), halves[1].tolist(), strict=True))
    forced = np.array(
        [pair in halves_set for pair in zip(u_all.tolist(), v_all.tolist(), strict=True)]
    )
    assert forced.sum() > 0
    _assert_same_graph(merge_graph(u_all, v_all, statistics, 0.7, scoring, forced=forced), whole)
