"""Training configuration: one YAML file describes one training run.

Loaded with ``blockwise.config.load(path, TrainConfig)``, so a bad key gets the
same messages as in a run config. World units (nm) for regions, voxels for
network shapes and affinity offsets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from blockwise.config import (
    DatasetConfig,
    Model,
    PositiveVec3,
    RoiConfig,
    UNetConfig,
    Vec3,
    expand_path,
)

NEAREST_NEIGHBOUR_OFFSETS: list[Vec3] = [(-1, 0, 0), (0, -1, 0), (0, 0, -1)]

PositiveFloat = Annotated[float, Field(gt=0.0)]


class TrainDataConfig(Model):
    """The training volume: raw intensities and a dense label volume of the same shape.

    Only ``roi`` is ever read from the files (the rest, e.g. an evaluation half,
    is never touched). Label 0 is either ``background`` (a boundary: affinities
    to it are 0 and are trained) or ``unlabelled`` (affinities touching it are
    left out of the loss).
    """

    raw: DatasetConfig
    labels: DatasetConfig
    voxel_size: PositiveVec3 | None = Field(
        default=None,
        description="nm per voxel (z, y, x); read from the raw dataset's `resolution_nm` or "
        "`resolution` attribute when omitted",
    )
    roi: RoiConfig | None = Field(
        default=None, description="train on this region only (nm); the whole volume when omitted"
    )
    labels_zero: Literal["background", "unlabelled"] = "background"
    min_labelled_fraction: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="reject random locations whose output region has fewer voxels with a "
        "non-zero label than this fraction",
    )


class AugmentConfig(Model):
    """Augmentations, in the order they run (Funke et al. 2018, section 3.4)."""

    elastic: bool = True
    control_point_spacing_nm: PositiveVec3 = (400, 400, 400)
    jitter_sigma_nm: tuple[float, float, float] = (20.0, 20.0, 20.0)
    rotate_yx: bool = Field(
        default=True, description="random rotation in the y-x plane (grows the read region)"
    )
    mirror: bool = True
    transpose: bool = Field(
        default=True, description="random transposition of the axes with equal voxel size"
    )
    intensity: bool = True
    intensity_scale: tuple[PositiveFloat, PositiveFloat] = (0.9, 1.1)
    intensity_shift: tuple[float, float] = (-0.1, 0.1)

    @model_validator(mode="after")
    def _ordered_intervals(self) -> AugmentConfig:
        for name in ("intensity_scale", "intensity_shift"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name} must be (low, high) with low <= high, got {low, high}")
        return self


class LossConfig(Model):
    """The loss: class-balanced MSE, constrained MALIS, or MSE first and MALIS after.

    ``mse_then_malis`` follows the paper's schedule: balanced MSE up to (not
    including) ``malis_from_iteration``, MALIS from there on.
    """

    kind: Literal["mse", "malis", "mse_then_malis"] = "mse"
    malis_from_iteration: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _switch(self) -> LossConfig:
        if self.kind == "mse_then_malis" and self.malis_from_iteration is None:
            raise ValueError("kind mse_then_malis needs malis_from_iteration (an iteration)")
        if self.kind != "mse_then_malis" and self.malis_from_iteration is not None:
            raise ValueError(
                f"malis_from_iteration is only used with kind mse_then_malis, not {self.kind}"
            )
        return self

    def kind_at(self, iteration: int) -> Literal["mse", "malis"]:
        """The loss used to train iteration ``iteration`` (0-based)."""
        if self.kind == "mse_then_malis":
            assert self.malis_from_iteration is not None
            return "malis" if iteration >= self.malis_from_iteration else "mse"
        return "malis" if self.kind == "malis" else "mse"


class OptimizerConfig(Model):
    """Adam."""

    lr: float = Field(default=5e-5, gt=0.0)
    betas: tuple[float, float] = (0.95, 0.999)
    eps: float = Field(default=1e-8, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)


class ValidationConfig(Model):
    """Validation on a held-out region of the training volume.

    Random training locations never overlap ``roi`` with their label region, so
    its labels are never trained on. Every ``every`` iterations the region is
    predicted with the current weights (its context is read from the training
    region, which must hold it) and scored: mean balanced MSE against its
    ground-truth affinities, and VOI split/merge and adapted Rand error of
    connected components of the affinities above ``threshold``.
    """

    roi: RoiConfig
    every: int = Field(default=500, ge=1)
    threshold: float = Field(default=0.5, gt=0.0, lt=1.0)


class TrainConfig(Model):
    """One training run of the affinity U-Net."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    train_dir: Path = Field(description="checkpoints, log and loss curve go here")
    data: TrainDataConfig
    unet: UNetConfig = UNetConfig()
    offsets: list[Vec3] = Field(
        default=NEAREST_NEIGHBOUR_OFFSETS,
        description="one network output per offset (voxels); the first three must be the "
        "nearest-neighbour z, y, x offsets, as the run config requires",
    )
    input_shape_vx: PositiveVec3 = Field(description="network input per sample (voxels)")
    iterations: int = Field(ge=1, description="train up to this iteration count in total")
    checkpoint_every: int = Field(default=1000, ge=1)
    keep_checkpoints: int = Field(default=3, ge=1, description="older checkpoints are deleted")
    loss: LossConfig = LossConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    augment: AugmentConfig = AugmentConfig()
    validation: ValidationConfig | None = None
    seed: int = Field(default=0, ge=0)
    num_threads: int | None = Field(
        default=None, ge=1, description="torch CPU threads; all cores when omitted"
    )
    device: str = Field(default="cpu", description="torch device, e.g. cpu or cuda:0")

    @field_validator("train_dir", mode="before")
    @classmethod
    def _expand(cls, value: Any) -> Any:
        return expand_path(value) if isinstance(value, str | Path) else value

    @field_validator("offsets")
    @classmethod
    def _nearest_neighbour_first(cls, offsets: list[Vec3]) -> list[Vec3]:
        if [tuple(o) for o in offsets[:3]] != NEAREST_NEIGHBOUR_OFFSETS:
            raise ValueError(
                f"the first three offsets must be the nearest-neighbour offsets "
                f"{NEAREST_NEIGHBOUR_OFFSETS}, got {offsets[:3]}"
            )
        if len({tuple(o) for o in offsets}) != len(offsets):
            raise ValueError(f"offsets must be distinct, got {offsets}")
        return offsets
