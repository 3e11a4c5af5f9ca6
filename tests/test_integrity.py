"""Outputs that match their markers: damaged outputs of finished blocks are found and re-run.

Every test damages a finished gala run in one way, runs the same command
again and compares everything the run wrote (every zarr array, the graph
store's nodes and edges, the evaluation report) with an undisturbed run.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
import zarr
from funlib.geometry import Roi
from gala import gala_data as shared_gala_data

from blockwise.cli import main
from blockwise.config import DatasetConfig, parse_config
from blockwise.errors import InputError
from blockwise.integrity import clear_done, read_done
from blockwise.plan import describe_plan
from blockwise.run_context import RunContext
from blockwise.run_state import blocks_done
from blockwise.runner import run
from blockwise.status import describe_status
from blockwise.store.tables import id_to_signed
from blockwise.volume import open_volume

# the gala crop (50 x 100 x 200 vx) in blocks of 32^3: a (2, 4, 7) grid
GRID = (2, 4, 7)


def gala_data(gala: Path, run_dir: Path, method: str = "global") -> dict[str, Any]:
    """The CI config on the gala crop; ``hierarchical`` adds the octree stage (mean scoring)."""
    return shared_gala_data(gala, run_dir, segments={"method": method})


def in_process(data: dict[str, Any]) -> Any:
    result = run(parse_config(data), multiprocessing=False, progress=False)
    assert result.ok, result.summary()
    return result


@pytest.fixture(scope="module")
def references(gala: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Undisturbed runs, one per segments.method, made when first asked for."""
    made: dict[str, Path] = {}

    def reference(method: str) -> Path:
        if method not in made:
            run_dir = tmp_path_factory.mktemp(f"reference_{method}") / "run"
            in_process(gala_data(gala, run_dir, method))
            made[method] = run_dir
        return made[method]

    return reference


@pytest.fixture(scope="module")
def reference(references: Callable[[str], Path]) -> Path:
    """An undisturbed run (segments.method: global)."""
    return references("global")


def everything(run_dir: Path) -> dict[str, Any]:
    """Every array in output.zarr, the store's nodes and edges, the report (paths removed)."""
    arrays: dict[str, Any] = {}
    root = zarr.open_group(str(run_dir / "output.zarr"), mode="r")
    root.visititems(
        lambda name, obj: (
            arrays.__setitem__(name, obj[...]) if isinstance(obj, zarr.Array) else None
        )
    )
    db = sqlite3.connect(run_dir / "graph.sqlite")
    arrays["nodes"] = db.execute("SELECT * FROM nodes ORDER BY id").fetchall()
    arrays["edges"] = db.execute("SELECT * FROM edges ORDER BY u, v").fetchall()
    db.close()
    arrays["evaluation"] = (run_dir / "evaluation.json").read_text().replace(str(run_dir), "RUN")
    return arrays


def assert_identical(run_dir: Path, reference: Path) -> None:
    left, right = everything(run_dir), everything(reference)
    assert left.keys() == right.keys()
    for name in left:
        if isinstance(left[name], np.ndarray):
            assert left[name].dtype == right[name].dtype, name
            assert np.array_equal(left[name], right[name]), name
        else:
            assert left[name] == right[name], name


def done_counts(result: Any) -> dict[str, int]:
    return {s.name: s.done for s in result.stages}


def finished(gala: Path, tmp_path: Path, method: str = "global") -> tuple[dict[str, Any], Path]:
    data = gala_data(gala, tmp_path / "run", method)
    in_process(data)
    return data, tmp_path / "run"


def test_markers_and_the_manifest_of_a_finished_run(gala: Path, tmp_path: Path) -> None:
    _, run_dir = finished(gala, tmp_path)
    # the run recorded size and mtime of every chunk its finished blocks wrote
    manifest = json.loads((run_dir / "integrity" / "extract_fragments.json").read_text())
    fragments = run_dir / "output.zarr" / "fragments"
    chunks = sorted(p.name for p in fragments.iterdir() if not p.name.startswith("."))
    assert sorted(manifest["fragments"]) == chunks and len(chunks) == 4 * 7 * 13
    for name in chunks:
        st = (fragments / name).stat()
        assert manifest["fragments"][name] == [st.st_size, st.st_mtime_ns]
    tracking = run_dir / "tracking" / "extract_fragments"
    done = read_done(tracking)
    assert done is not None and done.shape == GRID and done.all()
    clear_done(tracking, [(1, 2, 3), (0, 0, 0)])
    after = read_done(tracking)
    assert after is not None
    assert not after[1, 2, 3] and not after[0, 0, 0]
    assert int(after.sum()) == blocks_done(tracking) == done.size - 2


