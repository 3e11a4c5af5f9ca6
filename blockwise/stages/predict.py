"""Stage 0: affinities from raw EM with a trained U-Net, block by block.

A block is ``predict.tiles_per_block`` network outputs; each tile reads its
output ROI grown by the network context. Tiles start at whole multiples of
the output shape from the data ROI's origin, so every tile sits on the same
downsampling lattice as a whole-volume prediction would, and block-wise
output equals whole-volume output (within float tolerance). Outside the raw
volume the input is padded as ``predict.padding`` says (``reflect``: mirrored
at the face, the face voxel not repeated, numpy's ``reflect``; ``zero``: raw
value 0).

Raw is normalised with :func:`blockwise.nn.architecture.normalize_raw` (the
training convention) and affinities are written as uint8 (round(255 a)) into
``output.zarr/affinities``, whose chunks are one network output, so every
tile writes whole chunks. Inside a block the next batch is read and the
previous batch written on background threads while the network runs.

torch is imported only by this stage's per-worker setup and its check.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np
from funlib.geometry import Coordinate, Roi

from blockwise.config import PredictConfig, RunConfig
from blockwise.errors import ConfigError
from blockwise.geometry import roi_slices
from blockwise.identity import file_content_identity
from blockwise.layout import AFFINITIES_DATASET
from blockwise.run_context import RunContext
from blockwise.stage import BlockFunction, Resources, Stage, StageBlock, Tiling
from blockwise.volume import Volume, remove_dataset

logger = logging.getLogger(__name__)

NAME = "predict"


def read_padded(volume: Volume, roi: Roi, padding: str) -> np.ndarray:
    """The voxels of ``roi`` (nm), padded where ``roi`` leaves the volume.

    Args:
        volume: a (z, y, x) volume.
        roi: voxel-aligned region, may extend beyond ``volume.roi``.
        padding: ``reflect`` (numpy's reflect: mirror, the face voxel not
            repeated), ``zero``, or ``none`` (then ``roi`` must lie inside).

    Raises:
        ConfigError: if ``roi`` leaves the volume and padding is ``none``.
    """
    if volume.roi.contains(roi):
        return volume.read(roi)
    if padding == "none":
        raise ConfigError(f"{roi} leaves {volume.name} ({volume.roi}) and predict.padding is none")
    vs = volume.voxel_size
    begin = (roi.begin - volume.roi.begin) / vs
    shape = roi.shape / vs
    size = volume.roi.shape / vs
    if padding == "zero":
        out = np.zeros(tuple(shape), dtype=volume.dtype)
        inside = roi.intersect(volume.roi)
        if not inside.empty:
            out[roi_slices(inside, roi, vs)] = volume.read(inside)
        return out
    index = []
    for b, s, n in zip(begin, shape, size, strict=True):
        i = np.arange(b, b + s)
        if n == 1:
            index.append(np.zeros_like(i))
            continue
        period = 2 * (n - 1)
        i = np.mod(i, period)
        index.append(np.where(i > n - 1, period - i, i))
    low = Coordinate(int(i.min()) for i in index)
    high = Coordinate(int(i.max()) + 1 for i in index)
    source = volume.read(Roi(volume.roi.begin + low * vs, (high - low) * vs))
    return source[np.ix_(*[i - lo for i, lo in zip(index, low, strict=True)])]


def tile_rois(write_roi: Roi, data_roi: Roi, tile_nm: Coordinate) -> list[Roi]:
    """Output ROIs of the tiles covering ``write_roi``, on the lattice of ``data_roi``'s origin.

    The last tiles may reach beyond ``write_roi``; their outputs are cropped.
    """
    start = write_roi.begin - data_roi.begin
    if any(s % t for s, t in zip(start, tile_nm, strict=True)):
        raise ValueError(f"block {write_roi} does not start on the tile lattice {tile_nm}")
    counts = [-(-s // t) for s, t in zip(write_roi.shape, tile_nm, strict=True)]
    rois = []
    for z in range(counts[0]):
        for y in range(counts[1]):
            for x in range(counts[2]):
                offset = write_roi.begin + Coordinate(z, y, x) * tile_nm
                rois.append(Roi(offset, tile_nm))
    return rois


def to_uint8(affinities: np.ndarray) -> np.ndarray:
    """Affinities in [0, 1] as uint8, value/255 (rounded to nearest)."""
    return np.clip(np.rint(affinities * 255.0), 0, 255).astype(np.uint8)


class Predictor:
    """One worker's network, ready to predict blocks.

    Args:
        ctx: the run.
        model: the network, on its device, in eval mode.
        device: the torch device.
    """

    def __init__(self, ctx: RunContext, model: Any, device: Any) -> None:
        import torch

        predict = ctx.config.predict
        network = ctx.network
        raw = ctx.raw
        assert predict is not None and network is not None and raw is not None
        self.ctx = ctx
        self.config: PredictConfig = predict
        self.raw: Volume = raw
        self.model = model
        self.device = device
        self.tile_nm = network.output_shape_vx * ctx.voxel_size
        self.context_nm = network.context_vx * ctx.voxel_size
        self.output = ctx.predicted_affinities
        self.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[
            predict.precision
        ]
        self._torch = torch

    def read_batch(self, tiles: list[Roi]) -> np.ndarray:
        """Normalised network inputs of a batch of tiles, (batch, 1, z, y, x) float32."""
        from blockwise.nn.architecture import normalize_raw

        inputs = [
            normalize_raw(
                read_padded(self.raw, t.grow(self.context_nm, self.context_nm), self.config.padding)
            )
            for t in tiles
        ]
        return np.stack(inputs)[:, None]

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Affinities of a batch, (batch, channels, z, y, x) float32 on the CPU."""
        torch = self._torch
        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        with torch.inference_mode():
            if self.autocast_dtype is None:
                y = self.model(x)
            else:
                with torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype):
                    y = self.model(x)
        result: np.ndarray = y.float().cpu().numpy()
        return result

    def write_batch(self, tiles: list[Roi], write_roi: Roi, affinities: np.ndarray) -> None:
        """Write each tile's output, cropped to the block, as uint8."""
        vs = self.ctx.voxel_size
        for tile, affs in zip(tiles, affinities, strict=True):
            part = tile.intersect(write_roi)
            crop = (slice(None), *roi_slices(part, tile, vs))
            self.output.write(part, to_uint8(affs[crop]))

    def predict_block(self, block: StageBlock) -> None:
        """Predict one block; reads and writes overlap the forward passes."""
        tiles = tile_rois(block.write_roi, self.ctx.data_roi, self.tile_nm)
        size = self.config.batch_size
        batches = [tiles[i : i + size] for i in range(0, len(tiles), size)]
        with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
            next_input = reader.submit(self.read_batch, batches[0])
            writes: list[Future[None]] = []
            for i, batch in enumerate(batches):
                inputs = next_input.result()
                if i + 1 < len(batches):
                    next_input = reader.submit(self.read_batch, batches[i + 1])
                affinities = self.forward(inputs)
                writes.append(writer.submit(self.write_batch, batch, block.write_roi, affinities))
            for write in writes:
                write.result()


