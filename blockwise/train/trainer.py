"""The training loop: gunpowder batches into the U-Net, checkpoints, log, resume.

``train(config)`` checks everything it can before writing anything (volumes,
shapes, the validation region, an existing checkpoint's architecture and
offsets, and one real batch), then trains up to ``config.iterations`` steps.
A training directory holds::

    checkpoints/iteration_00001000.pt   (the last ``keep_checkpoints``, atomic)
    train_log.jsonl                     (one JSON record per step / validation)
    loss_curve.png
    train_config.yaml                   (the resolved config of the last start)

Running it again resumes from the newest checkpoint (weights and Adam state),
continuing the iteration count; batch ``i`` depends only on ``seed`` and ``i``.
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from funlib.geometry import Coordinate, Roi

from blockwise.config import Vec3
from blockwise.errors import CheckpointError, InputError
from blockwise.nn import architecture
from blockwise.nn.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from blockwise.nn.losses import balanced_mse_loss, malis_loss
from blockwise.nn.unet import UNet, build_unet, num_parameters
from blockwise.train.config import TrainConfig
from blockwise.train.data import TrainingVolume, load_training_volume, roi_from_config
from blockwise.train.log import LOG_NAME, PLOT_NAME, LogWriter, plot_loss_curve, truncate_log
from blockwise.train.pipeline import TrainingBatch, batch_arrays, build_pipeline, make_request

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
_CHECKPOINT_PATTERN = re.compile(r"^iteration_(\d+)\.pt$")


@dataclass(frozen=True)
class TrainResult:
    """What one ``train`` call did.

    Attributes:
        start_iteration: iterations done before this call (from a checkpoint).
        end_iteration: iterations done after it.
        checkpoint: the newest checkpoint, or None if none was written.
        last_loss: the loss of the last step trained here, or None.
        seconds: wall time of the training loop.
    """

    start_iteration: int
    end_iteration: int
    checkpoint: Path | None
    last_loss: float | None
    seconds: float


def checkpoint_path(train_dir: Path, iteration: int) -> Path:
    """Where the checkpoint after ``iteration`` steps goes."""
    return train_dir / CHECKPOINT_DIR / f"iteration_{iteration:08d}.pt"


def list_checkpoints(train_dir: Path) -> list[tuple[int, Path]]:
    """``(iteration, path)`` of the checkpoints in a training directory, oldest first."""
    folder = train_dir / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _CHECKPOINT_PATTERN.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def batch_seed(seed: int, iteration: int) -> int:
    """The request seed of batch ``iteration`` (0-based) of a run seeded with ``seed``."""
    return (seed * 1_000_003 + iteration * 7_919 + 1) % (2**32)


def check_validation_roi(
    config: TrainConfig, volume: TrainingVolume, context_vx: Vec3, output_vx: Vec3
) -> Roi | None:
    """The validation ROI (nm), checked to fit the training region with its context.

    Raises:
        InputError: if it is not voxel-aligned, not inside the training region
            together with the network context, or smaller than the network output.
    """
    if config.validation is None:
        return None
    roi = roi_from_config(config.validation.roi)
    vs = volume.voxel_size
    if roi.offset % vs != vs * 0 or roi.shape % vs != vs * 0:
        raise InputError(f"validation.roi {roi} is not a multiple of the voxel size {tuple(vs)} nm")
    reach = Coordinate(
        max([c] + [abs(o[d]) for o in config.offsets]) for d, c in enumerate(context_vx)
    )
    read = roi.grow(reach * vs, reach * vs)
    if not volume.roi.contains(read):
        raise InputError(
            f"validation.roi {roi} grown by the network context {list(reach)} voxels per side "
            f"is {read}, which is not inside the training region {volume.roi}; the validation "
            "region and its context must lie in the training region"
        )
    shape_vx = roi.shape / vs
    if any(s < o for s, o in zip(shape_vx, output_vx, strict=True)):
        raise InputError(
            f"validation.roi is {list(shape_vx)} voxels, smaller than the network output "
            f"{list(output_vx)} voxels on some axis; make it at least that large"
        )
    return roi


def check_volume_size(config: TrainConfig, volume: TrainingVolume) -> None:
    """Raise InputError if the training region is smaller than the network input."""
    roi_vx = volume.roi.shape / volume.voxel_size
    if any(r < i for r, i in zip(roi_vx, config.input_shape_vx, strict=True)):
        raise InputError(
            f"the training region {volume.roi} of {volume.source} is {list(roi_vx)} voxels "
            f"(z, y, x), smaller than the network input {list(config.input_shape_vx)} voxels; "
            "use a smaller input_shape_vx or a larger data.roi"
        )


def _existing_checkpoint(config: TrainConfig) -> tuple[int, Path] | None:
    """The newest checkpoint of the training directory, checked against the config.

    Raises:
        CheckpointError: if its architecture or offsets differ from the config's.
    """
    checkpoints = list_checkpoints(config.train_dir)
    if not checkpoints:
        return None
    iteration, path = checkpoints[-1]
    # raises CheckpointError naming every differing key (architecture) or both offset lists
    model_from_checkpoint(path, expected_unet=config.unet, expected_offsets=list(config.offsets))
    return iteration, path


LossFunction = Callable[[torch.Tensor, TrainingBatch], torch.Tensor]


def loss_function(kind: str, offsets: list[Vec3]) -> LossFunction:
    """The loss of ``kind`` ("mse" or "malis") as ``f(prediction, batch)``.

    ``prediction`` is the network output ``(1, channels, z, y, x)``; MSE is
    balanced between the two classes and masked by the batch's affinity mask;
    MALIS uses the batch's labels and the offsets.
    """
    if kind == "malis":

        def malis(pred: torch.Tensor, batch: TrainingBatch) -> torch.Tensor:
            labels = torch.from_numpy(batch.labels.astype(np.int64))
            return malis_loss(pred[0], labels, offsets)

        return malis

    def mse(pred: torch.Tensor, batch: TrainingBatch) -> torch.Tensor:
        target = torch.from_numpy(batch.affinities).to(pred.device)
        mask = torch.from_numpy(batch.affinities_mask).to(pred.device)
        return balanced_mse_loss(pred[0], target, mask)

    return mse


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss: LossFunction,
    batch: TrainingBatch,
    device: torch.device | str = "cpu",
) -> float:
    """One optimizer step on one batch; returns the loss before the step."""
    raw = torch.from_numpy(batch.raw)[None, None].to(device)
    optimizer.zero_grad(set_to_none=True)
    value = loss(model(raw), batch)
    value.backward()
    optimizer.step()
    return float(value.detach())


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def train(
    config: TrainConfig,
    iterations: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train (or resume training) the U-Net of ``config``.

    Args:
        config: the training config.
        iterations: train up to this many iterations in total (overrides
            ``config.iterations``).
        progress: show a tqdm bar with the loss and iterations/s.

    Returns:
        What was done; ``start_iteration == end_iteration`` if the newest
        checkpoint already had ``iterations`` steps.

    Raises:
        InputError: bad volumes, a training region too small for the network,
            a validation region that does not fit.
        ConfigError: an input shape the network does not accept.
        CheckpointError: a checkpoint in the training directory whose
            architecture or offsets differ from the config's.
    """
    total = config.iterations if iterations is None else iterations
    if total < 1:
        raise InputError(f"the number of iterations must be at least 1, got {total}")
    torch.set_num_threads(config.num_threads or os.cpu_count() or 1)
    output_vx = architecture.output_shape(config.unet, config.input_shape_vx)
    context_vx = architecture.context_vx(config.unet)
    volume = load_training_volume(config.data)
    check_volume_size(config, volume)
    held_out = check_validation_roi(config, volume, context_vx, output_vx)
    existing = _existing_checkpoint(config)
    start = existing[0] if existing else 0
    if start >= total:
        logger.info(
            "%s already holds a checkpoint after %d iterations (asked for %d); nothing to do",
            config.train_dir,
            start,
            total,
        )
        return TrainResult(start, start, existing[1] if existing else None, None, 0.0)

    pipeline, keys = build_pipeline(config, volume, held_out)
    import gunpowder as gp

    with gp.build(pipeline):
        # one real batch before anything is written: augmentation may need a
        # larger region than the network input
        try:
            first = pipeline.request_batch(
                make_request(
                    keys,
                    config.input_shape_vx,
                    output_vx,
                    volume.voxel_size,
                    batch_seed(config.seed, start),
                )
            )
        except InputError:
            raise
        except Exception as e:
            raise InputError(
                f"the training region {volume.roi} ({list(volume.roi.shape / volume.voxel_size)} "
                f"voxels) cannot provide a batch for the network input "
                f"{list(config.input_shape_vx)} voxels with the configured augmentation "
                f"(deformation and rotation read a larger region): {type(e).__name__}: "
                f"{str(e).strip().splitlines()[-1] if str(e).strip() else ''}; use a smaller "
                "input_shape_vx, a larger data.roi or augment.rotate_yx: false"
            ) from e
        return _train_loop(
            config,
            volume,
            pipeline,
            keys,
            first,
            start,
            total,
            existing,
            output_vx,
            context_vx,
            held_out,
            progress,
        )


