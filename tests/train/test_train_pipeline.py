"""The gunpowder batch pipeline: value conventions, affinities, held-out region, seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gunpowder as gp
import numpy as np
import pytest
from funlib.geometry import Coordinate, Roi

from blockwise.nn.architecture import normalize_raw, output_shape
from blockwise.train.data import load_training_volume
from blockwise.train.pipeline import batch_arrays, build_pipeline, make_request
from blockwise.train.trainer import batch_seed

NO_AUGMENT = {"elastic": False, "mirror": False, "transpose": False, "intensity": False}


def reference_affinities(labels: np.ndarray, offsets: list[tuple[int, int, int]]) -> np.ndarray:
    """Slow reference: aff[c, v] = 1 iff labels[v] == labels[v + offset_c] != 0."""
    out = np.zeros((len(offsets), *labels.shape), dtype=np.float32)
    for c, offset in enumerate(offsets):
        for v in np.ndindex(labels.shape):
            u = tuple(a + b for a, b in zip(v, offset, strict=True))
            if all(0 <= a < s for a, s in zip(u, labels.shape, strict=True)):
                out[(c, *v)] = float(labels[v] == labels[u] and labels[v] != 0)
    return out


def one_batch(config, seed: int = 0):  # type: ignore[no-untyped-def]
    volume = load_training_volume(config.data)
    out = output_shape(config.unet, config.input_shape_vx)
    pipeline, keys = build_pipeline(config, volume, None)
    with gp.build(pipeline):
        batch = pipeline.request_batch(
            make_request(keys, config.input_shape_vx, out, volume.voxel_size, seed)
        )
    return volume, batch_arrays(batch, keys)


def test_batch_matches_normalize_raw_and_reference_affinities(
    tmp_path: Path, tiny_config: Any, write_h5: Any, blob_volume: Any
) -> None:
    # the training region is exactly one network input: the only location there is
    raw, labels = blob_volume((24, 24, 24), seed=1)
    labels[3:6, 10:14, 2:20] = 0  # some unlabelled voxels
    path = write_h5(tmp_path / "v.h5", raw=raw, labels=labels)
    offsets = [(-1, 0, 0), (0, -1, 0), (0, 0, -1), (-3, 0, 0), (0, -4, 2)]
    config = tiny_config(
        path,
        tmp_path / "t",
        augment=NO_AUGMENT,
        offsets=offsets,
        data={"min_labelled_fraction": 0.0},
    )
    _, batch = one_batch(config)
    # gp.Normalize + IntensityScaleShift(2, -1) is normalize_raw, bit for bit
    np.testing.assert_array_equal(batch.raw, normalize_raw(raw))
    context = 8  # (24 - 8) / 2
    inner = (slice(context, -context),) * 3
    np.testing.assert_array_equal(batch.labels, labels[inner])
    expected = reference_affinities(labels, offsets)[(slice(None), *inner)]
    np.testing.assert_array_equal(batch.affinities, expected)
    assert batch.affinities.shape == (5, 8, 8, 8)
    np.testing.assert_array_equal(batch.affinities_mask, np.ones_like(expected))


def test_unlabelled_zero_is_masked(
    tmp_path: Path, tiny_config: Any, write_h5: Any, blob_volume: Any
) -> None:
    raw, labels = blob_volume((24, 24, 24), seed=2)
    labels[10:14, 10:14, 10:14] = 0
    path = write_h5(tmp_path / "v.h5", raw=raw, labels=labels)
    config = tiny_config(
        path,
        tmp_path / "t",
        augment=NO_AUGMENT,
        data={"labels_zero": "unlabelled", "min_labelled_fraction": 0.0},
    )
    _, batch = one_batch(config)
    inner = labels[8:16, 8:16, 8:16]
    # an affinity touching an unlabelled voxel (here: the voxel itself) is left out
    assert np.all(batch.affinities_mask[:, inner == 0] == 0)
    assert np.all(batch.affinities_mask[0, 1:, :, :][inner[1:] * inner[:-1] != 0] == 1)


def test_same_seed_same_batch_and_augmentation_changes_it(
    gala: Path, tmp_path: Path, tiny_config: Any
) -> None:
    config = tiny_config(gala, tmp_path / "t")
    volume = load_training_volume(config.data)
    out = output_shape(config.unet, config.input_shape_vx)
    pipeline, keys = build_pipeline(config, volume, None)
    with gp.build(pipeline):
        batches = [
            batch_arrays(
                pipeline.request_batch(
                    make_request(keys, config.input_shape_vx, out, volume.voxel_size, s)
                ),
                keys,
            )
            for s in (batch_seed(3, 0), batch_seed(3, 1), batch_seed(3, 0))
        ]
    np.testing.assert_array_equal(batches[0].raw, batches[2].raw)
    np.testing.assert_array_equal(batches[0].affinities, batches[2].affinities)
    assert not np.array_equal(batches[0].raw, batches[1].raw)
    for b in batches:
        assert b.raw.dtype == np.float32 and -1.0 <= b.raw.min() < b.raw.max() <= 1.0
        assert len(np.unique(b.raw)) > 50  # a real image, not a constant
        assert b.affinities.shape == (3, *out)
        assert set(np.unique(b.affinities)) <= {0.0, 1.0}


def test_held_out_labels_never_in_a_batch(
    tmp_path: Path, tiny_config: Any, write_h5: Any, blob_volume: Any
) -> None:
    raw, labels = blob_volume((30, 40, 80), seed=4)
    held_out = Roi(Coordinate(0, 0, 400), Coordinate(300, 400, 400))  # x >= 40 voxels
    labels[:, :, 40:] = 999_999  # a label that exists only in the held-out region
    path = write_h5(tmp_path / "v.h5", raw=raw, labels=labels)
    config = tiny_config(path, tmp_path / "t", data={"min_labelled_fraction": 0.0})
    volume = load_training_volume(config.data)
    out = output_shape(config.unet, config.input_shape_vx)
    pipeline, keys = build_pipeline(config, volume, held_out)
    with gp.build(pipeline):
        for i in range(15):
            batch = batch_arrays(
                pipeline.request_batch(
                    make_request(keys, config.input_shape_vx, out, volume.voxel_size, i)
                ),
                keys,
            )
            assert 999_999 not in batch.labels


def test_rejects_regions_without_labels(
    tmp_path: Path, tiny_config: Any, write_h5: Any, blob_volume: Any
) -> None:
    raw, labels = blob_volume((24, 24, 60), seed=5)
    labels[:, :, :40] = 0  # only x >= 40 is labelled
    path = write_h5(tmp_path / "v.h5", raw=raw, labels=labels)
    config = tiny_config(
        path,
        tmp_path / "t",
        augment=NO_AUGMENT,
        data={"min_labelled_fraction": 0.9},
    )
    volume = load_training_volume(config.data)
    out = output_shape(config.unet, config.input_shape_vx)
    pipeline, keys = build_pipeline(config, volume, None)
    with gp.build(pipeline):
        for i in range(10):
            batch = batch_arrays(
                pipeline.request_batch(
                    make_request(keys, config.input_shape_vx, out, volume.voxel_size, i)
                ),
                keys,
            )
            assert np.mean(batch.labels != 0) >= 0.9


@pytest.mark.parametrize("voxel_size,expected", [((10, 10, 10), [0, 1, 2]), ((40, 4, 4), [1, 2])])
def test_transpose_only_axes_of_equal_voxel_size(
    voxel_size: tuple[int, int, int], expected: list[int]
) -> None:
    from blockwise.train.pipeline import transpose_axes

    assert transpose_axes(Coordinate(voxel_size)) == expected