def torch_device(config: PredictConfig) -> Any:
    """The torch device ``config`` asks for.

    Raises:
        ConfigError: if it asks for CUDA and there is none (never a silent CPU run).
    """
    import torch

    if config.device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                "predict.device is cuda but torch sees no CUDA device (torch "
                f"{torch.__version__}, CUDA build {torch.version.cuda}); set predict.device: "
                "cpu to predict on the CPU"
            )
        return torch.device("cuda")
    return torch.device("cpu")


def load_model(config: RunConfig, device: Any) -> Any:
    """The network of ``config.predict`` with its checkpoint's weights, in eval mode.

    Raises:
        CheckpointError: if the checkpoint is missing or does not match the config.
    """
    from blockwise.nn.checkpoint import model_from_checkpoint

    predict = config.predict
    assert predict is not None
    model = model_from_checkpoint(
        predict.checkpoint,
        expected_unet=predict.unet,
        expected_offsets=list(config.inputs.offsets),
        device=device,
    )
    model.eval()
    return model


@contextmanager
def setup(ctx: RunContext) -> Iterator[BlockFunction]:
    """Load the network once per worker (on this worker's GPU, or the CPU)."""
    import torch

    predict = ctx.config.predict
    assert predict is not None
    if predict.threads_per_worker is not None:
        torch.set_num_threads(predict.threads_per_worker)
    device = torch_device(predict)
    model = load_model(ctx.config, device)
    if predict.compile:
        model = torch.compile(model)
    predictor = Predictor(ctx, model, device)
    yield predictor.predict_block


def check(ctx: RunContext) -> None:
    """Before anything is written: raw, the device, the checkpoint against the config.

    Raises:
        InputError, ConfigError, CheckpointError: naming what is wrong.
    """
    predict = ctx.config.predict
    assert predict is not None
    _ = ctx.raw
    device = torch_device(predict)
    del device
    load_model(ctx.config, "cpu")


def tiling(ctx: RunContext) -> Tiling:
    """Blocks of whole network outputs; reads reach the full context (padded beyond raw)."""
    network = ctx.network
    assert network is not None
    context_nm = network.context_vx * ctx.voxel_size
    return Tiling(
        ctx.data_roi,
        ctx.voxel_size,
        network.block_shape_vx,
        network.context_vx,
        read_bounds=ctx.data_roi.grow(context_nm, context_nm),
    )


def is_enabled(config: RunConfig) -> bool:
    """Predict runs when the config has a ``predict`` section."""
    return config.predict is not None


def resources(config: RunConfig) -> Resources:
    """One GPU per worker for ``device: cuda``."""
    predict = config.predict
    assert predict is not None
    return Resources(gpus=1 if predict.device == "cuda" else 0, num_workers=predict.num_workers)


def identity(config: RunConfig) -> dict[str, str]:
    """The checkpoint's content: a retrained checkpoint invalidates predict and downstream."""
    predict = config.predict
    assert predict is not None
    return {"checkpoint": file_content_identity(predict.checkpoint)}


def clear_outputs(ctx: RunContext) -> None:
    """Remove the predicted affinities."""
    remove_dataset(ctx.output_path, AFFINITIES_DATASET)


# raw tile + padded input float32, activations of the first level (~ 2 x fmaps x 4 B)
STAGE = Stage(
    name=NAME,
    sections=("predict",),
    upstream=(),
    tiling=tiling,
    setup=setup,
    bytes_per_voxel=128,
    is_enabled=is_enabled,
    resources=resources,
    identity=identity,
    check=check,
    inputs=("raw",),
    clear_outputs=clear_outputs,
)
