"""The neuroglancer viewer of a run: layers found, served, rendered in a real headless Chromium,
meshes served, worst errors pre-selected, clean errors and a clean Ctrl-C."""

from __future__ import annotations

import json
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
import zarr
from funlib.geometry import Coordinate

from blockwise.cli import main
from blockwise.errors import InputError
from blockwise.evaluation import evaluate_volumes, write_run_evaluation
from blockwise.viewer import (
    open_viewer,
    resolve_run_dir,
    run_layers,
    screenshot,
    stop_viewer,
    worst_selection,
)

from headless_chromium import Browser, chromium_binary, png_pixels

VOXEL_SIZE = (8, 4, 4)
OFFSET = (80, 40, 40)
SHAPE = (24, 64, 64)
BLOCKWISE = str(Path(sys.executable).with_name("blockwise"))


def make_labels(seed: int) -> np.ndarray:
    """Boxes of 8 x 16 x 16 voxels with shuffled ids (no 0)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(SHAPE)
    cell = (z // 8) * 16 + (y // 16) * 4 + (x // 16)
    ids = rng.permutation(1000)[: cell.max() + 1] + 1
    return ids[cell].astype(np.uint64)


def put(group: zarr.Group, name: str, data: np.ndarray) -> None:
    array = group.create_dataset(name, data=data, chunks=(*data.shape[:-3], 8, 32, 32))
    array.attrs["offset"] = list(OFFSET)
    array.attrs["resolution"] = list(VOXEL_SIZE)


def make_run(run_dir: Path, with_raw: bool = True) -> Path:
    """A finished-looking run directory, written by hand (no pipeline run)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    gt = make_labels(0)
    boundary = np.zeros(SHAPE, bool)
    for axis in range(3):
        boundary |= np.diff(gt, axis=axis, prepend=gt.take([0], axis=axis)) != 0
    rng = np.random.default_rng(1)
    raw = np.clip(170 - 120 * boundary + rng.normal(0, 15, SHAPE), 0, 255).astype(np.uint8)
    affs = np.stack([(~boundary * 255).astype(np.uint8)] * 3)
    inputs = zarr.open_group(str(run_dir.parent / "inputs.zarr"), mode="a")
    put(inputs, "raw", raw)
    put(inputs, "affs", affs)
    with h5py.File(run_dir.parent / "gt.h5", "w") as f:
        d = f.create_dataset("labels", data=gt)
        d.attrs["resolution"] = list(VOXEL_SIZE)
        d.attrs["offset"] = list(OFFSET)
    out = zarr.open_group(str(run_dir / "output.zarr"), mode="w")
    fragments = gt * 2 + (np.indices(SHAPE)[2] % 16 >= 8)  # each body cut in two
    put(out, "fragments", fragments.astype(np.uint64))
    merged = gt.copy()
    merged[gt == gt[0, 0, 16]] = gt[0, 0, 0]  # one merge
    put(out, "segmentation/threshold_0.3000", merged)
    put(out, "segmentation/threshold_0.5000", fragments.astype(np.uint64))
    config = {
        "name": "viewer_test",
        "run_dir": str(run_dir),
        "inputs": {
            "affinities": {"file": str(run_dir.parent / "inputs.zarr"), "dataset": "affs"},
            "ground_truth": {"file": str(run_dir.parent / "gt.h5"), "dataset": "labels"},
        },
    }
    if with_raw:
        config["inputs"]["raw"] = {"file": str(run_dir.parent / "inputs.zarr"), "dataset": "raw"}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    return run_dir


def evaluate_run(run_dir: Path) -> dict:
    layers = {spec.name: spec.volume for spec in run_layers(run_dir)}
    result = evaluate_volumes(layers["threshold_0.3000"], layers["ground_truth"])
    write_run_evaluation(
        {0.3: result}, "viewer_test", run_dir / "evaluation.json", run_dir / "evaluation.png"
    )
    return result.to_json()


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run")


@pytest.fixture
def stop_server() -> Iterator[None]:
    yield
    stop_viewer()


EXPECTED_LAYERS = [
    "raw",
    "affinities",
    "ground_truth",
    "fragments",
    "threshold_0.3000",
    "threshold_0.5000",
]


def test_run_layers(run_dir: Path) -> None:
    layers = run_layers(run_dir)
    assert [spec.name for spec in layers] == EXPECTED_LAYERS
    kinds = {spec.name: spec.kind for spec in layers}
    assert kinds["raw"] == "image" and kinds["affinities"] == "affinities"
    assert kinds["ground_truth"] == kinds["fragments"] == "segmentation"
    for spec in layers:
        assert spec.volume.voxel_size == Coordinate(VOXEL_SIZE)
        assert spec.volume.roi.offset == Coordinate(OFFSET)
    assert resolve_run_dir(run_dir / "config.yaml") == run_dir


