"""The benchmark's streamed runs (how 1e8 edges fit) equal the in-memory hierarchy.

``tests/benchmarks/bench_hierarchical.py`` generates the 1e8-edge graph part by
part: each subtree's region with the edges leaving it, and each larger node's
seam edges alone. These checks, on a small volume, show that those parts are
exactly the whole graph's (seam edges per node, levels) and that the streamed
run gives the records of the in-memory run and of one task over everything.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from benchmarks.bench_hierarchical import THRESHOLDS, SyntheticVolume, run_streamed
from hierarchy.reference import records_of

from blockwise.hierarchical import (
    FragmentGraph,
    build_fragment_graph,
    plan_hierarchy,
    run_hierarchy,
)
from blockwise.kernels.mean_merge import merge_bound, merge_task
from blockwise.octree import Octree


def whole_graph(volume: SyntheticVolume) -> tuple[Octree, FragmentGraph]:
    arrays = volume.whole()
    octree = volume.octree
    return octree, build_fragment_graph(
        arrays["ids"],
        octree.block_index(arrays["home_coords"]),
        arrays["u"],
        arrays["v"],
        arrays["s"],
        arrays["n"],
        octree,
    )


@pytest.mark.parametrize("profile", ["boxes", "sharp"])
def test_seam_edges_generated_alone_equal_the_whole_graphs(profile: str) -> None:
    volume = SyntheticVolume(30_000, 4, 1, profile)
    octree, graph = whole_graph(volume)
    plan = plan_hierarchy(graph, octree)
    for level in range(1, octree.n_levels):
        for node in octree.nodes_at_level(level):
            alone, expected = volume.seam_edges(int(node)), plan.seam_edges(int(node))
            assert records_of(alone) == records_of(expected), (level, int(node))


@pytest.mark.parametrize("max_region_edges", [2_000, 20_000])
def test_streamed_run_equals_the_in_memory_and_the_single_task(
    tmp_path: Path, max_region_edges: int
) -> None:
    volume = SyntheticVolume(30_000, 4, 2)
    octree, graph = whole_graph(volume)
    result = run_hierarchy(graph, octree, THRESHOLDS)
    report = run_streamed(volume, tmp_path / "largest.npz", max_region_edges)
    streamed = np.load(tmp_path / "records.npy")
    order = np.lexsort((result.records.b, result.records.a))
    in_memory = np.stack([getattr(result.records, k)[order] for k in ("a", "b", "s", "n")])
    assert np.array_equal(streamed, in_memory)
    assert report["edges"] == len(graph.edges) and report["records"] == len(result.records)
    one_task = merge_task(
        graph.fragment_ids,
        np.zeros(graph.fragment_ids.size, np.uint8),
        0,
        graph.edges,
        merge_bound(max(THRESHOLDS)),
    )
    assert sorted(records_of(one_task.records)) == sorted(records_of(result.records))
