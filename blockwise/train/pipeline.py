"""The gunpowder 1.4.4 pipeline that makes training batches.

One batch is: raw of the network's input shape, scaled like
:func:`blockwise.nn.architecture.normalize_raw` (``gp.Normalize`` to [0, 1],
then ``IntensityScaleShift(2, -1)``), with labels, target affinities for the
configured offsets and an affinity mask, all cropped to the network's output
region. Locations are random inside the training region, rejected when too
little of the output region is labelled or when the label region touches the
held-out validation region; each batch's randomness follows from its request
seed alone, so batch ``i`` of a seeded run is the same after a resume.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import gunpowder as gp
import numpy as np
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array as PersistenceArray
from numpy.typing import NDArray

from blockwise.errors import InputError
from blockwise.train.config import TrainConfig
from blockwise.train.data import TrainingVolume

logger = logging.getLogger(__name__)

# a random location is drawn again at most this many times before the
# training region is declared unable to hold a batch outside the held-out ROI
MAX_REJECTED_LOCATIONS = 10_000


@dataclass(frozen=True)
class Keys:
    """The gunpowder array keys of one pipeline."""

    raw: gp.ArrayKey
    labels: gp.ArrayKey
    labelled: gp.ArrayKey
    affinities: gp.ArrayKey
    affinities_mask: gp.ArrayKey


@dataclass(frozen=True)
class TrainingBatch:
    """One training sample as numpy arrays.

    Attributes:
        raw: float32 (z, y, x) in [-1, 1] (the network input).
        labels: uint64 (z, y, x) instance ids of the output region.
        affinities: float32 (channels, z, y, x) target affinities, 0 or 1.
        affinities_mask: float32 (channels, z, y, x), 1 where the target is known.
        input_roi: where the raw came from before augmentation (nm).
    """

    raw: NDArray[np.float32]
    labels: NDArray[np.uint64]
    affinities: NDArray[np.float32]
    affinities_mask: NDArray[np.float32]
    input_roi: Roi


def make_keys() -> Keys:
    """The array keys (gunpowder keys are global names; these are reused)."""
    return Keys(
        raw=gp.ArrayKey("RAW"),
        labels=gp.ArrayKey("LABELS"),
        labelled=gp.ArrayKey("LABELLED"),
        affinities=gp.ArrayKey("AFFINITIES"),
        affinities_mask=gp.ArrayKey("AFFINITIES_MASK"),
    )


class LabelledMask(gp.BatchFilter):
    """Adds a uint8 mask that is 1 where ``labels`` is not 0."""

    def __init__(self, labels: gp.ArrayKey, mask: gp.ArrayKey) -> None:
        self.labels = labels
        self.mask = mask

    def setup(self) -> None:
        spec = self.spec[self.labels].copy()
        spec.dtype = np.uint8
        spec.interpolatable = False
        self.provides(self.mask, spec)

    def prepare(self, request: gp.BatchRequest) -> gp.BatchRequest:
        deps = gp.BatchRequest()
        roi = request[self.mask].roi
        if self.labels in request:
            roi = roi.union(request[self.labels].roi)
        deps[self.labels] = gp.ArraySpec(roi=roi)
        return deps

    def process(self, batch: gp.Batch, request: gp.BatchRequest) -> gp.Batch:
        labels = batch[self.labels]
        spec = self.spec[self.mask].copy()
        spec.roi = request[self.mask].roi
        data = labels.crop(spec.roi).data if labels.spec.roi != spec.roi else labels.data
        outputs = gp.Batch()
        outputs[self.mask] = gp.Array((data != 0).astype(np.uint8), spec)
        return outputs


class HeldOutRandomLocation(gp.RandomLocation):
    """``RandomLocation`` whose label region never overlaps a held-out ROI.

    Raises:
        InputError: after :data:`MAX_REJECTED_LOCATIONS` locations in a row
            were rejected (the training region has no room outside the
            held-out ROI).
    """

    def __init__(self, labels: gp.ArrayKey, held_out: Roi | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.labels = labels
        self.held_out = held_out
        self.rejected_in_a_row = 0

    def accepts(self, request: gp.BatchRequest) -> bool:
        if self.held_out is None:
            return True
        if not request[self.labels].roi.intersects(self.held_out):
            self.rejected_in_a_row = 0
            return True
        self.rejected_in_a_row += 1
        if self.rejected_in_a_row >= MAX_REJECTED_LOCATIONS:
            raise InputError(
                f"{MAX_REJECTED_LOCATIONS} random training locations in a row overlapped the "
                f"validation ROI {self.held_out}; the training region needs room for a label "
                f"region of {request[self.labels].roi.shape} nm outside it"
            )
        return False


def transpose_axes(voxel_size: Coordinate) -> list[int]:
    """Axes that may be swapped by augmentation: those sharing the x voxel size."""
    return [d for d in range(3) if voxel_size[d] == voxel_size[2]]


def build_pipeline(
    config: TrainConfig,
    volume: TrainingVolume,
    held_out: Roi | None,
) -> tuple[gp.Pipeline, Keys]:
    """Assemble the batch pipeline for ``config`` over ``volume``.

    Args:
        config: the training config (augmentations, offsets, input shape).
        volume: the training region, in memory.
        held_out: a ROI (nm) whose labels must never be part of a batch.
    """
    keys = make_keys()
    vs = volume.voxel_size
    aug = config.augment
    raw_array = PersistenceArray(volume.raw, offset=volume.roi.offset, voxel_size=vs)
    labels_array = PersistenceArray(volume.labels, offset=volume.roi.offset, voxel_size=vs)
    sources = (
        gp.ArraySource(keys.raw, raw_array, interpolatable=True),
        gp.ArraySource(keys.labels, labels_array, interpolatable=False),
    )
    pipeline = sources + gp.MergeProvider()  # gunpowder's tuple + node operator
    pipeline += LabelledMask(keys.labels, keys.labelled)
    pipeline += gp.Normalize(keys.raw)
    pipeline += HeldOutRandomLocation(
        keys.labels,
        held_out,
        min_masked=config.data.min_labelled_fraction,
        mask=keys.labelled if config.data.min_labelled_fraction > 0 else None,
    )
    if aug.elastic:
        pipeline += gp.DeformAugment(
            control_point_spacing=Coordinate(aug.control_point_spacing_nm),
            jitter_sigma=list(aug.jitter_sigma_nm),
            rotate=aug.rotate_yx,
            rotation_axes=[1, 2] if aug.rotate_yx else None,
            # subsample > 1 gives a constant batch with gunpowder 1.4.4's DeformAugment
            # (its master transformation lives on the control-point grid)
            subsample=1,
            spatial_dims=3,
        )
    if aug.mirror or aug.transpose:
        pipeline += gp.SimpleAugment(
            mirror_only=None if aug.mirror else [],
            transpose_only=transpose_axes(vs) if aug.transpose else [],
        )
    if aug.intensity:
        pipeline += gp.IntensityAugment(
            keys.raw,
            scale_min=aug.intensity_scale[0],
            scale_max=aug.intensity_scale[1],
            shift_min=aug.intensity_shift[0],
            shift_max=aug.intensity_shift[1],
            clip=True,
        )
    pipeline += gp.AddAffinities(
        affinity_neighborhood=[list(o) for o in config.offsets],
        labels=keys.labels,
        affinities=keys.affinities,
        labels_mask=keys.labelled if config.data.labels_zero == "unlabelled" else None,
        affinities_mask=keys.affinities_mask,
        dtype=np.float32,
    )
    pipeline += gp.IntensityScaleShift(keys.raw, 2, -1)
    logger.debug("training pipeline: %s", pipeline)
    return pipeline, keys


def make_request(
    keys: Keys,
    input_shape_vx: tuple[int, int, int],
    output_shape_vx: tuple[int, int, int],
    voxel_size: Coordinate,
    seed: int,
) -> gp.BatchRequest:
    """A request for one batch, centred output inside the input, seeded."""
    input_nm = Coordinate(input_shape_vx) * voxel_size
    output_nm = Coordinate(output_shape_vx) * voxel_size
    context = (input_nm - output_nm) / 2
    request = gp.BatchRequest(random_seed=seed)
    request[keys.raw] = gp.ArraySpec(roi=Roi(voxel_size * 0, input_nm))
    output_roi = Roi(context, output_nm)
    for key in (keys.labels, keys.labelled, keys.affinities, keys.affinities_mask):
        request[key] = gp.ArraySpec(roi=output_roi)
    return request


def batch_arrays(batch: gp.Batch, keys: Keys) -> TrainingBatch:
    """The numpy arrays of a gunpowder batch."""
    return TrainingBatch(
        raw=np.ascontiguousarray(batch[keys.raw].data, dtype=np.float32),
        labels=np.ascontiguousarray(batch[keys.labels].data, dtype=np.uint64),
        affinities=np.ascontiguousarray(batch[keys.affinities].data, dtype=np.float32),
        affinities_mask=np.ascontiguousarray(batch[keys.affinities_mask].data, dtype=np.float32),
        input_roi=batch[keys.raw].spec.roi,
    )
