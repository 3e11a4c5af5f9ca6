"""Run configuration: pydantic models, the only place a config file is parsed.

A run is described by one YAML file. Every model rejects unknown keys, and a
validation error names the key, the expected and the received value.
Paths may use environment variables (``${BLOCKWISE_DATA}/fib25.h5``); relative
paths are resolved against the working directory when the file is loaded, so
that the resolved config written into the run directory is self-contained.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from blockwise.errors import ConfigError
from blockwise.layout import RunLayout, threshold_name

Vec3 = tuple[int, int, int]
PositiveVec3 = tuple[
    Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]
]
NonNegativeVec3 = tuple[
    Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]
]

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


class Model(BaseModel):
    """Base of every config model: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


M = TypeVar("M", bound=Model)


def expand_path(value: str | Path) -> Path:
    """Expand ``$VAR``/``${VAR}`` and ``~`` in a path and make it absolute.

    Raises:
        ValueError: if a referenced environment variable is not set.
    """
    text = str(value)

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in os.environ:
            raise ValueError(
                f"path {text!r} uses the environment variable {name}, which is not set "
                f"(for the shared data: export {name}=../shared/data)"
            )
        return os.environ[name]

    return Path(_ENV_PATTERN.sub(substitute, text)).expanduser().resolve()


class UNetConfig(Model):
    """A MALA-style U-Net with valid convolutions (Funke et al. 2018).

    Level 0 works at full resolution; each entry of ``downsample_factors`` adds
    one coarser level. Every level runs ``num_conv_passes`` valid convolutions
    (ReLU) on the way down and again on the way up, so input and output shapes,
    and hence the block context, follow from these numbers alone
    (:mod:`blockwise.nn.architecture` does the arithmetic without torch).

    ``kind: hybrid`` uses 2D convolutions (kernel ``(1, k, k)``) in the upper
    ``levels_2d`` levels and 3D ones below, for anisotropic data.

    Kernel sizes must be odd: a valid convolution with an odd kernel trims the
    same number of voxels on both sides, which keeps skip connections aligned
    and the block context symmetric.
    """

    kind: Literal["3d", "hybrid"] = "3d"
    in_channels: int = Field(default=1, ge=1)
    num_fmaps: int = Field(default=12, ge=1, description="feature maps at level 0")
    fmap_inc_factor: int = Field(default=5, ge=1, description="feature maps x this per level")
    downsample_factors: list[PositiveVec3] = Field(
        default=[(2, 2, 2), (2, 2, 2)],
        description="max-pooling factor (z, y, x) from each level to the next coarser one; "
        "(1, 3, 3) for anisotropic data",
    )
    kernel_size: PositiveVec3 = Field(default=(3, 3, 3), description="3D convolution kernel")
    num_conv_passes: int = Field(default=2, ge=1)
    levels_2d: int = Field(
        default=0, ge=0, description="hybrid only: upper levels that convolve in 2D (1, k, k)"
    )

    @field_validator("kernel_size")
    @classmethod
    def _odd_kernel(cls, kernel_size: Vec3) -> Vec3:
        if any(k % 2 == 0 for k in kernel_size):
            raise ValueError(
                f"kernel_size must be odd on every axis (a valid convolution then trims "
                f"the same on both sides), got {list(kernel_size)}"
            )
        return kernel_size

    @model_validator(mode="after")
    def _hybrid_levels(self) -> UNetConfig:
        levels = len(self.downsample_factors) + 1
        if self.kind == "3d" and self.levels_2d != 0:
            raise ValueError(f"levels_2d is {self.levels_2d} but kind is 3d; use kind: hybrid")
        if self.kind == "hybrid" and not 1 <= self.levels_2d < levels:
            raise ValueError(
                f"a hybrid U-Net with {levels} levels needs 1 <= levels_2d <= {levels - 1} "
                f"(2D above, 3D below), got {self.levels_2d}"
            )
        return self


class DatasetConfig(Model):
    """One array in a zarr container or an HDF5 file."""

    file: Path = Field(description="a .zarr/.n5 directory or an .h5/.hdf5/.hdf file")
    dataset: str = Field(description="path of the array inside the file, e.g. volumes/raw")
    missing_chunks: Literal["error", "fill_value"] = Field(
        default="error",
        description="what a zarr chunk without a file means when read: an error (default), "
        "or the array's fill value (for arrays written without their empty chunks)",
    )

    @field_validator("file", mode="before")
    @classmethod
    def _expand(cls, value: Any) -> Any:
        return expand_path(value) if isinstance(value, str | Path) else value


