"""Inputs a run can trust, and outputs that match their done markers.

Inputs (:func:`check_inputs`, before anything is written): a file's stated
affinity offsets must agree with the config's, the evaluation ROI must lie
on the voxel grid, a mask or an affinity volume that is zero everywhere is
refused, and a zarr input may not miss a chunk inside the processed region
unless its config entry says ``missing_chunks: fill_value``.

Outputs: a done marker is trusted only while the output it vouches for is
there. Every run checks cheaply, before scheduling (:func:`repair_outputs`):

* the zarr chunks of every finished block exist and decode: their size and
  modification time are recorded when the run ends (:func:`record_outputs`,
  ``RUN_DIR/integrity/<stage>.json``), and a chunk not recorded yet, or whose
  size or modification time changed since, is decoded once, then recorded
  (so a chunk overwritten with garbage is found, a copied run directory costs
  one read of its outputs);
* the files of whole-volume stages (lookup tables, the evaluation report);
* the graph store is the one the finished blocks wrote into: a token kept
  both in the store's meta and in ``RUN_DIR/integrity/store_token`` (a deleted
  or replaced store has none, or another), and it holds nodes at all;
* the graph store still holds as many nodes and edges as when the last run
  ended (two counts, ``RUN_DIR/integrity/store_counts.json``): if either
  shrank, the store is compared with the fragments block by block (as
  ``--verify`` does) to find the blocks that lost nodes, and edges lost
  where that cannot place them re-run every agglomerate block;
* the blocks ``status --verify`` found damaged (it records them).

The markers of damaged blocks are cleared (daisy's tracking array), with
those of every block downstream that read them, so the next scheduling
re-runs exactly those. :func:`verify_outputs` (``blockwise status
--verify``) reads every chunk of every finished block and compares the graph
store with the fragments block by block.

Which stage writes which outputs is listed here, by stage name: zarr chunks
per block, other files per block (the hierarchy's leaves and seams, written
by agglomerate), whole-volume files, and the task files of a stage run by
octree levels (any of them damaged re-runs the stage). A stage not listed has
no outputs of its own checked, but is re-run whenever something it reads is.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr
from funlib.geometry import Coordinate, Roi

from blockwise.atomic import write_atomic
from blockwise.errors import ConfigError, DiskFullError, InputError, StoreError, as_disk_full
from blockwise.hierarchy_files import octree_of
from blockwise.layout import AFFINITIES_DATASET, FRAGMENTS_DATASET, MULTISCALE_GROUP, RunLayout
from blockwise.run_context import RunContext
from blockwise.stage import Stage, Tiling
from blockwise.volume import (
    Volume,
    count_chunks,
    find_nonzero,
    sample_chunk_rois,
    stated_offsets,
)

logger = logging.getLogger(__name__)

INTEGRITY_DIR = "integrity"
STORE_TOKEN_FILE = "store_token"
STORE_COUNTS_FILE = "store_counts.json"
VERIFIED_DAMAGE_FILE = "verified_damage.json"
STORE_TOKEN_KEY = "integrity_token"
# stages whose blocks write into the graph store (nodes, edges)
STORE_WRITERS = ("extract_fragments", "agglomerate")

ALL = -1  # a stage's whole set of blocks
# affinity chunks ``plan`` reads looking for NaN or out-of-range values
SAMPLED_CHUNKS = 64

# -- inputs ---------------------------------------------------------------------


def check_inputs(ctx: RunContext) -> None:
    """Refuse inputs that would silently give a wrong result; reads little, writes nothing.

    Raises:
        InputError: stated affinity offsets that differ from the config's, a
            mask or affinities zero everywhere in the processed region, a
            missing chunk of a zarr input inside it.
        ConfigError: an evaluation ROI off the voxel grid.
    """
    config = ctx.config
    data_roi = ctx.data_roi
    if not ctx.predicts:
        affinities = ctx.affinities
        stated = stated_offsets(affinities)
        expected = [tuple(o) for o in config.inputs.offsets]
        if stated is not None and stated[1] != expected:
            raise InputError(
                f"affinities {affinities.name} state offsets {[list(o) for o in stated[1]]} "
                f"(attribute {stated[0]!r}) but the config's inputs.offsets are "
                f"{[list(o) for o in expected]}; they must agree, channel by channel"
            )
    _check_evaluation_roi(ctx)
    inputs: list[tuple[str, Volume, Roi]] = []
    if ctx.predicts and ctx.raw is not None and ctx.network is not None:
        context = ctx.network.context_vx * ctx.voxel_size
        inputs.append(("raw", ctx.raw, data_roi.grow(context, context)))
    elif not ctx.predicts:
        inputs.append(("affinities", ctx.affinities, data_roi))
    if ctx.mask is not None:
        inputs.append(("mask", ctx.mask, data_roi))
    if ctx.ground_truth is not None:
        inputs.append(("ground_truth", ctx.ground_truth, data_roi))
    for key, volume, roi in inputs:
        region = roi.intersect(volume.roi)
        if volume.missing_chunks == "error" and not region.empty:
            missing = volume.missing_chunks_in(region)
            if missing:
                raise InputError(
                    f"inputs.{key} {volume.name}: {len(missing)} chunk file(s) missing inside "
                    f"the processed region {region}, e.g. {volume.chunk_file(missing[0])}. "
                    "zarr would read them as the fill value "
                    f"{volume.array.fill_value}; if that is what they mean, set "
                    f"`missing_chunks: fill_value` on inputs.{key}"
                )
    zero_checked: list[tuple[str, Volume | None]] = [("mask", ctx.mask)]
    if not ctx.predicts:
        zero_checked.append(("affinities", ctx.affinities))
    for key, maybe in zero_checked:
        if maybe is None:
            continue
        volume = maybe
        region = data_roi.intersect(volume.roi)
        if not region.empty and find_nonzero(volume, region) is None:
            meaning = (
                "nothing would be processed"
                if key == "mask"
                else "affinity 0 is a boundary between every two voxels, so no "
                "segmentation of it means anything"
            )
            raise InputError(
                f"inputs.{key} {volume.name} is zero everywhere in the processed region "
                f"{region}; {meaning}. Check the file and dataset"
            )


def check_affinity_samples(ctx: RunContext, count: int = SAMPLED_CHUNKS) -> str:
    """Look for NaN, inf and values outside [0, 1] in up to ``count`` affinity chunks.

    The chunks are spread evenly over the processed region, so ``plan`` finds
    a broken affinity file in seconds rather than after blocks fail on it.
    uint8 affinities (value / 255) cannot be out of range; predicted ones do
    not exist yet.

    Returns:
        what was sampled, for the plan's text.

    Raises:
        InputError: naming the array, the chunk file and the values found.
    """
    if ctx.predicts:
        return "affinities: predicted by this run (nothing to sample)"
    volume = ctx.affinities
    if volume.dtype == np.uint8:
        return f"affinities {volume.name}: uint8 (value/255), always in [0, 1]"
    rois = sample_chunk_rois(volume, ctx.data_roi, count)
    for roi in rois:
        values = volume.read(roi)
        where = volume.chunk_file(volume.chunks_of(roi)[0]) if volume.is_zarr else roi
        if not np.all(np.isfinite(values)):
            bad = int(np.count_nonzero(~np.isfinite(values)))
            raise InputError(
                f"affinities {volume.name} hold {bad} NaN or inf value(s) in {roi} "
                f"({where}); blocks reading them would fail"
            )
        low, high = float(values.min()), float(values.max())
        if low < 0.0 or high > 1.0:
            raise InputError(
                f"affinities {volume.name} must lie in [0, 1]; in {roi} ({where}) they range "
                f"from {low} to {high}"
            )
    return (
        f"affinities {volume.name}: {len(rois)} sampled chunk(s) finite and in [0, 1] "
        f"(of {count_chunks(volume, ctx.data_roi)})"
    )


def _check_evaluation_roi(ctx: RunContext) -> None:
    config = ctx.config
    wanted_config = config.evaluate.roi
    if wanted_config is None or not config.evaluate.enabled:
        return
    vs = ctx.voxel_size
    wanted = Roi(wanted_config.offset_nm, wanted_config.shape_nm)
    origin = ctx.source.roi.offset
    off_grid = any((o - b) % v for o, b, v in zip(wanted.offset, origin, vs, strict=True))
    if off_grid or any(s % v for s, v in zip(wanted.shape, vs, strict=True)):
        begin = Coordinate(
            b + (o - b) // v * v for o, b, v in zip(wanted.offset, origin, vs, strict=True)
        )
        end = Coordinate(
            b + -(-(e - b) // v) * v for e, b, v in zip(wanted.end, origin, vs, strict=True)
        )
        raise ConfigError(
            f"evaluate.roi {wanted} is not aligned to the voxels (size {vs} nm, grid origin "
            f"{origin}); the report would state a region that was not the one scored. "
            f"Use offset_nm {list(begin)} and shape_nm {list(end - begin)} (the voxels it touches)"
        )


# -- outputs: which stage writes what --------------------------------------------------


def _open_output_array(ctx: RunContext, dataset: str, channels: int | None) -> Volume | None:
    """An output array opened read-only (None if it is not there)."""
    path = ctx.output_path
    if not (path / dataset / ".zarray").is_file():
        return None
    array = zarr.open_array(str(path), mode="r", path=dataset)
    return Volume(
        path,
        dataset,
        ctx.voxel_size,
        ctx.data_roi,
        channels,
        np.dtype(array.dtype),
        array,
        is_output=True,
    )


def _predict_arrays(ctx: RunContext) -> list[tuple[str, Volume | None]]:
    return [
        (
            AFFINITIES_DATASET,
            _open_output_array(ctx, AFFINITIES_DATASET, len(ctx.config.inputs.offsets)),
        )
    ]


def _fragments_arrays(ctx: RunContext) -> list[tuple[str, Volume | None]]:
    return [(FRAGMENTS_DATASET, _open_output_array(ctx, FRAGMENTS_DATASET, None))]


def _relabel_arrays(ctx: RunContext) -> list[tuple[str, Volume | None]]:
    names = [ctx.layout.segmentation_dataset(t) for t in ctx.config.segments.thresholds]
    return [(name, _open_output_array(ctx, name, None)) for name in names]


def _downsample_arrays(ctx: RunContext) -> list[tuple[str, Volume | None]]:
    """Every level of every pyramid, each with its own voxel size (level 0's times factor**K)."""
    names = [FRAGMENTS_DATASET] + [
        ctx.layout.segmentation_dataset(t) for t in ctx.config.segments.thresholds
    ]
    if ctx.predicts:
        names.insert(0, AFFINITIES_DATASET)
    factor = Coordinate(ctx.config.downsample.factor)
    arrays: list[tuple[str, Volume | None]] = []
    for name in names:
        image = ctx.output_path / MULTISCALE_GROUP / name
        levels = sorted(
            int(p.name[1:]) for p in image.glob("s*") if p.name[1:].isdigit() and p.is_dir()
        )
        if not levels:
            arrays.append((f"{MULTISCALE_GROUP}/{name}/s0", None))
            continue
        for level in levels:
            dataset = f"{MULTISCALE_GROUP}/{name}/s{level}"
            if not (ctx.output_path / dataset / ".zarray").is_file():
                arrays.append((dataset, None))
                continue
            array = zarr.open_array(str(ctx.output_path), mode="r", path=dataset)
            voxel = ctx.voxel_size * Coordinate(f**level for f in factor)
            channels = int(array.shape[0]) if array.ndim == 4 else None
            shape = Coordinate(array.shape[-3:])
            roi = Roi(ctx.data_roi.offset, voxel * shape)
            volume = Volume(
                ctx.output_path,
                dataset,
                voxel,
                roi,
                channels,
                np.dtype(array.dtype),
                array,
                is_output=True,
            )
            arrays.append((dataset, volume))
    return arrays


def _find_segments_files(ctx: RunContext) -> list[Path]:
    return [ctx.lut_path(t) for t in ctx.config.segments.thresholds]


def _evaluate_files(ctx: RunContext) -> list[Path]:
    return [ctx.layout.evaluation_json, ctx.layout.evaluation_png]


# block-wise stages: the zarr arrays each finished block wrote its write ROI into
OUTPUT_ARRAYS: dict[str, Callable[[RunContext], list[tuple[str, Volume | None]]]] = {
    "predict": _predict_arrays,
    "extract_fragments": _fragments_arrays,
    "relabel": _relabel_arrays,
    "downsample": _downsample_arrays,
}


# whole-volume stages: the files their one block wrote
def _agglomerate_block_files(ctx: RunContext, block: int) -> list[Path]:
    """The files an agglomerate block of the hierarchical method may write (leaf always)."""
    if ctx.config.segments.method != "hierarchical":
        return []
    layout = ctx.layout
    seams = [layout.seam_path(level, block) for level in range(octree_of(ctx).n_levels)]
    return [layout.leaf_path(block), *seams]


def _extract_block_files(ctx: RunContext, block: int) -> list[Path]:
    """The flood an extract_fragments block saves for the cut-basin search (several blocks)."""
    return [ctx.layout.basin_path(block)] if ctx.grid.num_blocks > 1 else []


#: per-block files (beyond zarr chunks) a block of the stage writes; the first must exist
OUTPUT_BLOCK_FILES: dict[str, Callable[[RunContext, int], list[Path]]] = {
    "extract_fragments": _extract_block_files,
    "agglomerate": _agglomerate_block_files,
}
OUTPUT_FILES: dict[str, Callable[[RunContext], list[Path]]] = {
    "find_segments": _find_segments_files,
    "evaluate": _evaluate_files,
}


# -- done markers (daisy 2.0 tracking) ------------------------------------------------


def read_done(tracking_dir: Path) -> np.ndarray | None:
    """daisy's done markers of a one-task stage as a bool array over its block grid.

    None when there are none (no tracking yet, or a stage run by levels).
    """
    meta_path = tracking_dir / "done" / "zarr.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    shape = tuple(meta["shape"])
    chunk = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
    done = np.zeros(shape, dtype=bool)
    base = tracking_dir / "done" / "c"
    for path in base.rglob("*") if base.is_dir() else []:
        if not path.is_file():
            continue
        index = [int(p) for p in path.relative_to(base).parts]
        cells = np.frombuffer(path.read_bytes(), dtype=np.uint8).reshape(chunk)
        begin = [i * c for i, c in zip(index, chunk, strict=True)]
        extent = [min(c, s - b) for c, s, b in zip(chunk, shape, begin, strict=True)]
        target = tuple(slice(b, b + e) for b, e in zip(begin, extent, strict=True))
        done[target] = cells[tuple(slice(0, e) for e in extent)] != 0
    return done


def grid_done(done: np.ndarray | None, tiling: Tiling) -> np.ndarray | None:
    """The done markers of the blocks of ``tiling``'s grid (C order = block index).

    daisy's block ``p`` writes from ``data_roi.begin + p * block``; with
    context and ``fit="shrink"`` its grid may have one more layer of blocks
    whose write ROI lies beyond the data ROI (they write nothing), dropped here.
    """
    grid = tiling.grid
    if done is None or grid is None:
        return done
    shape = tuple(int(g) for g in grid.grid_shape)
    if any(d < g for d, g in zip(done.shape, shape, strict=True)):
        padded = np.zeros(shape, dtype=bool)
        padded[tuple(slice(0, min(d, g)) for d, g in zip(done.shape, shape, strict=True))] = done[
            tuple(slice(0, g) for g in shape)
        ]
        return padded
    return done[tuple(slice(0, g) for g in shape)]


def clear_done(tracking_dir: Path, positions: list[tuple[int, ...]]) -> None:
    """Clear the done markers of the blocks at ``positions`` (grid coordinates)."""
    meta = json.loads((tracking_dir / "done" / "zarr.json").read_text())
    chunk = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
    by_chunk: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
    for position in positions:
        key = tuple(p // c for p, c in zip(position, chunk, strict=True))
        by_chunk.setdefault(key, []).append(position)
    for key, members in by_chunk.items():
        path = tracking_dir / "done" / "c" / Path(*[str(k) for k in key])
        if not path.is_file():
            continue
        cells = np.frombuffer(path.read_bytes(), dtype=np.uint8).reshape(chunk).copy()
        for position in members:
            cells[tuple(p % c for p, c in zip(position, chunk, strict=True))] = 0
        write_atomic(path, cells.tobytes())


def allocate_tracking(tracking_root: Path, allocated: set[str] | None = None) -> list[Path]:
    """Back every file of daisy's block tracking under ``tracking_root`` with disk blocks now.

    daisy maps its done markers and failure counts into memory (one byte per
    block) and stores a byte there when a block ends. A page of such a file
    that no disk block backs yet needs one at that moment; on a full disk the
    kernel has none to give and the driver dies of SIGBUS (no error, no
    summary). Allocated while there is space, those pages never need one.
    ``posix_fallocate`` keeps the files' bytes.

    Args:
        tracking_root: ``RUN_DIR/tracking``.
        allocated: the paths (``str``) of files allocated before (skipped, and
            the new ones are added).

    Returns:
        the files allocated by this call.

    Raises:
        DiskFullError: naming the file that could not be allocated.
    """
    seen = allocated if allocated is not None else set()
    new: list[Path] = []
    for name in sorted(_files_under(str(tracking_root))):
        if name in seen:
            continue
        path = Path(name)
        try:
            with open(path, "r+b") as f:
                size = os.fstat(f.fileno()).st_size
                if size == 0:  # daisy has not sized it yet: look again later
                    continue
                os.posix_fallocate(f.fileno(), 0, size)
        except FileNotFoundError:  # replaced (clear_done) or removed meanwhile
            continue
        except OSError as e:
            full = as_disk_full(e, path)
            if full is None:
                raise
            raise DiskFullError(path, full.reason) from None
        seen.add(name)
        new.append(path)
    return new


def _files_under(root: str) -> Iterator[str]:
    """The regular files below ``root`` (none if it is not a directory), as paths.

    ``os.scandir`` answers whether an entry is a file from the directory
    itself: :class:`TrackingGuard` looks every 20 ms while a run starts, and
    ``Path.rglob`` with a ``stat`` per entry cost 1.5 ms a look (of a 3 s FIB-25
    run's driver, 0.2 CPU-seconds on a 2-core machine).
    """
    try:
        entries = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                yield from _files_under(entry.path)
            elif entry.is_file():
                yield entry.path
        except OSError:  # removed meanwhile
            continue


class TrackingGuard:
    """Allocates daisy's tracking files while a run schedules (see :func:`allocate_tracking`).

    On entering, the files of earlier runs are allocated (raising
    :class:`DiskFullError` if the disk is already too full); a thread then
    allocates the files daisy's scheduler creates as it starts. Should one of
    those find the disk full, the run is stopped as by Ctrl-C (the next done
    marker on that page would kill the driver) and :attr:`error` says why.

    Args:
        tracking_root: ``RUN_DIR/tracking``.
    """

    #: seconds between two looks for new files: often while daisy creates them
    #: (as its scheduler starts), rarely after
    FAST_POLL_S = 0.02
    SLOW_POLL_S = 1.0
    FAST_FOR_S = 3.0

    def __init__(self, tracking_root: Path) -> None:
        self.tracking_root = tracking_root
        #: why the run was stopped, if it was
        self.error: DiskFullError | None = None
        self._allocated: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="tracking-guard", daemon=True)

    def start(self) -> None:
        """Allocate the files there are, then watch for new ones.

        Raises:
            DiskFullError: if the disk is too full to allocate them.
        """
        allocate_tracking(self.tracking_root, self._allocated)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (safe to call more than once, or before :meth:`start`)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def __enter__(self) -> TrackingGuard:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _watch(self) -> None:
        started = time.monotonic()
        while True:
            fast = time.monotonic() - started < self.FAST_FOR_S
            if self._stop.wait(self.FAST_POLL_S if fast else self.SLOW_POLL_S):
                return
            try:
                allocate_tracking(self.tracking_root, self._allocated)
            except DiskFullError as e:
                logger.error("stopping the run: %s", e)
                self.error = e
                os.kill(os.getpid(), signal.SIGINT)
                return


# -- the manifest of what finished blocks wrote ----------------------------------------


def integrity_dir(layout: RunLayout) -> Path:
    """Where the manifests and the store token live."""
    return layout.run_dir / INTEGRITY_DIR


def manifest_path(layout: RunLayout, stage: str) -> Path:
    """The manifest of one stage: size and mtime of every output file of its finished blocks."""
    return integrity_dir(layout) / f"{stage}.json"


Manifest = dict[str, dict[str, list[int]]]


def read_manifest(layout: RunLayout, stage: str) -> Manifest:
    """``{array or "files": {file: [size, mtime_ns]}}`` (empty if none)."""
    path = manifest_path(layout, stage)
    if not path.is_file():
        return {}
    data: Manifest = json.loads(path.read_text())
    return data


def write_manifest(layout: RunLayout, stage: str, manifest: Manifest) -> None:
    """Write a stage's manifest atomically.

    Raises:
        DiskFullError: if the disk is full (the old manifest stays).
    """
    write_atomic(
        manifest_path(layout, stage), json.dumps(manifest, separators=(",", ":"), sort_keys=True)
    )


def forget_stage(layout: RunLayout, stage: str) -> None:
    """Drop a stage's manifest (its markers and outputs are being cleared)."""
    manifest_path(layout, stage).unlink(missing_ok=True)
    if stage in STORE_WRITERS:  # the store's rows go with it: its counts mean nothing now
        (integrity_dir(layout) / STORE_COUNTS_FILE).unlink(missing_ok=True)


def _record_store_counts(ctx: RunContext, stages: list[Stage]) -> None:
    """Record how many nodes and edges the graph store holds (with its token) as a run ends."""
    if not any(s.name in STORE_WRITERS for s in stages):
        return
    store = ctx.store
    path = integrity_dir(ctx.layout) / STORE_COUNTS_FILE
    try:
        counts = {
            "token": store.get_meta(STORE_TOKEN_KEY),
            "nodes": store.count_nodes(),
            "edges": store.count_edges(),
        }
    except StoreError as e:
        # the counts only speed up the next run's check: without them it skips it
        logger.warning("cannot count the graph store's rows for the next run's check: %s", e)
        path.unlink(missing_ok=True)
        return
    write_atomic(path, json.dumps(counts) + "\n")


def _check_store_counts(ctx: RunContext, checks: dict[str, _StageCheck]) -> None:
    """Find finished blocks whose nodes or edges the store lost since the last run ended.

    Two counts on every run; only when one shrank is the store compared with
    the fragments block by block (:func:`_verify_graph`). Edges it cannot
    place (a block that lost some but not all of its edges) re-run every
    finished agglomerate block: a lost edge must never go unnoticed.
    """
    path = integrity_dir(ctx.layout) / STORE_COUNTS_FILE
    if not path.is_file():
        return
    try:
        recorded = json.loads(path.read_text())
        nodes_before, edges_before = int(recorded["nodes"]), int(recorded["edges"])
    except (OSError, ValueError, KeyError, TypeError):
        logger.warning("ignoring unreadable %s", path)
        return
    store = ctx.store
    if recorded.get("token") != store.get_meta(STORE_TOKEN_KEY):
        return  # another store: the token check decides
    nodes, edges = store.count_nodes(), store.count_edges()
    if nodes >= nodes_before and edges >= edges_before:
        return
    logger.warning(
        "graph store %s holds %d node(s) and %d edge(s), %d and %d when the last run ended: "
        "comparing it with the fragments block by block",
        store.uri,
        nodes,
        edges,
        nodes_before,
        edges_before,
    )
    agglomerate = checks.get("agglomerate")
    placed = dict(agglomerate.damaged) if agglomerate is not None else {}
    _verify_graph(ctx, checks)
    if (
        edges < edges_before
        and agglomerate is not None
        and agglomerate.done is not None
        and agglomerate.done.any()
        and agglomerate.damaged == placed
    ):
        agglomerate.damaged = {
            ALL: f"graph store {store.uri} lost {edges_before - edges} of its "
            f"{edges_before} edges since the last run ended"
        }


def _stat(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return [int(st.st_size), int(st.st_mtime_ns)]


# -- checking ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Damage:
    """A finished block whose outputs are not what it wrote.

    Attributes:
        stage: the stage's name.
        block_index: the block's index in its stage's grid (0 for whole-volume stages;
            -1 for every block of the stage).
        write_roi: the block's write ROI (nm), None for the whole stage.
        reason: what is wrong, naming the array and chunk file or the store.
    """

    stage: str
    block_index: int
    write_roi: Roi | None
    reason: str

    def describe(self) -> str:
        """One line for the terminal."""
        if self.block_index == ALL:
            return f"{self.stage} (every block): {self.reason}"
        return f"{self.stage} block {self.block_index} {self.write_roi}: {self.reason}"


@dataclass
class _StageCheck:
    stage: Stage
    tiling: Tiling
    done: np.ndarray | None
    damaged: dict[int, str] = field(default_factory=dict)
    recorded: Manifest = field(default_factory=dict)


def _block_chunks(volume: Volume, roi: Roi) -> list[tuple[int, ...]]:
    """The chunks of ``volume`` a block writing ``roi`` wrote (none if they do not meet).

    A coarse pyramid level may end short of level 0's extent (its shape is
    rounded down), so a block's ROI is cut to the volume first.
    """
    inside = roi.intersect(volume.roi)
    if inside.empty:
        return []
    return volume.chunks_of(inside)


def _done_indices(done: np.ndarray) -> list[int]:
    return [int(i) for i in np.flatnonzero(done.ravel())]


def _check_block_arrays(
    ctx: RunContext, check: _StageCheck, manifest: Manifest, full: bool
) -> None:
    """Check the chunks of every finished block of a block-wise stage."""
    grid = check.tiling.grid
    arrays_of = OUTPUT_ARRAYS.get(check.stage.name)
    if grid is None or arrays_of is None or check.done is None:
        return
    done = _done_indices(check.done)
    if not done:
        return
    for dataset, volume in arrays_of(ctx):
        if volume is None:
            for index in done:
                check.damaged.setdefault(
                    index, f"output array {ctx.output_path}:{dataset} is missing"
                )
            continue
        known = manifest.get(dataset, {})
        recorded = check.recorded.setdefault(dataset, {})
        for index in done:
            if index in check.damaged:
                continue
            for chunk in _block_chunks(volume, grid.write_roi(index)):
                file = volume.chunk_file(chunk)
                key = file.name
                stat = _stat(file)
                if stat is None:
                    check.damaged[index] = f"{volume.name}: chunk file {file} is missing"
                    break
                # unchanged since recorded: trusted without reading; new or changed (a
                # rewrite, or a copy that did not keep times): decoded once, then recorded
                if known.get(key) != stat or full:
                    try:
                        volume.check_chunk(chunk)
                    except InputError as e:
                        check.damaged[index] = str(e)
                        break
                    recorded[key] = stat


def _block_files_key(index: int) -> str:
    return f"block_{index}"


def _check_block_files(ctx: RunContext, check: _StageCheck, manifest: Manifest, full: bool) -> None:
    """Check the per-block files (hierarchy leaves and seams) of every finished block.

    A recorded file that is gone, or changed and unreadable, damages its
    block; a block finished but not recorded yet (the run that finished it was
    interrupted) must have its first file, and what it has is recorded.
    """
    files_of = OUTPUT_BLOCK_FILES.get(check.stage.name)
    if files_of is None or check.done is None:
        return
    for index in _done_indices(check.done):
        if index in check.damaged:
            continue
        key = _block_files_key(index)
        known = manifest.get(key)
        if known is None:
            paths = files_of(ctx, index)
            if paths and _stat(paths[0]) is None:
                check.damaged[index] = f"output file {paths[0]} is missing"
                continue
            known = {}
            candidates = [str(p) for p in paths]
        else:
            candidates = list(known)
        recorded = check.recorded.setdefault(key, {})
        for name in candidates:
            path = Path(name)
            stat = _stat(path)
            if stat is None:
                if name in known:
                    check.damaged[index] = f"output file {path} is missing"
                    break
                continue  # a file this block did not write
            if known.get(name) != stat or full:
                problem = _unreadable_file(path)
                if problem is not None:
                    check.damaged[index] = f"output file {path} cannot be read: {problem}"
                    break
                recorded[name] = stat


def _level_task_files(ctx: RunContext, stage: Stage) -> list[Path] | None:
    """The task files of the finished nodes of a stage run by levels (None: none run)."""
    if stage.levels is None:
        return None
    tiling = stage.tiling(ctx)
    files = []
    for level in range(stage.levels(ctx)):
        done = grid_done(
            read_done(ctx.layout.tracking_dir(stage.name) / f"level_{level}"),
            tiling.coarsened(level),
        )
        if done is None or not done.any():
            continue
        # a done marker sits at the task's grid position; its file is named by octree node
        positions = np.stack(np.nonzero(done), axis=1).astype(np.int64)
        nodes = octree_of(ctx).node_id(level, positions)
        files += [ctx.layout.task_path(level, int(node)) for node in nodes]
    return files


def _check_level_files(ctx: RunContext, check: _StageCheck, manifest: Manifest, full: bool) -> None:
    """Check the task files of a stage run by levels; any damage re-runs the whole stage."""
    files = _level_task_files(ctx, check.stage)
    if not files:
        return
    known = manifest.get("files", {})
    recorded = check.recorded.setdefault("files", {})
    for path in files:
        stat = _stat(path)
        if stat is None:
            check.damaged[ALL] = f"output file {path} is missing"
            return
        if known.get(str(path)) != stat or full:
            problem = _unreadable_file(path)
            if problem is not None:
                check.damaged[ALL] = f"output file {path} cannot be read: {problem}"
                return
            recorded[str(path)] = stat


def _check_files(ctx: RunContext, check: _StageCheck, manifest: Manifest, full: bool) -> None:
    """Check the files of a finished whole-volume stage."""
    files_of = OUTPUT_FILES.get(check.stage.name)
    if files_of is None or check.done is None or not check.done.any():
        return
    known = manifest.get("files", {})
    recorded = check.recorded.setdefault("files", {})
    for path in files_of(ctx):
        stat = _stat(path)
        if stat is None:
            check.damaged[0] = f"output file {path} is missing"
            return
        if known.get(str(path)) != stat or full:
            problem = _unreadable_file(path)
            if problem is not None:
                check.damaged[0] = f"output file {path} cannot be read: {problem}"
                return
            recorded[str(path)] = stat


def _unreadable_file(path: Path) -> str | None:
    try:
        if path.suffix == ".npz":
            with np.load(path) as data:
                for name in data.files:
                    _ = data[name]
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.stat().st_size == 0:
            return "empty"
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def _store_lost(ctx: RunContext, checks: dict[str, _StageCheck]) -> str | None:
    """Why the graph store no longer holds what finished blocks wrote (None if it does)."""
    writers = [
        c
        for name, c in checks.items()
        if name in STORE_WRITERS and c.done is not None and c.done.any()
    ]
    if not writers:
        return None
    store = ctx.store
    token_file = integrity_dir(ctx.layout) / STORE_TOKEN_FILE
    recorded = token_file.read_text().strip() if token_file.is_file() else None
    stored = store.get_meta(STORE_TOKEN_KEY)
    if recorded is not None and stored != recorded:
        return (
            f"graph store {store.uri} is not the store the finished blocks wrote into "
            "(deleted or replaced)"
        )
    extract = checks.get("extract_fragments")
    extract_done = extract is not None and extract.done is not None and bool(extract.done.any())
    if extract_done and store.count_nodes() == 0:
        return f"graph store {store.uri} holds no nodes"
    return None


def _checks(ctx: RunContext, stages: list[Stage], full: bool) -> dict[str, _StageCheck]:
    checks: dict[str, _StageCheck] = {}
    for stage in stages:
        tiling = stage.tiling(ctx)
        done = None
        if stage.levels is None:
            done = grid_done(read_done(ctx.layout.tracking_dir(stage.name)), tiling)
        check = _StageCheck(stage, tiling, done)
        manifest = read_manifest(ctx.layout, stage.name)
        if stage.levels is not None:
            _check_level_files(ctx, check, manifest, full)
        elif tiling.is_whole:
            _check_files(ctx, check, manifest, full)
        else:
            _check_block_arrays(ctx, check, manifest, full)
            _check_block_files(ctx, check, manifest, full)
        checks[stage.name] = check
    if not full:
        for name, blocks in _read_verified_damage(ctx.layout).items():
            found = checks.get(name)
            if found is None or found.done is None:
                continue
            for index, reason in blocks.items():
                block = int(index)
                if block == ALL or found.done.ravel()[block]:
                    found.damaged.setdefault(block, f"found by `status --verify`: {reason}")
    lost = _store_lost(ctx, checks)
    if lost is not None:
        for name in STORE_WRITERS:
            if name in checks and checks[name].done is not None:
                checks[name].damaged = {ALL: lost}
    elif not full:
        _check_store_counts(ctx, checks)
    if full:
        _verify_graph(ctx, checks)
    return checks


def _verify_graph(ctx: RunContext, checks: dict[str, _StageCheck]) -> None:
    """Compare the store with the fragments, block by block (reads every fragment)."""
    extract = checks.get("extract_fragments")
    if extract is None or extract.done is None or ALL in extract.damaged:
        return
    grid = extract.tiling.grid
    volume = _open_output_array(ctx, FRAGMENTS_DATASET, None)
    if grid is None or volume is None:
        return
    ids = ctx.store.node_ids()
    agglomerate = checks.get("agglomerate")
    edges_u = None
    if agglomerate is not None and agglomerate.done is not None and agglomerate.done.any():
        edges_u = np.sort(ctx.store.read_edges().u)
    for index in _done_indices(extract.done):
        if index in extract.damaged:
            continue
        fragments = volume.read(grid.write_roi(index))
        expected = np.unique(fragments[fragments != 0])
        id_range = ctx.fragment_ids.id_range(index)
        lo, hi = np.searchsorted(ids, [id_range.first, id_range.last + 1])
        if not np.array_equal(ids[lo:hi], expected):
            extract.damaged[index] = (
                f"graph store {ctx.store.uri} holds {hi - lo} node(s) of this block, its "
                f"fragments have {len(expected)}"
            )
            continue
        if edges_u is None or agglomerate is None or agglomerate.done is None:
            continue
        if not agglomerate.done.ravel()[index] or index in agglomerate.damaged:
            continue
        owned = np.searchsorted(edges_u, id_range.last + 1) - np.searchsorted(
            edges_u, id_range.first
        )
        if owned == 0 and _has_contacts(fragments):
            agglomerate.damaged[index] = (
                f"graph store {ctx.store.uri} holds no edge of this block, whose fragments touch"
            )


def _has_contacts(fragments: np.ndarray) -> bool:
    """Whether two different non-zero fragments touch along an axis."""
    for axis in range(fragments.ndim):
        a = np.moveaxis(fragments, axis, 0)
        left, right = a[:-1], a[1:]
        if np.any((left != right) & (left != 0) & (right != 0)):
            return True
    return False


# -- repairing ---------------------------------------------------------------------


def _downstream_blocks(
    ctx: RunContext, checks: dict[str, _StageCheck], stages: list[Stage]
) -> dict[str, set[int]]:
    """Blocks to clear per stage: the damaged ones and every later block that read them."""
    cleared: dict[str, set[int]] = {}
    active = {s.name for s in stages}
    for stage in stages:
        check = checks[stage.name]
        blocks = set(check.damaged)
        tiling = check.tiling
        for name in stage.upstream:
            if name not in active or not cleared.get(name):
                continue
            upstream = checks[name]
            up_grid = upstream.tiling.grid
            if ALL in cleared[name] or up_grid is None or tiling.grid is None or stage.levels:
                blocks = {ALL}
                break
            for index in cleared[name]:
                blocks |= _blocks_reading(tiling, up_grid.write_roi(index))
        if blocks and (tiling.grid is None or stage.levels is not None):
            blocks = {ALL}
        if ALL in blocks:
            blocks = {ALL}
        cleared[stage.name] = blocks
    return cleared


def _blocks_reading(tiling: Tiling, roi: Roi) -> set[int]:
    """Indices of ``tiling``'s blocks whose read ROI (write ROI + context) meets ``roi``."""
    grid = tiling.grid
    assert grid is not None  # callers pass block-wise tilings
    context = tiling.context_nm
    begin = roi.begin - context - grid.data_roi.begin
    end = roi.end + context - grid.data_roi.begin
    block = grid.block_shape_nm
    shape = grid.grid_shape
    lo = [max(0, b // s) for b, s in zip(begin, block, strict=True)]
    hi = [min(n, -(-e // s)) for e, s, n in zip(end, block, shape, strict=True)]
    found = set()
    for z in range(lo[0], hi[0]):
        for y in range(lo[1], hi[1]):
            for x in range(lo[2], hi[2]):
                found.add((z * shape[1] + y) * shape[2] + x)
    return found


def _clear(ctx: RunContext, check: _StageCheck, blocks: set[int], manifest: Manifest) -> int:
    """Clear the markers of ``blocks`` of one stage; returns how many were done."""
    tracking = ctx.layout.tracking_dir(check.stage.name)
    if ALL in blocks:
        done = _blocks_done_count(check)
        shutil.rmtree(tracking, ignore_errors=True)
        forget_stage(ctx.layout, check.stage.name)
        return done
    assert check.done is not None and check.tiling.grid is not None
    flat = check.done.ravel()
    indices = sorted(i for i in blocks if flat[i])
    if not indices:
        return 0
    shape = check.done.shape
    clear_done(tracking, [tuple(int(p) for p in np.unravel_index(i, shape)) for i in indices])
    for index in indices:  # a re-run block records the files it writes then
        manifest.pop(_block_files_key(index), None)
    arrays_of = OUTPUT_ARRAYS.get(check.stage.name)
    if arrays_of is not None:
        for dataset, volume in arrays_of(ctx):
            entries = manifest.get(dataset)
            if volume is None or not entries:
                continue
            for index in indices:
                for chunk in _block_chunks(volume, check.tiling.grid.write_roi(index)):
                    entries.pop(volume.chunk_file(chunk).name, None)
    return len(indices)


def _blocks_done_count(check: _StageCheck) -> int:
    """Finished blocks of a checked stage (1 for a finished stage run by levels)."""
    if check.done is None:
        return 1 if check.stage.levels is not None else 0
    return int(check.done.sum())


def repair_outputs(ctx: RunContext, stages: list[Stage]) -> list[str]:
    """Check the outputs of finished blocks; clear the markers of damaged ones and downstream.

    Run by the driver after every refusal and before scheduling. Returns one
    message per damaged block (and per stage cleared because of them), also
    logged as warnings.
    """
    checks = _checks(ctx, stages, full=False)
    messages = []
    for check in checks.values():
        for index, reason in sorted(check.damaged.items()):
            roi = None
            if index != ALL and check.tiling.grid is not None:
                roi = check.tiling.grid.write_roi(index)
            messages.append(
                "re-running a finished block whose output is damaged: "
                + Damage(check.stage.name, index, roi, reason).describe()
            )
    cleared = _downstream_blocks(ctx, checks, stages)
    for stage in stages:
        check = checks[stage.name]
        manifest = read_manifest(ctx.layout, stage.name)
        changed = False
        for key, entries in check.recorded.items():
            if entries:
                manifest.setdefault(key, {}).update(entries)
                changed = True
        if cleared.get(stage.name):
            # after merging: the entries of cleared blocks go (their chunks are rewritten)
            count = _clear(ctx, check, cleared[stage.name], manifest)
            if count and not check.damaged:
                messages.append(f"re-running {count} block(s) of {stage.name} that read them")
            if ALL in cleared[stage.name]:
                continue
            changed = changed or count > 0
        if changed:
            write_manifest(ctx.layout, stage.name, manifest)
    for message in messages:
        logger.warning("%s", message)
    (integrity_dir(ctx.layout) / VERIFIED_DAMAGE_FILE).unlink(missing_ok=True)
    if any(checks[n].damaged for n in STORE_WRITERS if n in checks):
        # the damaged blocks rewrite their rows: the counts are recorded anew at the end
        (integrity_dir(ctx.layout) / STORE_COUNTS_FILE).unlink(missing_ok=True)
    _ensure_store_token(ctx, stages)
    return messages


def _ensure_store_token(ctx: RunContext, stages: list[Stage]) -> None:
    """Give the store a token (if it has none) and record it in the run directory."""
    if not any(s.name in STORE_WRITERS for s in stages):
        return
    store = ctx.store
    token = store.get_meta(STORE_TOKEN_KEY)
    if token is None:
        token = uuid.uuid4().hex
        store.set_meta(STORE_TOKEN_KEY, token)
    path = integrity_dir(ctx.layout) / STORE_TOKEN_FILE
    if not path.is_file() or path.read_text().strip() != token:
        write_atomic(path, token + "\n")


def _record_level_files(ctx: RunContext, stage: Stage) -> None:
    """Record size and mtime of the task files of a stage run by levels."""
    files = _level_task_files(ctx, stage)
    if not files:
        return
    manifest = read_manifest(ctx.layout, stage.name)
    entries = manifest.setdefault("files", {})
    changed = False
    for path in files:
        stat = _stat(path)
        if stat is not None and str(path) not in entries:
            entries[str(path)] = stat
            changed = True
    if changed:
        write_manifest(ctx.layout, stage.name, manifest)


def record_outputs(ctx: RunContext, stages: list[Stage]) -> None:
    """Record size and mtime of the outputs of every finished block (after a run's blocks).

    Only files not recorded yet are added: a recorded file that changed is the
    next run's to find. The graph store's node and edge counts are recorded too.
    """
    for stage in stages:
        if stage.levels is not None:
            _record_level_files(ctx, stage)
            continue
        tiling = stage.tiling(ctx)
        done = grid_done(read_done(ctx.layout.tracking_dir(stage.name)), tiling)
        if done is None or not done.any():
            continue
        manifest = read_manifest(ctx.layout, stage.name)
        changed = False
        if tiling.is_whole and stage.name in OUTPUT_FILES:
            entries = manifest.setdefault("files", {})
            for path in OUTPUT_FILES[stage.name](ctx):
                stat = _stat(path)
                if stat is not None and str(path) not in entries:
                    entries[str(path)] = stat
                    changed = True
        if tiling.grid is not None and stage.name in OUTPUT_BLOCK_FILES:
            for index in _done_indices(done):
                key = _block_files_key(index)
                if key in manifest:
                    continue
                entries = {}
                for path in OUTPUT_BLOCK_FILES[stage.name](ctx, index):
                    stat = _stat(path)
                    if stat is not None:
                        entries[str(path)] = stat
                manifest[key] = entries
                changed = True
        if tiling.grid is not None and stage.name in OUTPUT_ARRAYS:
            for dataset, volume in OUTPUT_ARRAYS[stage.name](ctx):
                if volume is None:
                    continue
                entries = manifest.setdefault(dataset, {})
                for index in _done_indices(done):
                    for chunk in _block_chunks(volume, tiling.grid.write_roi(index)):
                        file = volume.chunk_file(chunk)
                        if file.name in entries:
                            continue
                        stat = _stat(file)
                        if stat is not None:
                            entries[file.name] = stat
                            changed = True
        if changed:
            write_manifest(ctx.layout, stage.name, manifest)
    _record_store_counts(ctx, stages)


def verify_outputs(ctx: RunContext, stages: list[Stage], remember: bool = False) -> list[Damage]:
    """Every damaged finished block, reading every chunk and file fully.

    Besides what every run checks, each chunk of each finished block is
    decoded, and the graph store's nodes (and edges) are compared with the
    fragments of each finished block.

    Args:
        ctx: the run.
        stages: its active stages.
        remember: write the damaged blocks to ``RUN_DIR/integrity/verified_damage.json``,
            where the next run's check finds them (damage that only reading
            shows: a chunk rotten in place, nodes missing from the store).
            Otherwise nothing is written.
    """
    checks = _checks(ctx, stages, full=True)
    found = []
    for check in checks.values():
        for index, reason in sorted(check.damaged.items()):
            roi = None
            if index != ALL and check.tiling.grid is not None:
                roi = check.tiling.grid.write_roi(index)
            found.append(Damage(check.stage.name, index, roi, reason))
    if remember and found:
        pending = _read_verified_damage(ctx.layout)
        for damage in found:
            pending.setdefault(damage.stage, {})[str(damage.block_index)] = damage.reason
        write_atomic(
            integrity_dir(ctx.layout) / VERIFIED_DAMAGE_FILE,
            json.dumps(pending, indent=1, sort_keys=True),
        )
    return found


def _read_verified_damage(layout: RunLayout) -> dict[str, dict[str, str]]:
    """What ``status --verify`` found and no run has repaired yet: stage -> block -> reason."""
    path = integrity_dir(layout) / VERIFIED_DAMAGE_FILE
    if not path.is_file():
        return {}
    data: dict[str, dict[str, str]] = json.loads(path.read_text())
    return data


def describe_verification(
    ctx: RunContext, stages: list[Stage], command: str, remember: bool = True
) -> str:
    """``status --verify``'s text: every damaged block, or that all read back.

    Args:
        ctx: the run.
        stages: its active stages.
        command: the command that resumes the run.
        remember: see :func:`verify_outputs` (pass False while a driver runs).
    """
    damages = verify_outputs(ctx, stages, remember)
    if not damages:
        return (
            "verified: every chunk and file of every finished block reads back, and the graph "
            "store holds every finished block's nodes and edges"
        )
    lines = [f"verify: {len(damages)} damaged finished block(s):"]
    lines += [f"  {d.describe()}" for d in damages]
    lines.append(f"`{command}` re-runs them (and what read them)")
    return "\n".join(lines)