def _train_loop(
    config: TrainConfig,
    volume: TrainingVolume,
    pipeline: Any,
    keys: Any,
    first: Any,
    start: int,
    total: int,
    existing: tuple[int, Path] | None,
    output_vx: Vec3,
    context_vx: Vec3,
    held_out: Roi | None,
    progress: bool,
) -> TrainResult:
    from tqdm import tqdm

    device = torch.device(config.device)
    _seed_everything(config.seed)
    model: UNet = build_unet(config.unet, len(config.offsets)).to(device)
    opt = config.optimizer
    optimizer = torch.optim.Adam(
        model.parameters(),
        lr=opt.lr,
        betas=opt.betas,
        eps=opt.eps,
        weight_decay=opt.weight_decay,
    )
    train_dir = config.train_dir
    log_path = train_dir / LOG_NAME
    if existing is not None:
        checkpoint = load_checkpoint(existing[1])
        model.load_state_dict(checkpoint.model_state)
        if checkpoint.optimizer_state is not None:
            optimizer.load_state_dict(checkpoint.optimizer_state)
            # Adam's moments go on, its settings are the config's: loading the state
            # would otherwise bring back the rate of the run that wrote it (a
            # fine-tuning at a lower rate would silently run at the old one)
            saved_lr = optimizer.param_groups[0]["lr"]
            for group in optimizer.param_groups:
                group.update(lr=opt.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay)
            if saved_lr != opt.lr:
                logger.info(
                    "learning rate %g from the config (the checkpoint's: %g)", opt.lr, saved_lr
                )
        else:
            logger.warning("%s holds no optimizer state; Adam starts afresh", existing[1])
        truncate_log(log_path, start)
        logger.info("resuming from %s (iteration %d)", existing[1], start)
    else:
        train_dir.mkdir(parents=True, exist_ok=True)
        log_path.unlink(missing_ok=True)
    _seed_everything(config.seed + start)
    (train_dir / "train_config.yaml").write_text(
        yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    )
    logger.info(
        "training %s: %d parameters, input %s -> output %s voxels, iterations %d..%d, "
        "%d torch threads",
        config.name,
        num_parameters(model),
        list(config.input_shape_vx),
        list(output_vx),
        start,
        total,
        torch.get_num_threads(),
    )
    model.train()
    losses = {kind: loss_function(kind, list(config.offsets)) for kind in ("mse", "malis")}
    last_loss: float | None = None
    newest: Path | None = existing[1] if existing else None
    began = time.perf_counter()
    bar = tqdm(total=total, initial=start, disable=not progress, unit="it", dynamic_ncols=True)
    batch_gp = first
    try:
        with LogWriter(log_path) as log:
            for step in range(start, total):
                tick = time.perf_counter()
                if batch_gp is None:
                    batch_gp = pipeline.request_batch(
                        make_request(
                            keys,
                            config.input_shape_vx,
                            output_vx,
                            volume.voxel_size,
                            batch_seed(config.seed, step),
                        )
                    )
                batch = batch_arrays(batch_gp, keys)
                batch_gp = None
                kind = config.loss.kind_at(step)
                last_loss = train_step(model, optimizer, losses[kind], batch, device)
                if not np.isfinite(last_loss):
                    raise InputError(
                        f"the {kind} loss became {last_loss} at iteration {step + 1}; lower "
                        "optimizer.lr"
                    )
                done = step + 1
                log.write(
                    {
                        "iteration": done,
                        "loss": last_loss,
                        "kind": kind,
                        "seconds": round(time.perf_counter() - tick, 4),
                        "lr": optimizer.param_groups[0]["lr"],
                    }
                )
                bar.set_postfix(loss=f"{last_loss:.4g}", kind=kind, refresh=False)
                bar.update(1)
                if (
                    config.validation is not None
                    and held_out is not None
                    and (done % config.validation.every == 0 or done == total)
                ):
                    from blockwise.train.validation import validate

                    result = validate(
                        model,
                        volume,
                        held_out,
                        list(config.offsets),
                        context_vx,
                        output_vx,
                        config.validation.threshold,
                        config.device,
                    )
                    log.write(
                        {
                            "iteration": done,
                            "kind": "validation",
                            "loss": result.loss,
                            "voi_split": result.voi_split,
                            "voi_merge": result.voi_merge,
                            "arand": result.arand,
                            "seconds": round(result.seconds, 3),
                        }
                    )
                    logger.info(
                        "validation at %d: balanced MSE %.4f, threshold+CC VOI split %.3f "
                        "merge %.3f ARAND %.3f (%.1f s)",
                        done,
                        result.loss,
                        result.voi_split,
                        result.voi_merge,
                        result.arand,
                        result.seconds,
                    )
                if done % config.checkpoint_every == 0 or done == total:
                    newest = checkpoint_path(train_dir, done)
                    save_checkpoint(
                        newest,
                        model,
                        config.unet,
                        list(config.offsets),
                        done,
                        optimizer_state=optimizer.state_dict(),
                        extra={
                            "loss": last_loss,
                            "kind": kind,
                            "name": config.name,
                            "lr": optimizer.param_groups[0]["lr"],
                            "seed": config.seed,
                        },
                    )
                    _prune(train_dir, config.keep_checkpoints)
                    plot_loss_curve(log_path, train_dir / PLOT_NAME, config.name)
    finally:
        bar.close()
    seconds = time.perf_counter() - began
    logger.info(
        "trained iterations %d..%d in %.1f s; last loss %s", start, total, seconds, last_loss
    )
    return TrainResult(start, total, newest, last_loss, seconds)


def _prune(train_dir: Path, keep: int) -> None:
    for _, path in list_checkpoints(train_dir)[:-keep]:
        path.unlink(missing_ok=True)


def describe_result(result: TrainResult) -> str:
    """One line for the CLI."""
    if result.start_iteration == result.end_iteration:
        return (
            f"nothing to train: {result.checkpoint} already has {result.end_iteration} iterations"
        )
    loss = f"{result.last_loss:.5g}" if result.last_loss is not None else "n/a"
    return (
        f"trained iterations {result.start_iteration}..{result.end_iteration} in "
        f"{result.seconds:.1f} s (last loss {loss}); checkpoint {result.checkpoint}"
    )


__all__ = ["CheckpointError", "TrainResult", "describe_result", "train"]