class RoiConfig(Model):
    """A region in world units (nm), z, y, x."""

    offset_nm: Vec3
    shape_nm: PositiveVec3


class InputsConfig(Model):
    """The volumes a run reads.

    A run starts either from ``raw`` EM (then the ``predict`` section names the
    network and the affinities are predict's output) or from ``affinities``
    that something else predicted. ``raw`` may accompany affinities for
    viewing only.
    """

    raw: DatasetConfig | None = Field(
        default=None, description="raw EM, uint8 (z, y, x); needed when `predict` is configured"
    )
    affinities: DatasetConfig | None = Field(
        default=None,
        description="affinities (channels, z, y, x) predicted elsewhere; omit when `predict` "
        "is configured",
    )
    offsets: list[Vec3] = Field(
        default=[(-1, 0, 0), (0, -1, 0), (0, 0, -1)],
        description="one offset per affinity channel, in voxels; the affinity at v links v "
        "and v + offset. The first three must be the nearest-neighbour z, y, x offsets.",
    )
    voxel_size: PositiveVec3 | None = Field(
        default=None,
        description="nm per voxel (z, y, x); read from the dataset's attributes when omitted",
    )
    mask: DatasetConfig | None = None
    ground_truth: DatasetConfig | None = None
    roi: RoiConfig | None = Field(default=None, description="process only this region (nm)")

    @field_validator("offsets")
    @classmethod
    def _nearest_neighbour_first(cls, offsets: list[Vec3]) -> list[Vec3]:
        expected = [(-1, 0, 0), (0, -1, 0), (0, 0, -1)]
        if [tuple(o) for o in offsets[:3]] != expected:
            raise ValueError(
                f"the first three offsets must be the nearest-neighbour offsets {expected}, "
                f"got {offsets[:3]}"
            )
        return offsets


class PredictConfig(Model):
    """Affinities from raw EM with a trained U-Net, block by block.

    A block is ``tiles_per_block`` network outputs; its read ROI is the write
    ROI plus the network context (which follows from ``unet``). The affinity
    array's chunks are one network output, so blocks and batches write whole
    chunks. ``padding`` says what the network sees outside the raw volume:
    ``reflect`` (mirror at the faces, the face voxel not repeated) or ``zero``
    (raw value 0); with ``none`` the processed region is the raw volume shrunk
    by the context (and cut to whole tiles), so no padding is ever needed.
    """

    checkpoint: Path = Field(description="a checkpoint written by `blockwise train`")
    unet: UNetConfig = Field(description="the architecture; must match the checkpoint's")
    input_shape_vx: PositiveVec3 = Field(description="network input per tile (voxels)")
    tiles_per_block: PositiveVec3 = (1, 1, 1)
    batch_size: int = Field(default=1, ge=1)
    device: Literal["cuda", "cpu"] = Field(
        default="cuda", description="cuda fails clearly without a GPU; cpu runs on the CPU"
    )
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = Field(default=False, description="torch.compile the network once per worker")
    padding: Literal["reflect", "zero", "none"] = "reflect"
    num_workers: int | None = Field(
        default=None, ge=1, description="workers for this stage (default execution.num_workers)"
    )
    threads_per_worker: int | None = Field(
        default=None, ge=1, description="CPU threads torch may use in one worker (default: torch's)"
    )

    @field_validator("checkpoint", mode="before")
    @classmethod
    def _expand(cls, value: Any) -> Any:
        return expand_path(value) if isinstance(value, str | Path) else value


class ExtractFragmentsConfig(Model):
    """Seeded watershed on the affinities, block by block."""

    block_shape_vx: PositiveVec3 = (64, 64, 64)
    context_vx: NonNegativeVec3 = (8, 8, 8)
    boundary_threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    min_seed_distance_nm: float = Field(default=50.0, gt=0.0)
    seeds_per_section: bool = False
    min_fragment_size_vx: int = Field(default=0, ge=0)