@pytest.mark.slow
@pytest.mark.parametrize("method", ["global", "hierarchical"])
def test_a_deleted_fragments_chunk_is_rerun_with_what_read_it(
    gala: Path, tmp_path: Path, references: Callable[[str], Path], method: str
) -> None:
    data, run_dir = finished(gala, tmp_path, method)
    # chunk (1, 2, 3) of 16^3 voxels lies in block (0, 1, 1) of 32^3: index 8
    (run_dir / "output.zarr" / "fragments" / "1.2.3").unlink()
    result = in_process(data)
    done = done_counts(result)
    assert done["extract_fragments"] == 1
    # agglomerate blocks reading block (0, 1, 1) with 8 voxels of context: z 0-1, y 0-2, x 0-2
    assert done["agglomerate"] == 2 * 3 * 3
    assert done["find_segments"] == 1 and done["relabel"] == 56 and done["evaluate"] == 1
    assert_identical(run_dir, references(method))
    # and the repaired run is trusted again: nothing more to do
    again = in_process(data)
    assert all(s.done == 0 for s in again.stages), again.summary()


@pytest.mark.parametrize("damage", ["deleted", "garbled"])
def test_a_damaged_basin_file_reruns_its_extract_block(
    gala: Path, tmp_path: Path, references: Callable[[str], Path], damage: str
) -> None:
    """agglomerate finds cut basins in the flood extract_fragments saved per block."""
    data, run_dir = finished(gala, tmp_path, "hierarchical")
    basin = run_dir / "basins" / "block_8.npz"
    if damage == "deleted":
        basin.unlink()
    else:
        basin.write_bytes(b"not an npz" * 10)
    result = in_process(data)
    done = done_counts(result)
    assert done["extract_fragments"] == 1
    assert basin.is_file()
    assert_identical(run_dir, references("hierarchical"))
    again = in_process(data)
    assert all(s.done == 0 for s in again.stages), again.summary()


@pytest.mark.slow
def test_a_corrupted_chunk_is_named_and_rerun(gala: Path, tmp_path: Path, reference: Path) -> None:
    data, run_dir = finished(gala, tmp_path)
    chunk = run_dir / "output.zarr" / "segmentation" / "threshold_0.5000" / "2.5.11"
    chunk.write_bytes(b"this is not a blosc frame" * 8)
    ctx = RunContext(parse_config(data))
    with pytest.raises(InputError, match=r"cannot be read .*") as error:
        ctx.segmentation(0.5).read(ctx.data_roi)
    assert f"chunk file {chunk}" in str(error.value)
    assert "output.zarr:segmentation/threshold_0.5000" in str(error.value)
    ctx.close()
    result = in_process(data)
    done = done_counts(result)
    # relabel block (1, 2, 5) wrote chunk (2, 5, 11); evaluate read it
    assert done["extract_fragments"] == done["agglomerate"] == done["find_segments"] == 0
    assert done["relabel"] == 1 and done["evaluate"] == 1
    assert_identical(run_dir, reference)