def test_run_layers_without_raw_or_config(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "run", with_raw=False)
    assert [s.name for s in run_layers(run_dir)] == EXPECTED_LAYERS[1:]
    (run_dir / "config.yaml").unlink()
    assert [s.name for s in run_layers(run_dir)] == EXPECTED_LAYERS[3:]


def test_no_outputs_yet(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no outputs yet \(output.zarr is missing\)"):
        run_layers(tmp_path)
    zarr.open_group(str(tmp_path / "output.zarr"), mode="w")
    with pytest.raises(InputError, match=r"no outputs yet: .*neither 'fragments'"):
        run_layers(tmp_path)
    with pytest.raises(InputError, match=r"does not exist"):
        resolve_run_dir(tmp_path / "missing")


def test_worst_selection(run_dir: Path) -> None:
    layers = run_layers(run_dir)
    with pytest.raises(InputError, match=r"evaluation.json does not exist"):
        worst_selection(run_dir, layers)
    report = evaluate_run(run_dir)
    selection = worst_selection(run_dir, layers)
    worst_merge = report["merge_errors"][0]
    assert worst_merge["id"] in selection.segments["threshold_0.3000"]
    assert {p["id"] for p in worst_merge["partners"]} <= set(selection.segments["ground_truth"])
    assert selection.position_nm == tuple(worst_merge["centre_nm"])
    # the report of `blockwise evaluate` (one result) works too
    single = dict(report, segmentation=f"{run_dir}/output.zarr:segmentation/threshold_0.3000")
    (run_dir / "evaluation.json").write_text(json.dumps(single))
    assert worst_selection(run_dir, layers).segments == selection.segments
    (run_dir / "evaluation.json").write_text(
        json.dumps({"results": [{"threshold": 0.3, "voi_split": 0, "voi_merge": 0}]})
    )
    with pytest.raises(InputError, match=r"no per-object errors"):
        worst_selection(run_dir, layers)


@pytest.mark.usefixtures("stop_server")
def test_port_in_use_is_named(run_dir: Path) -> None:
    stop_viewer()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(InputError, match=rf"port {port} is already in use"):
            open_viewer(run_layers(run_dir), port=port)


def decode_mesh(data: bytes) -> np.ndarray:
    """Vertices of neuroglancer's legacy mesh format (uint32 count, float32 xyz, indices)."""
    (count,) = struct.unpack_from("<I", data)
    return np.frombuffer(data, "<f4", count * 3, offset=4).reshape(count, 3)


def layer_volume_key(viewer, layer_name: str) -> str:
    source = viewer.state.layers[layer_name].source[0].url
    for token, volume in viewer.volume_manager.volumes.items():
        if volume is source or f".{token}" in str(source):
            return f"{viewer.token}.{token}"
    raise AssertionError(f"no served volume for {layer_name}: {source}")


@pytest.mark.usefixtures("stop_server")
def test_meshes_served_on_demand(run_dir: Path) -> None:
    evaluate_run(run_dir)
    layers = run_layers(run_dir)
    viewer = open_viewer(layers, worst_selection(run_dir, layers))
    merged_id = int(viewer.state.layers["threshold_0.3000"].segments.__iter__().__next__())
    key = layer_volume_key(viewer, "threshold_0.3000")
    server = re.match(r"http://[^/]+", viewer.get_viewer_url()).group(0)
    url = f"{server}/neuroglancer/mesh/{key}/{merged_id}"
    with urllib.request.urlopen(url, timeout=60) as reply:
        vertices = decode_mesh(reply.read())
    assert vertices.shape[0] > 8
    labels = dict((s.name, s.volume) for s in layers)["threshold_0.3000"].array[...]
    zyx = np.argwhere(labels == merged_id)
    # vertices are x, y, z in nm from the volume's first voxel corner, on voxel faces
    lo = zyx.min(axis=0)[::-1] * np.array(VOXEL_SIZE[::-1])
    hi = (zyx.max(axis=0)[::-1] + 1) * np.array(VOXEL_SIZE[::-1])
    step = np.array(VOXEL_SIZE[::-1])
    assert np.all(vertices.min(axis=0) >= lo - step) and np.all(vertices.max(axis=0) <= hi + step)


def coloured_fraction(pixels: np.ndarray) -> float:
    """Share of pixels whose channels differ (segment colours, not grey)."""
    return float(np.mean(np.ptp(pixels.astype(np.int16), axis=2) > 30))


@pytest.mark.slow
@pytest.mark.usefixtures("stop_server")
def test_viewer_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    chromium_binary()
    evaluate_run(run_dir)
    layers = run_layers(run_dir)
    viewer = open_viewer(layers, worst_selection(run_dir, layers))
    with viewer.txn() as s:
        s.layout = "xy"
        s.layers["threshold_0.3000"].visible = False
        assert list(s.dimensions.names) == ["x", "y", "z"]
    with Browser(viewer.get_viewer_url(), tmp_path / "profile") as browser:
        names = browser.wait_for(
            "window.viewer && window.viewer.layerManager.managedLayers.map(l => l.name)"
        )
        assert names == EXPECTED_LAYERS
        raw_png = screenshot(viewer, (640, 480), timeout_s=120)
        (tmp_path / "raw.png").write_bytes(raw_png)
        image_only = png_pixels(raw_png)
        with viewer.txn() as s:
            # all segments of an unselected layer are drawn; the selected layer
            # draws only its selection
            s.layers["threshold_0.5000"].visible = True
            s.layers["threshold_0.3000"].visible = True
            s.layout = "4panel"
        png = screenshot(viewer, (800, 600), timeout_s=120)
        (tmp_path / "segmentation.png").write_bytes(png)
        with_segments = png_pixels(png)
        # the 3D view alone (no slices): the meshes of the selected segments
        with viewer.txn() as s:
            s.layout = "3d"
            s.show_slices = False
            for layer in s.layers:
                layer.visible = layer.name == "threshold_0.3000"
        mesh_png = screenshot(viewer, (600, 500), timeout_s=120)
        (tmp_path / "meshes.png").write_bytes(mesh_png)
        meshes = png_pixels(mesh_png).astype(np.int16)
        selected = browser.evaluate(
            "Array.from(window.viewer.layerManager.getLayerByName('threshold_0.3000').layer"
            ".displayState.segmentationGroupState.value.visibleSegments.keys())"
            ".map(x => x.toString())"
        )
    # the image layer alone: a large area of grey levels with real contrast; colour
    # only in the overlays (bounding box, axis lines)
    # neuroglancer may return the canvas at its own size rather than the requested one
    assert image_only.ndim == 3 and min(image_only.shape[:2]) >= 200, image_only.shape
    data = np.any(image_only != image_only[0, 0], axis=2)  # not the background
    assert data.mean() > 0.1
    assert image_only[data].std() > 15 and coloured_fraction(image_only) < 0.03
    # with the segmentation: a large coloured area
    assert coloured_fraction(with_segments) > 0.2
    # surfaces drawn: lit pixels that are neither background nor the yellow bounding box
    lit = meshes.max(axis=2) > 40
    box = (meshes[..., 0] > 180) & (meshes[..., 1] > 180) & (meshes[..., 2] < 100)
    assert np.mean(lit & ~box) > 0.005
    expected = {str(i) for i in viewer.state.layers["threshold_0.3000"].segments}
    assert expected and set(selected) == expected


@pytest.mark.slow
def test_cli_view_serves_and_stops_on_ctrl_c(run_dir: Path) -> None:
    evaluate_run(run_dir)
    process = subprocess.Popen(
        [BLOCKWISE, "view", str(run_dir), "--segments", "worst"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # a hung viewer must not hang the suite (the first import may compile the kernels)
    watchdog = threading.Timer(600, process.kill)
    watchdog.start()
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v/[0-9a-f]+/", url), url
        with urllib.request.urlopen(url, timeout=30) as reply:
            page = reply.read().decode()
        # the bundled client is served from here: no script or style from elsewhere
        assert "<script" in page and not re.search(r"(src|href)=\"https?://", page)
        assert "selected: threshold_0.3000" in process.stdout.readline()
        assert "press Ctrl-C" in process.stdout.readline()
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        watchdog.cancel()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr


def test_cli_view_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert main(["view", str(tmp_path)]) == 2
    assert "no outputs yet" in caplog.text
    assert main(["view", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in caplog.text


def test_stopping_gives_up_on_a_server_that_does_not_stop(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # neuroglancer's stop waits for every open connection to close; a view
    # command must not wait for ever on a browser tab left open
    import time

    import neuroglancer

    release = threading.Event()
    monkeypatch.setattr(neuroglancer, "stop", lambda: release.wait(30))
    started = time.monotonic()
    with caplog.at_level("WARNING", logger="blockwise.viewer"):
        assert stop_viewer(timeout_s=0.2) is False
    assert time.monotonic() - started < 5
    assert "did not stop within" in caplog.text
    release.set()
    monkeypatch.setattr(neuroglancer, "stop", lambda: None)
    assert stop_viewer(timeout_s=0.2) is True