class ScoringConfig(Model):
    """How an edge between two regions is scored (1 - statistic of its affinities).

    ``quantile`` is the exact quantile of all affinities on the contact;
    ``histogram_quantile`` approximates it with a 256-bin histogram (cheaper).
    """

    kind: Literal["mean", "quantile", "histogram_quantile", "mean_max_k"] = "mean"
    quantile: int = Field(default=50, ge=0, le=100)
    k: int = Field(default=10, ge=1, le=64)
    init_with_max: bool = True


class AgglomerateConfig(Model):
    """Measuring the region graph block by block, with the basins block faces cut."""

    context_vx: NonNegativeVec3 = Field(
        default=(16, 16, 16),
        description="voxels read around each block; at least extract_fragments.context_vx "
        "is read (the cut-basin search covers the flood extract_fragments saved for its "
        "read ROI) and edge statistics need one offset; a larger context only reads more",
    )
    scoring: ScoringConfig = ScoringConfig()
    long_range_edges: bool = Field(
        default=False,
        description="add the affinities of long-range offsets (inputs.offsets after the "
        "first three) to the edge statistics of the fragments they connect (hierarchical)",
    )
    merge_until: float | None = Field(
        default=None,
        gt=0.0,
        description="merge up to this score; defaults to the largest segmentation threshold",
    )


class SegmentsConfig(Model):
    """Global stitching: one lookup table per threshold.

    ``method: hierarchical`` (the default) gives exactly the greedy
    mean-affinity agglomeration of the whole region graph with memory bounded
    by block surfaces: agglomerate blocks only measure integer edge
    statistics, and an octree of tasks merges every pair that no data outside
    the task can change (:mod:`blockwise.stages.hierarchy`).

    ``method: global`` merges the whole region graph once more in one process
    from the edge statistics the blocks stored (memory O(edges)); it is the
    single-process reference and takes every scoring function, quantiles
    included. (The approximate per-block method, which kept each block's own
    merge decisions, is gone: it landed 0.5-2.3 VOI away from the whole-volume
    result, and ``hierarchical`` bounds memory as well, exactly.)
    """

    method: Literal["hierarchical", "global"] = "hierarchical"
    thresholds: list[Annotated[float, Field(gt=0.0, le=1.0)]] = [0.3, 0.5, 0.6, 0.7]

    @field_validator("thresholds")
    @classmethod
    def _sorted_unique(cls, thresholds: list[float]) -> list[float]:
        if not thresholds:
            raise ValueError("at least one threshold is needed, got an empty list")
        unique = sorted(set(thresholds))
        names: dict[str, float] = {}
        for threshold in unique:
            name = threshold_name(threshold)
            if name in names:
                raise ValueError(
                    f"thresholds {names[name]} and {threshold} both write the output dataset "
                    f"{name!r} (names keep 4 decimals); make them differ within 4 decimals"
                )
            names[name] = threshold
        return unique


class EvaluateConfig(Model):
    """Scoring the segmentations against the ground truth."""

    enabled: bool = True
    roi: RoiConfig | None = Field(default=None, description="evaluate only here (nm)")


class DownsampleConfig(Model):
    """Scale pyramids (OME-Zarr, NGFF 0.4) of every volume the run writes, block by block.

    For predict's affinities (mean) and the fragments and every segmentation
    (mode) the ``downsample`` stage writes an OME-Zarr image
    ``output.zarr/multiscale/NAME`` with levels ``s0`` (full resolution), ``s1``,
    ... each ``factor`` times coarser, and multiscales metadata that
    neuroglancer, napari and ome-zarr read. A block covers
    ``output.chunk_shape_vx * factor**levels`` voxels, so every level writes
    whole chunks.
    """

    enabled: bool = True
    factor: PositiveVec3 = Field(
        default=(2, 2, 2),
        description="voxels per coarser voxel from one level to the next (z, y, x); "
        "(1, 2, 2) for anisotropic data",
    )
    levels: int | None = Field(
        default=None,
        ge=1,
        description="coarser levels below full resolution; default: as many as fit (each "
        "level at least one chunk along every downsampled axis, a block at most 2**27 voxels)",
    )

    @field_validator("factor")
    @classmethod
    def _downsamples(cls, factor: Vec3) -> Vec3:
        if all(f == 1 for f in factor):
            raise ValueError(f"factor {list(factor)} downsamples nothing; use e.g. [2, 2, 2]")
        return factor


class OutputConfig(Model):
    """Where the arrays go."""

    chunk_shape_vx: PositiveVec3 = (32, 32, 32)