@pytest.mark.slow
def test_a_deleted_graph_store_is_noticed_and_rebuilt(
    gala: Path, tmp_path: Path, reference: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, run_dir = finished(gala, tmp_path)
    (run_dir / "graph.sqlite").unlink()
    path = tmp_path / "gala.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["status", str(path), "--verify"]) == 0
    status = capsys.readouterr().out
    assert "extract_fragments (every block): graph store" in status
    assert "deleted or replaced" in status
    assert f"`blockwise run {path}` re-runs them" in status
    result = in_process(data)
    done = done_counts(result)
    assert done["extract_fragments"] == 56 and done["agglomerate"] == 56
    assert_identical(run_dir, reference)


@pytest.mark.parametrize("method", ["global", "hierarchical"])
def test_rows_the_store_lost_are_found_by_the_next_plain_run(
    gala: Path, tmp_path: Path, references: Callable[[str], Path], method: str
) -> None:
    # no --verify: every run compares the store's node and edge counts with those
    # recorded when the last run ended, and only then the store with the fragments
    data, run_dir = finished(gala, tmp_path, method)
    counts = json.loads((run_dir / "integrity" / "store_counts.json").read_text())
    db = sqlite3.connect(run_dir / "graph.sqlite")
    assert counts["nodes"] == db.execute("SELECT COUNT(*) FROM nodes").fetchone()[0] > 0
    assert counts["edges"] == db.execute("SELECT COUNT(*) FROM edges").fetchone()[0] > 0
    # block 1 loses its nodes; one edge owned elsewhere is lost too
    first, last = (id_to_signed(32**3 + 1), id_to_signed(2 * 32**3))
    assert db.execute("DELETE FROM nodes WHERE id >= ? AND id <= ?", (first, last)).rowcount > 0
    (u,) = db.execute("SELECT u FROM edges WHERE u > ? ORDER BY u, v LIMIT 1", (last,)).fetchone()
    assert db.execute("DELETE FROM edges WHERE u = ?", (u,)).rowcount > 0
    db.commit()
    db.close()
    result = in_process(data)
    done = done_counts(result)
    assert done["extract_fragments"] == 1  # exactly the block whose nodes went
    # the lost edge cannot be placed by counts alone: every agglomerate block re-runs
    assert done["agglomerate"] == 56
    assert_identical(run_dir, references(method))
    # a run after an undisturbed one does no block work
    again = in_process(data)
    assert sum(done_counts(again).values()) == 0


def test_nodes_the_store_lost_rerun_only_their_blocks(
    gala: Path, tmp_path: Path, reference: Path
) -> None:
    data, run_dir = finished(gala, tmp_path)
    db = sqlite3.connect(run_dir / "graph.sqlite")
    first, last = (id_to_signed(32**3 + 1), id_to_signed(2 * 32**3))
    assert db.execute("DELETE FROM nodes WHERE id >= ? AND id <= ?", (first, last)).rowcount > 0
    db.commit()
    db.close()
    done = done_counts(in_process(data))
    assert done["extract_fragments"] == 1
    # block 1 and the agglomerate blocks whose read ROI covers it, not all 56
    assert 1 <= done["agglomerate"] < 56
    assert_identical(run_dir, reference)


def test_a_deleted_pyramid_chunk_is_rerun(gala: Path, tmp_path: Path, reference: Path) -> None:
    data, run_dir = finished(gala, tmp_path)
    level = run_dir / "output.zarr" / "multiscale" / "fragments" / "s1"
    chunk = sorted(p for p in level.rglob("*") if p.is_file() and not p.name.startswith("."))[0]
    chunk.unlink()
    done = done_counts(in_process(data))
    assert done["downsample"] == 1 and done["relabel"] == 0 and done["extract_fragments"] == 0
    assert chunk.is_file()
    assert_identical(run_dir, reference)


@pytest.mark.parametrize("damage", ["task file deleted", "leaf file deleted", "seam file garbled"])
def test_damaged_hierarchy_files_are_found_and_recomputed(
    gala: Path, tmp_path: Path, references: Callable[[str], Path], damage: str
) -> None:
    data, run_dir = finished(gala, tmp_path, "hierarchical")
    hierarchy = run_dir / "hierarchy"
    if damage == "task file deleted":
        sorted((hierarchy / "tasks" / "level_1").glob("node_*.npz"))[0].unlink()
    elif damage == "leaf file deleted":
        (hierarchy / "leaves" / "block_5.npz").unlink()
    else:
        seam = sorted((hierarchy / "edges" / "level_1").glob("block_*.npz"))[0]
        seam.write_bytes(b"not an npz" * 10)
    result = in_process(data)
    done = done_counts(result)
    if damage == "task file deleted":
        assert done["agglomerate"] == 0  # the leaves are fine: only the octree re-runs
    else:
        assert done["agglomerate"] == 1  # the block that wrote the file
    levels = [name for name in done if name.startswith("hierarchy_level_")]
    assert levels and all(done[name] > 0 for name in levels)
    assert done["find_segments"] == 1
    assert_identical(run_dir, references("hierarchical"))
    # nothing left to repair
    assert sum(done_counts(in_process(data)).values()) == 0


@pytest.mark.slow
def test_status_verify_reads_every_chunk_and_the_next_run_repairs(
    gala: Path, tmp_path: Path, reference: Path
) -> None:
    data, run_dir = finished(gala, tmp_path)
    config = parse_config(data)
    assert "verified: every chunk and file" in describe_status(config, verify=True)
    # damage that keeps size and modification time: only reading the chunk shows it
    chunk = run_dir / "output.zarr" / "fragments" / "0.3.6"
    st = chunk.stat()
    chunk.write_bytes(bytes(st.st_size))
    os.utime(chunk, ns=(st.st_atime_ns, st.st_mtime_ns))
    # a block whose nodes the store lost (block 1: its ids come right after block 0's)
    db = sqlite3.connect(run_dir / "graph.sqlite")
    first, last = (id_to_signed(32**3 + 1), id_to_signed(2 * 32**3))
    lost = db.execute("DELETE FROM nodes WHERE id >= ? AND id <= ?", (first, last)).rowcount
    db.commit()
    db.close()
    assert lost > 0
    status = describe_status(config, verify=True)
    assert "verify: 2 damaged finished block(s)" in status, status
    # chunk (0, 3, 6) lies in block (0, 1, 3): index 10
    assert "extract_fragments block 10 " in status and f"chunk file {chunk}" in status
    assert "extract_fragments block 1 " in status
    assert f"holds 0 node(s) of this block, its fragments have {lost}" in status
    # the next run re-runs what --verify found (and what read it), and nothing else
    result = in_process(data)
    assert done_counts(result)["extract_fragments"] == 2
    assert "verified: every chunk and file" in describe_status(config, verify=True)
    assert_identical(run_dir, reference)


def test_a_missing_input_chunk_is_an_error_unless_it_means_the_fill_value(
    gala: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "gala.zarr"
    shutil.copytree(gala, copy)
    (copy / "affs" / "0.0.1.2").unlink()
    data = gala_data(copy, tmp_path / "run")
    with pytest.raises(InputError) as refused:
        run(parse_config(data), multiprocessing=False, progress=False)
    message = str(refused.value)
    assert f"{copy}:affs" in message and str(copy / "affs" / "0.0.1.2") in message
    assert "missing_chunks: fill_value" in message
    assert not (tmp_path / "run").exists()
    # the same file read by a block names the chunk too
    volume = open_volume(DatasetConfig(file=copy, dataset="affs"), (10, 10, 10))
    with pytest.raises(InputError, match=r"chunk file .*0\.0\.1\.2 .* is missing"):
        volume.read(Roi((0, 0, 0), (500, 1000, 2000)))
    # with missing_chunks: fill_value the chunk reads as zeros, and the run goes ahead
    lenient = open_volume(
        DatasetConfig(file=copy, dataset="affs", missing_chunks="fill_value"), (10, 10, 10)
    )
    assert not lenient.read(Roi((0, 640, 1280), (100, 100, 100))).any()
    data["inputs"]["affinities"]["missing_chunks"] = "fill_value"
    assert "data ROI" in describe_plan(parse_config(data))


def test_an_unreadable_input_chunk_names_the_array_and_the_file(gala: Path, tmp_path: Path) -> None:
    copy = tmp_path / "gala.zarr"
    shutil.copytree(gala, copy)
    chunk = copy / "affs" / "0.0.0.1"
    chunk.write_bytes(b"\x00garbage" * 3)
    volume = open_volume(DatasetConfig(file=copy, dataset="affs"), (10, 10, 10))
    with pytest.raises(InputError) as error:
        volume.read(Roi((0, 0, 0), (500, 1000, 2000)))
    assert f"{copy}:affs: chunk file {chunk} cannot be read" in str(error.value)
    # the chunks next to it still read
    assert volume.read(Roi((0, 0, 0), (100, 100, 100))).shape == (3, 10, 10, 10)
