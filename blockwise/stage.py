"""What a stage is: one object per stage module, read by the scheduler, plan, status and workers.

A stage names the config sections that parameterise it and the stages whose
outputs it reads (its done markers are keyed by both, cumulatively), says how
its work is cut into blocks (:class:`Tiling`), what a worker needs
(:class:`Resources`) and how much memory a block takes, and provides a
per-worker ``setup``: a context manager that opens models, stores and tables
once and yields the function that processes one :class:`StageBlock`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from funlib.geometry import Coordinate, Roi

from blockwise.geometry import BlockGrid, cantor_position, voxels

if TYPE_CHECKING:
    from blockwise.config import RunConfig
    from blockwise.run_context import RunContext


class StageBlock:
    """One block of one stage, with its ROIs cut to where they may reach.

    A block daisy handed out (:meth:`Tiling.daisy_block`) builds its ROIs when
    they are first read: a stage that never reads them (a no-op, a stage
    counting blocks) does not pay for them, and daisy's block id gives the
    index without them.

    Attributes:
        stage: the stage's name.
        index: the block's index in its stage's grid (0 for whole-volume stages).
        read_roi: what the block may read, nm (cut to the stage's read bounds).
        write_roi: what the block writes, nm (cut to the data ROI).
        level: the octree level, for a stage run by levels.
    """

    __slots__ = ("_read_roi", "_resolve", "_write_roi", "index", "level", "stage")

    stage: str
    index: int
    level: int
    _read_roi: Roi | None
    _write_roi: Roi | None
    _resolve: Callable[[], tuple[Roi, Roi]] | None

    def __init__(
        self, stage: str, index: int, read_roi: Roi, write_roi: Roi, level: int = 0
    ) -> None:
        self._fill(stage, index, level, read_roi, write_roi, None)

    @classmethod
    def deferred(
        cls, stage: str, index: int, level: int, resolve: Callable[[], tuple[Roi, Roi]]
    ) -> StageBlock:
        """A block whose (read, write) ROIs ``resolve()`` gives when first asked for."""
        block = cls.__new__(cls)
        block._fill(stage, index, level, None, None, resolve)
        return block

    def _fill(
        self,
        stage: str,
        index: int,
        level: int,
        read_roi: Roi | None,
        write_roi: Roi | None,
        resolve: Callable[[], tuple[Roi, Roi]] | None,
    ) -> None:
        _set(self, "stage", stage)
        _set(self, "index", index)
        _set(self, "level", level)
        _set(self, "_read_roi", read_roi)
        _set(self, "_write_roi", write_roi)
        _set(self, "_resolve", resolve)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"StageBlock is immutable: cannot set {name}")

    def __reduce__(self) -> tuple[type[StageBlock], tuple[str, int, Roi, Roi, int]]:
        # a deferred block pickles as the plain block it stands for
        read, write = self._rois()
        return (StageBlock, (self.stage, self.index, read, write, self.level))

    def _rois(self) -> tuple[Roi, Roi]:
        if self._read_roi is None or self._write_roi is None:
            if self._resolve is None:  # not reached: set whenever the ROIs are not
                raise RuntimeError(f"block {self.index} of {self.stage} has no ROIs")
            read, write = self._resolve()
            _set(self, "_read_roi", read)
            _set(self, "_write_roi", write)
            return read, write
        return self._read_roi, self._write_roi

    @property
    def read_roi(self) -> Roi:
        """What the block may read, nm (cut to the stage's read bounds)."""
        return self._rois()[0]

    @property
    def write_roi(self) -> Roi:
        """What the block writes, nm (cut to the data ROI)."""
        return self._rois()[1]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StageBlock):
            return NotImplemented
        return (self.stage, self.index, self.level, self._rois()) == (
            other.stage,
            other.index,
            other.level,
            other._rois(),
        )

    def __hash__(self) -> int:
        return hash((self.stage, self.index, self.level))

    def __repr__(self) -> str:
        return (
            f"StageBlock(stage={self.stage!r}, index={self.index}, read_roi={self.read_roi}, "
            f"write_roi={self.write_roi}, level={self.level})"
        )


_set = object.__setattr__


@dataclass(frozen=True)
class Tiling:
    """How a stage cuts the data ROI into blocks.

    Attributes:
        data_roi: the region the stage writes, nm.
        voxel_size: nm per voxel.
        block_shape_vx: the write shape of a block; None means one block covering
            the data ROI (a whole-volume stage).
        context_vx: what a block reads beyond its write ROI on every side.
        read_bounds: where reads are cut (default: the data ROI); a stage that
            pads beyond its inputs (predict) reads up to its full context.
    """

    data_roi: Roi
    voxel_size: Coordinate
    block_shape_vx: Coordinate | None = None
    context_vx: Coordinate = field(default_factory=lambda: Coordinate(0, 0, 0))
    read_bounds: Roi | None = None

    @property
    def is_whole(self) -> bool:
        """Whether the stage is one block covering the data ROI."""
        return self.block_shape_vx is None

    @property
    def context_nm(self) -> Coordinate:
        """The context in nm."""
        return Coordinate(self.context_vx) * self.voxel_size

    @property
    def grid(self) -> BlockGrid | None:
        """The write-block grid (None for whole-volume stages)."""
        if self.block_shape_vx is None:
            return None
        return BlockGrid(self.data_roi, self.voxel_size, Coordinate(self.block_shape_vx))

    @property
    def num_blocks(self) -> int:
        """Number of blocks."""
        grid = self.grid
        return 1 if grid is None else grid.num_blocks

    def block(self, stage: str, read_roi: Roi, write_roi: Roi, level: int = 0) -> StageBlock:
        """The block daisy handed out, cut to the data (write) and read bounds, with its index.

        Plain integer arithmetic: this runs for every block of every stage, and
        funlib's ``Roi`` operations cost more than a no-op block's scheduling.
        """
        data_begin, data_end, read_begin, read_end, step, grid = self._bounds
        write = _clip(write_roi, data_begin, data_end)
        index = 0
        if grid is not None:
            for b, d, s, g in zip(write.begin, data_begin, step, grid, strict=True):
                position, misaligned = divmod(b - d, s)
                if misaligned:
                    raise ValueError(f"write ROI {write_roi} is not aligned to the block grid")
                index = index * g + position
        return StageBlock(stage, index, _clip(read_roi, read_begin, read_end), write, level)

    def daisy_block(self, stage: str, block: Any, level: int = 0) -> StageBlock:
        """The block daisy handed out (a ``daisy.Block`` of this tiling's task), with its index.

        The index comes from daisy's block id (:func:`~blockwise.geometry.cantor_position`
        of the block's grid position); the ROIs are built only when read, and
        then checked against that index.

        daisy numbers the position of a block's write ROI in whole blocks from
        the start of its task's total ROI, which ``blockwise.tasks`` grows by
        the context: a context of a block or more shifts daisy's positions by
        ``context // block`` per axis against this tiling's grid.

        Raises:
            ValueError: if the block id lies outside the grid; on reading the
                ROIs, if the write ROI is not the block the id names.
        """
        grid = self._bounds[5]
        index = 0
        if grid is not None:
            number = block.block_id[1]
            position = tuple(
                p - o
                for p, o in zip(cantor_position(number, len(grid)), self._daisy_shift, strict=True)
            )
            for p, g in zip(position, grid, strict=True):
                if not 0 <= p < g:
                    raise ValueError(
                        f"daisy block id {number} is grid position {position}, outside "
                        f"the grid {grid} of {stage}"
                    )
                index = index * g + p

        def resolve() -> tuple[Roi, Roi]:
            cut = self.block(stage, block.read_roi, block.write_roi, level)
            if cut.index != index:
                raise ValueError(
                    f"daisy block id {block.block_id[1]} names block {index} of {stage}, "
                    f"but its write ROI {block.write_roi} is block {cut.index}: daisy's "
                    "block numbering is not the one blockwise expects"
                )
            return cut.read_roi, cut.write_roi

        return StageBlock.deferred(stage, index, level, resolve)

    @cached_property
    def _daisy_shift(self) -> tuple[int, ...]:
        """Whole blocks of context per axis: daisy's grid positions minus this grid's."""
        step = self._bounds[4]
        return tuple(int(c) // s for c, s in zip(self.context_nm, step, strict=True))

    @cached_property
    def _bounds(
        self,
    ) -> tuple[
        tuple[int, ...],
        tuple[int, ...],
        tuple[int, ...],
        tuple[int, ...],
        tuple[int, ...],
        tuple[int, ...] | None,
    ]:
        """Data and read bounds (begin, end), block step (nm) and grid shape, as plain ints."""
        read = self.read_bounds if self.read_bounds is not None else self.data_roi
        grid = self.grid
        step = (1, 1, 1) if grid is None else tuple(int(s) for s in grid.block_shape_nm)
        return (
            tuple(int(b) for b in self.data_roi.begin),
            tuple(int(e) for e in self.data_roi.end),
            tuple(int(b) for b in read.begin),
            tuple(int(e) for e in read.end),
            step,
            None if grid is None else tuple(int(g) for g in grid.grid_shape),
        )

    def coarsened(self, level: int) -> Tiling:
        """The tiling of octree level ``level``: ``2**level`` blocks per axis, no context."""
        if self.block_shape_vx is None:
            raise ValueError("a whole-volume tiling has no octree levels")
        shape = Coordinate(b * 2**level for b in self.block_shape_vx)
        return Tiling(self.data_roi, self.voxel_size, shape)

    def read_voxels_per_block(self) -> int:
        """Voxels a full block reads (its write shape plus context)."""
        if self.block_shape_vx is None:
            return voxels(self.data_roi, self.voxel_size)
        total = 1
        for b, c in zip(self.block_shape_vx, self.context_vx, strict=True):
            total *= b + 2 * c
        return total


def _clip(roi: Roi, begin: tuple[int, ...], end: tuple[int, ...]) -> Roi:
    """``roi`` cut to the box ``[begin, end)`` (``roi`` itself when it lies inside)."""
    roi_begin = roi.begin
    if len(roi_begin) != len(begin):
        raise ValueError(f"ROI {roi} has {len(roi_begin)} dimensions, the bounds {len(begin)}")
    roi_end = tuple(map(operator.add, roi_begin, roi.shape))
    lo = tuple(map(max, roi_begin, begin))
    hi = tuple(map(min, roi_end, end))
    if lo == roi_begin and hi == roi_end:
        return roi
    return Roi(lo, tuple(max(h - b, 0) for b, h in zip(lo, hi, strict=True)))


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs.

    Attributes:
        gpus: GPUs per worker (each local worker gets its own device).
        num_workers: workers for this stage; None means ``execution.num_workers``.
    """

    gpus: int = 0
    num_workers: int | None = None


@dataclass(frozen=True)
class Execution:
    """How a stage's blocks run: its workers, block timeout and retries, resolved.

    Attributes:
        num_workers: workers (``execution.stages.<stage>.num_workers``, else the
            stage's own resources, else ``execution.num_workers``).
        block_timeout_s: seconds a block may take.
        max_retries: attempts after the first for a failing block.
    """

    num_workers: int
    block_timeout_s: float
    max_retries: int


def stage_execution(config: RunConfig, stage: Stage) -> Execution:
    """How ``stage``'s blocks run under ``config`` (``execution`` with its per-stage keys)."""
    execution = config.execution
    own = execution.stages.get(stage.name)
    workers = own.num_workers if own is not None else None
    timeout = own.block_timeout_s if own is not None else None
    retries = own.max_retries if own is not None else None
    return Execution(
        num_workers=workers or stage.resources(config).num_workers or execution.num_workers,
        block_timeout_s=timeout if timeout is not None else execution.block_timeout_s,
        max_retries=retries if retries is not None else execution.max_retries,
    )


BlockFunction = Callable[[StageBlock], None]
Setup = Callable[["RunContext"], AbstractContextManager[BlockFunction]]


def _always(config: RunConfig) -> bool:
    del config
    return True


def _no_resources(config: RunConfig) -> Resources:
    del config
    return Resources()


def _no_identity(config: RunConfig) -> dict[str, str]:
    del config
    return {}


def _no_check(ctx: RunContext) -> None:
    del ctx


@dataclass(frozen=True)
class Stage:
    """One stage of a run, defined once in its module as ``STAGE``.

    Attributes:
        name: the stage's name (daisy task id, tracking and failure folders).
        sections: config sections that parameterise this stage alone.
        upstream: stages whose outputs this stage reads (their sections count too).
        tiling: the stage's blocks for a run.
        setup: per-worker setup yielding the per-block function.
        bytes_per_voxel: memory a block holds per voxel it reads, for ``plan``.
        is_enabled: whether a run of this config executes the stage.
        resources: what one worker needs.
        identity: values beyond the config that produced the outputs (e.g. a
            checkpoint's content hash); they key the done markers like sections do.
        check: validation beyond the config models that must pass before anything
            is written (e.g. the checkpoint fits the architecture, a GPU exists).
        inputs: the ``inputs`` entries the stage reads (their files' identities key
            its done markers).
        clear_outputs: removes everything the stage wrote (``reset``, ``--rerun-changed``).
        levels: None for a stage of one daisy task; otherwise the number of
            octree levels of the run: the stage runs as that many chained daisy
            tasks, level ``L`` tiling the data with blocks of ``2**L`` of its
            tiling's blocks per axis, each waiting for the blocks it covers.
        describe_result: lines for the run summary about what the stage
            produced (e.g. the hierarchy's largest residual graph per level).
    """

    name: str
    sections: tuple[str, ...]
    upstream: tuple[str, ...]
    tiling: Callable[[RunContext], Tiling]
    setup: Setup
    bytes_per_voxel: int = 0
    is_enabled: Callable[[RunConfig], bool] = _always
    resources: Callable[[RunConfig], Resources] = _no_resources
    identity: Callable[[RunConfig], dict[str, str]] = _no_identity
    check: Callable[[RunContext], None] = _no_check
    inputs: tuple[str, ...] = ()
    clear_outputs: Callable[[RunContext], None] = _no_check
    levels: Callable[[RunContext], int] | None = None
    describe_result: Callable[[RunContext], list[str]] | None = None


LEVEL_SEPARATOR = "_level_"


@dataclass(frozen=True)
class StageTask:
    """One daisy task of a stage: the stage itself, or one octree level of it.

    Attributes:
        stage: the stage.
        level: the octree level, None for a stage of one task.
    """

    stage: Stage
    level: int | None = None

    @property
    def name(self) -> str:
        """The daisy task id; also names the task's done markers and failure records."""
        if self.level is None:
            return self.stage.name
        return f"{self.stage.name}{LEVEL_SEPARATOR}{self.level}"

    def tiling(self, ctx: RunContext) -> Tiling:
        """The task's blocks."""
        tiling = self.stage.tiling(ctx)
        if self.level is None or self.level == 0:
            # level 0 is the stage's own tiling, context included (its leaves may read
            # what neighbouring blocks wrote, so daisy waits for those)
            return tiling
        return tiling.coarsened(self.level)


def stage_tasks(ctx: RunContext, stage: Stage) -> list[StageTask]:
    """The daisy tasks of ``stage`` in order (one, or one per octree level, leaves first)."""
    if stage.levels is None:
        return [StageTask(stage)]
    return [StageTask(stage, level) for level in range(stage.levels(ctx))]


def split_task_name(name: str) -> tuple[str, int | None]:
    """The stage name and level of a daisy task id (see :attr:`StageTask.name`)."""
    stage, separator, level = name.rpartition(LEVEL_SEPARATOR)
    if separator and level.isdigit():
        return stage, int(level)
    return name, None


def single_function(function: Callable[[RunContext, StageBlock], None]) -> Setup:
    """A ``setup`` for stages that need nothing opened beyond the run context."""

    def setup(ctx: RunContext) -> AbstractContextManager[BlockFunction]:
        from contextlib import contextmanager

        @contextmanager
        def opened() -> Iterator[BlockFunction]:
            yield lambda block: function(ctx, block)

        return opened()

    return setup