class StoreConfig(Model):
    """The region-adjacency graph store.

    ``uri`` is ``sqlite:///path/graph.db`` (the default is a file in the run
    directory) or, for clusters, ``mongodb://host:port/dbname``.
    """

    uri: str | None = None
    retry_attempts: int = Field(
        default=5, ge=1, description="tries per store operation before a block fails (MongoDB)"
    )
    retry_first_backoff_s: float = Field(
        default=1.0, ge=0.0, description="wait after the first failed try; doubles per try"
    )
    server_timeout_s: float = Field(
        default=3.0, gt=0.0, description="how long one try waits for the server (MongoDB)"
    )


# SLURM's --time: minutes, minutes:seconds, hours:minutes:seconds, days-hours,
# days-hours:minutes, days-hours:minutes:seconds, or no limit
_SLURM_TIME = r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+(:\d{1,2}){0,2}|UNLIMITED|INFINITE)$"
# SLURM's --mem: an integer with an optional unit (K, M, G, T; no unit means megabytes)
_SLURM_MEMORY = r"^[1-9]\d*[KMGT]?$"


def _check_stage_names(stages: dict[str, Any]) -> dict[str, Any]:
    """A ``stages`` mapping's keys must name stages (a pydantic validator of both uses)."""
    from blockwise.stages import STAGE_MODULES

    unknown = sorted(set(stages) - set(STAGE_MODULES))
    if unknown:
        raise ValueError(
            f"unknown stage(s) {unknown}; expected stage names among {list(STAGE_MODULES)}"
        )
    return stages


class SlurmStageResources(Model):
    """What each SLURM array task of a stage asks for (one task is one worker).

    Every key left unset (None) is not passed to ``sbatch``, so the
    cluster's default applies; ``gpus`` unset means the stage's own need
    (predict: 1, the others: 0).
    """

    cpus_per_task: int | None = Field(default=None, ge=1, description="sbatch --cpus-per-task")
    mem: str | None = Field(
        default=None,
        pattern=_SLURM_MEMORY,
        description="memory per task, sbatch --mem (e.g. 4G, 500M; no unit: megabytes)",
    )
    gpus: int | None = Field(
        default=None, ge=0, description="GPUs per task, sbatch --gres=gpu:N (default: the stage's)"
    )
    partition: str | None = Field(default=None, min_length=1, description="sbatch --partition")
    time: str | None = Field(
        default=None,
        pattern=_SLURM_TIME,
        description="time limit per task, sbatch --time (e.g. 30, 2:00:00, 1-12:00:00)",
    )
    account: str | None = Field(default=None, min_length=1, description="sbatch --account")
    extra_sbatch_args: list[str] = Field(
        default=[],
        description="more sbatch options, verbatim (e.g. ['--qos=high', '--constraint=a100']); "
        "a stage's list comes after the defaults', so its options win",
    )
    max_parallel: int | None = Field(
        default=None, ge=1, description="at most this many tasks of the array run at once (%K)"
    )


class SlurmConfig(SlurmStageResources):
    """The ``slurm`` execution profile: one ``sbatch --array`` per stage.

    The keys of :class:`SlurmStageResources` set here are the defaults of
    every stage; ``stages`` overrides them per stage (only the keys it sets).
    Array tasks connect back to the driver's scheduler at ``host``, so the
    driver must be reachable from the compute nodes, and the run directory
    (config, outputs, logs) must be on a file system they share.
    """

    stages: dict[str, SlurmStageResources] = Field(
        default={}, description="per-stage overrides, keyed by stage name"
    )
    host: str | None = Field(
        default=None,
        min_length=1,
        description="address the array tasks reach the driver at (default: this machine's "
        "fully qualified name); 127.0.0.1 works on a single-node cluster",
    )
    max_array_size: int | None = Field(
        default=None,
        ge=1,
        description="tasks per array (default: the cluster's MaxArraySize); larger stages "
        "are split into several arrays",
    )
    poll_interval_s: float = Field(
        default=10.0,
        gt=0.0,
        description="how often the driver asks squeue about its jobs (one query per stage)",
    )
    allow_sqlite_on_cluster: bool = Field(
        default=False,
        description="allow the embedded SQLite store: only safe when every task runs on "
        "the driver's machine (a single-node cluster); use a mongodb:// store otherwise",
    )

    _known_stages = field_validator("stages")(_check_stage_names)

    def for_stage(self, stage: str) -> SlurmStageResources:
        """The resources of ``stage``: the defaults, with the stage's overrides applied."""
        fields = list(SlurmStageResources.model_fields)
        merged = {name: getattr(self, name) for name in fields}
        override = self.stages.get(stage)
        if override is not None:
            for name in override.model_fields_set:
                merged[name] = getattr(override, name)
            merged["extra_sbatch_args"] = [*self.extra_sbatch_args, *override.extra_sbatch_args]
        return SlurmStageResources(**merged)


