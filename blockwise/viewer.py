"""Look at a run in neuroglancer, served from this machine.

:func:`run_layers` finds what a run directory holds: its inputs from the
resolved ``config.yaml`` (``inputs.raw`` where present, ``inputs.affinities``,
``inputs.ground_truth``) and its outputs in ``output.zarr`` (``affinities``
when predicted, ``fragments``, ``segmentation/threshold_*``), each with its
voxel size and offset (nm). :func:`open_viewer` serves them with the
``neuroglancer`` package: its bundled client (no internet needed) and
``neuroglancer.LocalVolume`` data sources that read the arrays chunk by
chunk, downsample on the fly when zoomed out, and compute meshes of selected
segments on demand.

Meshing goes through neuroglancer's on-demand mesh generator, which needs the
whole label array in memory: a segmentation layer is read completely the first
time one of its meshes is asked for (8 bytes per voxel for uint64).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from blockwise.config import DatasetConfig
from blockwise.errors import InputError
from blockwise.layout import (
    AFFINITIES_DATASET,
    FRAGMENTS_DATASET,
    OUTPUT_ZARR,
    RESOLVED_CONFIG,
    SEGMENTATION_GROUP,
    threshold_name,
)
from blockwise.volume import Volume, open_volume

logger = logging.getLogger(__name__)

LayerKind = Literal["image", "affinities", "segmentation"]
# segments pre-selected per error kind by --segments worst
WORST_OBJECTS = 3

AFFINITY_SHADER = """#uicontrol invlerp normalized
void main() {
  emitRGB(vec3(toNormalized(getDataValue(0)), toNormalized(getDataValue(1)),
               toNormalized(getDataValue(2))));
}
"""


@dataclass(frozen=True)
class LayerSpec:
    """One layer of the viewer.

    Attributes:
        name: the layer's name in the viewer.
        kind: ``image`` (raw), ``affinities`` (channels shown as RGB) or
            ``segmentation`` (labels; selectable, meshable).
        volume: the array with its voxel size and ROI (nm).
    """

    name: str
    kind: LayerKind
    volume: Volume


@dataclass(frozen=True)
class Selection:
    """Segments to pre-select and where to look.

    Attributes:
        segments: segment ids per layer name.
        position_nm: the centre of the view (z, y, x; nm), or None.
        description: what was selected, for the log.
    """

    segments: dict[str, list[int]] = field(default_factory=dict)
    position_nm: tuple[float, float, float] | None = None
    description: str = ""


def resolve_run_dir(path: Path) -> Path:
    """The run directory named by ``path``: the directory itself, or a config's ``run_dir``.

    Raises:
        InputError: if ``path`` does not exist or a config names no ``run_dir``.
    """
    if not path.exists():
        raise InputError(f"{path} does not exist; expected a run directory or a run config")
    if path.is_dir():
        return path
    config = _read_yaml(path)
    run_dir = config.get("run_dir")
    if not run_dir:
        raise InputError(f"config {path} has no 'run_dir'")
    run_path = Path(os.path.expandvars(str(run_dir))).expanduser()
    if not run_path.is_absolute():
        run_path = (path.parent / run_path).resolve()
    return run_path


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read config {path}: {e}") from None
    if not isinstance(data, dict):
        raise InputError(f"config {path} is not a YAML mapping")
    return data


def _input_volume(
    inputs: dict[str, Any], key: str, voxel_size: tuple[int, int, int] | None, config: Path
) -> Volume | None:
    entry = inputs.get(key)
    if not entry:
        return None
    if not isinstance(entry, dict) or "file" not in entry or "dataset" not in entry:
        raise InputError(f"{config}: inputs.{key} must have 'file' and 'dataset', got {entry!r}")
    dataset = DatasetConfig(
        file=Path(os.path.expandvars(str(entry["file"]))), dataset=entry["dataset"]
    )
    if not dataset.file.is_absolute():
        dataset = DatasetConfig(
            file=(config.parent / dataset.file).resolve(), dataset=dataset.dataset
        )
    return open_volume(dataset, voxel_size)


def run_layers(run_dir: Path) -> list[LayerSpec]:
    """The layers of a run: raw, affinities, ground truth, fragments, one per threshold.

    Raises:
        InputError: if ``run_dir`` has no ``output.zarr`` with fragments or a
            segmentation yet, or an input named in its config cannot be opened.
    """
    import zarr

    output = run_dir / OUTPUT_ZARR
    if not output.is_dir():
        raise InputError(
            f"run directory {run_dir} has no outputs yet ({OUTPUT_ZARR} is missing); "
            "run `blockwise run CONFIG` first"
        )
    root = zarr.open_group(str(output), mode="r")
    outputs: list[LayerSpec] = []

    def output_volume(dataset: str) -> Volume:
        return open_volume(DatasetConfig(file=output, dataset=dataset))

    if FRAGMENTS_DATASET in root:
        outputs.append(LayerSpec("fragments", "segmentation", output_volume(FRAGMENTS_DATASET)))
    if SEGMENTATION_GROUP in root:
        for name in sorted(root[SEGMENTATION_GROUP].array_keys()):
            outputs.append(
                LayerSpec(name, "segmentation", output_volume(f"{SEGMENTATION_GROUP}/{name}"))
            )
    if not outputs:
        raise InputError(
            f"run directory {run_dir} has no outputs yet: {output} holds neither "
            f"'{FRAGMENTS_DATASET}' nor '{SEGMENTATION_GROUP}/threshold_*'"
        )
    layers: list[LayerSpec] = []
    config_path = run_dir / RESOLVED_CONFIG
    if config_path.exists():
        config = _read_yaml(config_path)
        inputs = config.get("inputs") or {}
        vs = inputs.get("voxel_size")
        voxel_size = (int(vs[0]), int(vs[1]), int(vs[2])) if vs else None
        raw = _input_volume(inputs, "raw", voxel_size, config_path)
        if raw is not None:
            layers.append(LayerSpec("raw", "image", raw))
        affinities = _input_volume(inputs, "affinities", voxel_size, config_path)
        if affinities is None and AFFINITIES_DATASET in root:
            affinities = output_volume(AFFINITIES_DATASET)
        if affinities is not None:
            layers.append(LayerSpec("affinities", "affinities", affinities))
        ground_truth = _input_volume(inputs, "ground_truth", voxel_size, config_path)
        if ground_truth is not None:
            layers.append(LayerSpec("ground_truth", "segmentation", ground_truth))
    else:
        logger.warning("%s is missing: showing the outputs only", config_path)
        if AFFINITIES_DATASET in root:
            layers.append(LayerSpec("affinities", "affinities", output_volume(AFFINITIES_DATASET)))
    return layers + outputs


def worst_selection(
    run_dir: Path, layers: list[LayerSpec], per_kind: int = WORST_OBJECTS
) -> Selection:
    """The largest split and merge errors of ``RUN_DIR/evaluation.json``, as selections.

    For every evaluated segmentation layer, the ``per_kind`` segments with the
    largest VOI merge terms are selected, and so are the segments that the
    ``per_kind`` worst split bodies are cut into; those bodies, and the bodies
    that the worst merges join, are selected in the ``ground_truth`` layer. The
    view centres on the worst merge (or split) of the first evaluated layer.

    Accepts both the run's report (``{"results": [{"threshold", ...,
    "split_errors", "merge_errors"}]}``) and the one of ``blockwise evaluate``
    (one result with ``segmentation``, ``split_errors``, ``merge_errors``).

    Raises:
        InputError: if the report is missing, unreadable, lists no per-object
            errors, or names no layer of this run.
    """
    path = run_dir / "evaluation.json"
    if not path.exists():
        raise InputError(
            f"{path} does not exist: evaluate the run first (its evaluate stage, or "
            f"`blockwise evaluate SEG GT --out {run_dir}`)"
        )
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read {path}: {e}") from None
    names = {spec.name for spec in layers}
    entries: list[tuple[str, dict[str, Any]]] = []
    if "results" in report:
        for result in report["results"]:
            entries.append((threshold_name(float(result["threshold"])), result))
    elif "segmentation" in report:
        entries.append((str(report["segmentation"]).rsplit("/", 1)[-1], report))
    entries = [(name, e) for name, e in entries if name in names]
    if not entries:
        raise InputError(f"{path} evaluates none of this run's layers ({sorted(names)})")
    if not any("split_errors" in e or "merge_errors" in e for _, e in entries):
        raise InputError(
            f"{path} has no per-object errors (split_errors/merge_errors); re-evaluate with "
            "`blockwise evaluate`, which lists them"
        )
    selection: dict[str, list[int]] = {}
    bodies: list[int] = []
    position: tuple[float, float, float] | None = None
    parts = []
    for name, entry in entries:
        merges = entry.get("merge_errors", [])[:per_kind]
        splits = entry.get("split_errors", [])[:per_kind]
        ids = [int(o["id"]) for o in merges]
        for o in merges:
            bodies.extend(int(p["id"]) for p in o.get("partners", []))
        for o in splits:
            ids.extend(int(p["id"]) for p in o.get("partners", []))
            bodies.append(int(o["id"]))
        selection[name] = sorted(set(ids))
        if position is None:
            worst = merges[0] if merges else (splits[0] if splits else None)
            if worst is not None:
                c = worst["centre_nm"]
                position = (float(c[0]), float(c[1]), float(c[2]))
        parts.append(
            f"{name}: merges {[o['id'] for o in merges]}, splits of bodies "
            f"{[o['id'] for o in splits]}"
        )
    if "ground_truth" in names and bodies:
        selection["ground_truth"] = sorted(set(bodies))
    return Selection(selection, position, "; ".join(parts))


class _LazyLabels:
    """An array-like over a label volume for ``neuroglancer.LocalVolume``.

    Chunks are read on demand; :meth:`transpose` (asked for by the mesh
    generator, which needs the whole array) reads everything once.
    """

    def __init__(self, volume: Volume) -> None:
        self._volume = volume
        self.shape = tuple(volume.array.shape)
        self.dtype = np.dtype(volume.dtype)
        self._whole: np.ndarray | None = None
        self._lock = threading.Lock()

    def __getitem__(self, item: Any) -> np.ndarray:
        if self._whole is not None:
            return self._whole[item]
        return np.asarray(self._volume.array[item])

    def transpose(self) -> np.ndarray:
        with self._lock:
            if self._whole is None:
                logger.info("reading all of %s for meshing", self._volume.name)
                self._whole = np.asarray(self._volume.array[...])
        return self._whole.transpose()


def _local_volume(spec: LayerSpec) -> Any:
    import neuroglancer

    volume = spec.volume
    vs = [float(v) for v in volume.voxel_size]
    offset_vx = [int(o // v) for o, v in zip(volume.roi.offset, volume.voxel_size, strict=True)]
    if spec.kind == "affinities":
        dimensions = neuroglancer.CoordinateSpace(
            names=["c^", "z", "y", "x"], units=["", "nm", "nm", "nm"], scales=[1.0, *vs]
        )
        return neuroglancer.LocalVolume(
            volume.array,
            dimensions=dimensions,
            voxel_offset=[0, *offset_vx],
            volume_type="image",
        )
    dimensions = neuroglancer.CoordinateSpace(names=["z", "y", "x"], units="nm", scales=vs)
    data = _LazyLabels(volume) if spec.kind == "segmentation" else volume.array
    return neuroglancer.LocalVolume(
        data,
        dimensions=dimensions,
        voxel_offset=offset_vx,
        volume_type="segmentation" if spec.kind == "segmentation" else "image",
    )


def _port_error(bind_address: str, port: int, error: OSError) -> InputError:
    if error.errno in (errno.EADDRINUSE, errno.EACCES):
        return InputError(
            f"cannot listen on {bind_address}:{port}: port {port} is already in use "
            "(or not allowed); choose another with --port, or --port 0 for any free port"
        )
    return InputError(f"cannot start the viewer on {bind_address}:{port}: {error}")


def _check_port(bind_address: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in bind_address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((bind_address, port))
        except OSError as e:
            raise _port_error(bind_address, port, e) from None


def open_viewer(
    layers: list[LayerSpec],
    selection: Selection | None = None,
    bind_address: str = "127.0.0.1",
    port: int = 0,
) -> Any:
    """Start neuroglancer's server (once per process) and a viewer with ``layers``.

    Args:
        layers: what to show, in order (the last segmentation layer is shown
            in the 3D panel with its selected segments).
        selection: segments to select and where to centre the view.
        bind_address: the address to listen on; loopback unless told otherwise.
        port: the port; 0 for any free one.

    Returns:
        The ``neuroglancer.Viewer``; ``viewer.get_viewer_url()`` is its URL.

    Raises:
        InputError: if the port is taken, or ``layers`` is empty.
    """
    import neuroglancer

    if not layers:
        raise InputError("nothing to show: no layers")
    if port and not neuroglancer.is_server_running():
        # try the port first: a failed bind inside neuroglancer's server thread
        # leaves its socket unclosed
        _check_port(bind_address, port)
    neuroglancer.set_server_bind_address(bind_address, port)
    try:
        viewer = neuroglancer.Viewer()
    except OSError as e:
        raise _port_error(bind_address, port, e) from None
    first = layers[0].volume
    with viewer.txn() as s:
        # the global frame is x, y, z (neuroglancer's "xy" panel shows its first
        # two dimensions); layers keep their z, y, x arrays and are matched by name
        s.dimensions = neuroglancer.CoordinateSpace(
            names=["x", "y", "z"], units="nm", scales=[float(v) for v in first.voxel_size][::-1]
        )
        visible = _initially_visible(layers)
        for spec in layers:
            source = _local_volume(spec)
            if spec.kind == "segmentation":
                layer: Any = neuroglancer.SegmentationLayer(source=source)
            elif spec.kind == "affinities":
                layer = neuroglancer.ImageLayer(source=source, shader=AFFINITY_SHADER)
            else:
                layer = neuroglancer.ImageLayer(source=source)
            s.layers.append(name=spec.name, layer=layer, visible=spec.name in visible)
        # fit the data into a panel of about 250 pixels (scales are in voxels of
        # the first layer per screen pixel; the 3D view's in voxels per panel height)
        extent_vx = max(first.roi.shape / first.voxel_size)
        s.cross_section_scale = max(extent_vx / 250.0, 0.05)
        s.projection_scale = 1.5 * extent_vx
        centre = first.roi.center
        position_nm = selection.position_nm if selection and selection.position_nm else centre
        s.position = [
            float(p) / float(v) for p, v in zip(position_nm, first.voxel_size, strict=True)
        ][::-1]
        if selection is not None:
            for name, ids in selection.segments.items():
                if name in s.layers and ids:
                    s.layers[name].segments = set(ids)
        s.layout = "4panel"
    logger.info("viewer at %s", viewer.get_viewer_url())
    return viewer


def _initially_visible(layers: list[LayerSpec]) -> set[str]:
    """Raw (else affinities) and one segmentation (the first threshold, else fragments)."""
    names = [spec.name for spec in layers]
    shown = {n for n in ("raw",) if n in names}
    if not shown and "affinities" in names:
        shown.add("affinities")
    thresholds = [n for n in names if n.startswith("threshold_")]
    if thresholds:
        shown.add(thresholds[0])
    elif "fragments" in names:
        shown.add("fragments")
    elif "ground_truth" in names:
        shown.add("ground_truth")
    return shown


#: seconds the viewer's server may take to close its connections when it stops
STOP_TIMEOUT_S = 10.0


def serve_until_interrupted(stop: threading.Event | None = None) -> bool:
    """Keep serving until Ctrl-C (or ``stop`` is set), then stop the server.

    Returns:
        Whether the server stopped within :data:`STOP_TIMEOUT_S` (see :func:`stop_viewer`).
    """
    event = stop if stop is not None else threading.Event()
    try:
        while not event.wait(1.0):
            pass
    except KeyboardInterrupt:
        logger.info("stopping the viewer")
    finally:
        stopped = stop_viewer()
    return stopped


def stop_viewer(timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Stop neuroglancer's server; every viewer URL becomes invalid.

    neuroglancer's stop waits until every open connection has closed, which a
    browser tab (or a request in flight) can put off for as long as it
    likes; this waits at most ``timeout_s``.

    Returns:
        Whether the server stopped in time. If not, it is still stopping in
        a daemon thread; a process that must end now should end without
        waiting for its threads (the ``view`` command does).
    """
    import neuroglancer

    stopper = threading.Thread(target=neuroglancer.stop, name="viewer-stop", daemon=True)
    stopper.start()
    stopper.join(timeout_s)
    if stopper.is_alive():
        logger.warning(
            "the viewer's server did not stop within %.0f s (a connection still open)",
            timeout_s,
        )
        return False
    return True


def screenshot(viewer: Any, size: tuple[int, int] = (800, 600), timeout_s: float = 60.0) -> bytes:
    """A PNG of what the connected browser shows, once its data has loaded.

    neuroglancer's client renders the screenshot when every visible chunk is
    loaded, so a non-blank image means the data really arrived.

    Raises:
        TimeoutError: if no browser answered within ``timeout_s``.
    """
    with viewer.config_state.txn() as s:
        s.show_ui_controls = False
        s.show_panel_borders = False
        s.viewer_size = list(size)
    done = threading.Event()
    result: list[Any] = []

    def handler(reply: Any) -> None:
        result.append(reply)
        done.set()

    viewer.async_screenshot(handler)
    if not done.wait(timeout_s):
        raise TimeoutError(f"no browser sent a screenshot within {timeout_s} s")
    return bytes(result[0].screenshot.image)