class StageExecution(Model):
    """How one stage's blocks are run, where it differs from ``execution``'s defaults.

    Every key left unset takes the value ``execution`` sets for all stages.
    """

    num_workers: int | None = Field(default=None, ge=1, description="workers for this stage")
    block_timeout_s: float | None = Field(
        default=None, gt=0, description="seconds a block of this stage may take"
    )
    max_retries: int | None = Field(
        default=None, ge=0, description="attempts after the first for a failing block"
    )


class ExecutionConfig(Model):
    """How blocks are run.

    ``profile: local`` starts ``num_workers`` worker processes on this
    machine; ``profile: slurm`` submits one SLURM job array per stage whose
    tasks are the workers (see :class:`SlurmConfig`).
    """

    profile: Literal["local", "slurm"] = "local"
    num_workers: int = Field(default=2, ge=1)
    max_retries: int = Field(default=2, ge=0)
    block_timeout_s: float = Field(default=600.0, gt=0)
    max_worker_restarts: int = Field(
        default=10,
        ge=0,
        description="worker processes of a stage that may fail (crash, be killed, be stuck past "
        "block_timeout_s) and be replaced before the stage is abandoned and the run ends",
    )
    slurm: SlurmConfig = Field(
        default=SlurmConfig(), description="the slurm profile's settings (read when profile: slurm)"
    )
    stages: dict[str, StageExecution] = Field(
        default={},
        description="per-stage num_workers, block_timeout_s and max_retries, keyed by stage "
        "name (e.g. {predict: {block_timeout_s: 3600}}); keys left out take the values above",
    )

    _known_stages = field_validator("stages")(_check_stage_names)

    @property
    def longest_block_timeout_s(self) -> float:
        """The largest block timeout of any stage (a watcher that cannot tell stages apart)."""
        return max(
            [self.block_timeout_s]
            + [s.block_timeout_s for s in self.stages.values() if s.block_timeout_s is not None]
        )


class RunConfig(Model):
    """One segmentation run."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    run_dir: Path
    inputs: InputsConfig
    predict: PredictConfig | None = None
    output: OutputConfig = OutputConfig()
    extract_fragments: ExtractFragmentsConfig = ExtractFragmentsConfig()
    agglomerate: AgglomerateConfig = AgglomerateConfig()
    segments: SegmentsConfig = SegmentsConfig()
    downsample: DownsampleConfig = DownsampleConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    store: StoreConfig = StoreConfig()
    execution: ExecutionConfig = ExecutionConfig()

    @field_validator("run_dir", mode="before")
    @classmethod
    def _expand(cls, value: Any) -> Any:
        return expand_path(value) if isinstance(value, str | Path) else value

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.predict is not None and self.inputs.raw is None:
            raise ValueError(
                "`predict` is configured but `inputs.raw` is not; predict needs raw EM"
            )
        if self.predict is not None and self.inputs.affinities is not None:
            raise ValueError(
                "both `predict` and `inputs.affinities` are configured; affinities are either "
                "an input or predict's output, not both"
            )
        if self.predict is None and self.inputs.affinities is None:
            raise ValueError(
                "neither `inputs.affinities` nor `predict` (with `inputs.raw`) is configured; "
                "a run needs affinities from one of them"
            )
        block = self.extract_fragments.block_shape_vx
        chunk = self.output.chunk_shape_vx
        if any(b % c for b, c in zip(block, chunk, strict=True)):
            raise ValueError(
                f"extract_fragments.block_shape_vx {list(block)} must be a multiple of "
                f"output.chunk_shape_vx {list(chunk)} on every axis (a block writing into a "
                "chunk shared with another block races)"
            )
        if self.agglomerate.merge_until is not None and self.agglomerate.merge_until < max(
            self.segments.thresholds
        ):
            raise ValueError(
                f"agglomerate.merge_until {self.agglomerate.merge_until} is below the largest "
                f"segments threshold {max(self.segments.thresholds)}"
            )
        self._check_agglomeration()
        return self

    def _check_agglomeration(self) -> None:
        """The scoring and the offsets fit the segments method (raises ValueError)."""
        method = self.segments.method
        scoring = self.agglomerate.scoring.kind
        if method == "hierarchical" and scoring != "mean":
            raise ValueError(
                f"segments.method: hierarchical merges by exact mean affinity, but "
                f"agglomerate.scoring.kind is {scoring!r}: a quantile of a merged contact need "
                "not lie between its parts', so merges cannot be deferred across blocks "
                "exactly; use agglomerate.scoring.kind: mean, or segments.method: global"
            )
        offsets = self.inputs.offsets
        long_range = [list(o) for o in offsets[3:]]
        if long_range and not (method == "hierarchical" and self.agglomerate.long_range_edges):
            raise ValueError(
                f"inputs.offsets has long-range offsets {long_range}; fragments use every "
                "channel, but agglomeration would ignore them: set "
                "agglomerate.long_range_edges: true (with segments.method: hierarchical) so "
                "their affinities add to the edge statistics of the fragments they connect, "
                "or remove them from inputs.offsets and the affinities"
            )
        if self.agglomerate.long_range_edges:
            reach = [max(abs(o[axis]) for o in offsets) for axis in range(3)]
            context = list(self.agglomerate.context_vx)
            if any(c < r for c, r in zip(context, reach, strict=True)):
                raise ValueError(
                    f"agglomerate.context_vx {context} must reach the longest offset "
                    f"{reach} on every axis, or a block misses contacts of its fragments"
                )

    @property
    def merge_until(self) -> float:
        """Score up to which blocks merge regions."""
        return self.agglomerate.merge_until or max(self.segments.thresholds)

    @property
    def store_uri(self) -> str:
        """The graph store URI, defaulting to an SQLite file in the run directory."""
        return self.store.uri or RunLayout(self.run_dir).default_store_uri

    def stage_hash(self, *sections: str, extra: dict[str, str] | None = None) -> str:
        """A short hash of the named config sections, the inputs and ``extra``.

        Done markers are keyed by it, so that a changed parameter never reuses
        blocks computed with the old one. ``extra`` carries identities that are
        not config values (for example a checkpoint's content hash).
        """
        from blockwise import __version__

        payload: dict[str, Any] = {
            "version": __version__,
            "inputs": self.inputs.model_dump(mode="json"),
        }
        for section in sections:
            value = getattr(self, section)
            payload[section] = None if value is None else value.model_dump(mode="json")
        if extra:
            payload["extra"] = dict(sorted(extra.items()))
        text = json.dumps(payload, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def dump(self, path: Path) -> None:
        """Write the resolved config (absolute paths) as YAML."""
        path.write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))


def _describe(error: Any) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    kind = error["type"]
    received = error.get("input")
    if kind == "extra_forbidden":
        return f"unknown key `{key}` (got {received!r}); check its spelling"
    if kind == "missing":
        return f"missing key `{key}`"
    return f"key `{key}`: {error['msg']} (got {received!r})"


def validate_mapping(data: dict[str, Any], model: type[M], source: str = "<config>") -> M:
    """Validate a config mapping against ``model``.

    Raises:
        ConfigError: naming every offending key, the expected and the received value.
    """
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = "\n  ".join(_describe(err) for err in e.errors())
        raise ConfigError(f"{source}: invalid config:\n  {problems}") from None


def parse_config(data: dict[str, Any], source: str = "<config>") -> RunConfig:
    """Validate a run config mapping (see :func:`validate_mapping`)."""
    return validate_mapping(data, RunConfig, source)


def load(path: str | Path, model: type[M]) -> M:
    """Load and validate a YAML config file against ``model`` (a run, a training, ...).

    Raises:
        ConfigError: if the file is missing, not UTF-8, not YAML, or invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path}: not a UTF-8 text file (byte {e.start} is {e.object[e.start]:#04x}); "
            "save the config as UTF-8"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {data!r}")
    return validate_mapping(data, model, str(path))


def load_config(path: str | Path) -> RunConfig:
    """Load and validate a YAML run config (see :func:`load`)."""
    return load(path, RunConfig)
