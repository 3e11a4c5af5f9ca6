"""Tests of blockwise.synthetic: affinities derived from labels (a test input)."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from numpy.typing import NDArray
from scipy import ndimage

from blockwise.errors import InputError
from blockwise.synthetic import OFFSETS, synthesize_affinities, synthesize_affinities_file

CLEAN = {
    "blur_sigma_vx": 0.0,
    "noise_sigma": 0.0,
    "hole_fraction": 0.0,
    "bridge_fraction": 0.0,
}


def data_file(name: str) -> Path:
    """A file of the shared real-data folder; skipped if missing, failed if CI=true."""
    path = Path(os.environ.get("BLOCKWISE_DATA", "/work/shared/data")) / name
    if not path.exists():
        message = f"{path} is missing (set BLOCKWISE_DATA to the shared data folder)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def blob_labels(
    shape: tuple[int, int, int], num_cells: int, seed: int, dtype: type = np.uint64
) -> NDArray[np.integer]:
    """Voronoi cells around random seeds, ids 1..num_cells, with a few background voxels."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, dtype=np.int64)
    points = tuple(rng.integers(0, s, num_cells) for s in shape)
    seeds[points] = np.arange(1, num_cells + 1)
    _, nearest = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    labels = seeds[tuple(nearest)]
    labels[rng.random(shape) < 0.002] = 0
    return labels.astype(dtype)


def reference_true_affinities(labels: NDArray[np.integer]) -> NDArray[np.uint8]:
    """Slow, obvious true affinities; a link leaving the volume takes the interior value."""
    z, y, x = labels.shape
    affs = np.zeros((3, z, y, x), dtype=np.uint8)
    for c, offset in enumerate(OFFSETS):
        for i in range(z):
            for j in range(y):
                for k in range(x):
                    a = labels[i, j, k]
                    ni, nj, nk = i + offset[0], j + offset[1], k + offset[2]
                    b = labels[ni, nj, nk] if min(ni, nj, nk) >= 0 else a
                    affs[c, i, j, k] = 255 if (a != 0 and a == b) else 0
    return affs


def boundary_faces(labels: NDArray[np.integer], channel: int) -> NDArray[np.bool_]:
    """Links of ``channel`` (at their voxel v) whose two voxels carry different labels."""
    faces = np.zeros(labels.shape, dtype=bool)
    upper = tuple(slice(1, None) if a == channel else slice(None) for a in range(3))
    lower = tuple(slice(None, -1) if a == channel else slice(None) for a in range(3))
    faces[upper] = labels[upper] != labels[lower]
    return faces


def fib25_crop() -> NDArray[np.uint64]:
    with h5py.File(data_file("fib25_training_sample2.h5"), "r") as f:
        return np.asarray(f["labels"][93:157, 93:157, 93:157])


# --- the kernel ---------------------------------------------------------------------


def test_same_seed_gives_same_bytes_and_another_seed_differs() -> None:
    labels = blob_labels((24, 28, 32), 12, seed=1)
    first = synthesize_affinities(labels, seed=7)
    again = synthesize_affinities(labels, seed=7)
    other = synthesize_affinities(labels, seed=8)
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != other.tobytes()


@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 1, 9), (20, 17, 33)])
@pytest.mark.parametrize("dtype", [np.uint64, np.int32, np.uint8])
def test_shape_dtype_and_range(shape: tuple[int, int, int], dtype: type) -> None:
    labels = blob_labels(shape, 6, seed=2, dtype=dtype)
    affs = synthesize_affinities(labels, seed=0)
    assert affs.shape == (3, *shape)
    assert affs.dtype == np.uint8


def test_default_affinities_span_the_range() -> None:
    affs = synthesize_affinities(blob_labels((32, 32, 32), 8, seed=3), seed=0)
    assert (affs < 64).mean() > 0.02  # membranes
    assert (affs > 200).mean() > 0.5  # cell interiors
    assert 0 < len(np.unique(affs)) <= 256


@pytest.mark.parametrize("shape", [(6, 7, 8), (1, 9, 9), (10, 3, 1)])
@pytest.mark.parametrize("dtype", [np.uint64, np.int16])
def test_clean_without_membranes_equals_reference_true_affinities(
    shape: tuple[int, int, int], dtype: type
) -> None:
    labels = blob_labels(shape, 5, seed=4, dtype=dtype)
    labels[0, 0, 0] = 0
    affs = synthesize_affinities(labels, membrane_width_vx=0.0, **CLEAN)
    np.testing.assert_array_equal(affs, reference_true_affinities(labels))


def test_clean_affinities_are_true_affinities_away_from_membranes() -> None:
    labels = blob_labels((24, 26, 28), 15, seed=5)
    affs = synthesize_affinities(labels, **CLEAN)  # default membrane width 1.5
    true = reference_true_affinities(labels)
    # a voxel is near a membrane if it or a 6-neighbour lies on another label
    near = np.zeros(labels.shape, dtype=bool)
    for c in range(3):
        faces = boundary_faces(labels, c)
        near |= faces
        near |= np.roll(faces, -1, axis=c)
    near = ndimage.binary_dilation(near | (labels == 0), iterations=1)
    for c in range(3):
        np.testing.assert_array_equal(affs[c][~near], true[c][~near])
        assert np.all(affs[c][boundary_faces(labels, c)] == 0)
    assert np.all(np.isin(affs, (0, 255)))


@pytest.mark.parametrize(("width", "membrane_x"), [(1.5, (9, 10)), (3.0, (8, 9, 10, 11))])
def test_membrane_is_a_band_of_the_given_width_centred_on_the_interface(
    width: float, membrane_x: tuple[int, ...]
) -> None:
    labels = np.ones((4, 5, 20), dtype=np.uint32)
    labels[:, :, 10:] = 2  # interface between x = 9 and x = 10
    affs = synthesize_affinities(labels, membrane_width_vx=width, **CLEAN)
    is_membrane = np.isin(np.arange(20), membrane_x)
    expected = np.where(is_membrane, 0, 255)
    # channels 0 and 1 link voxels of the same x: low exactly on membrane voxels
    for c in (0, 1):
        np.testing.assert_array_equal(affs[c], np.broadcast_to(expected, labels.shape))
    # channel 2 at x links x and x - 1: low if either is membrane
    expected_x = expected.copy()
    expected_x[1:][is_membrane[:-1]] = 0
    np.testing.assert_array_equal(affs[2], np.broadcast_to(expected_x, labels.shape))


def test_holes_raise_boundary_affinities_and_bridges_lower_interior_ones() -> None:
    labels = blob_labels((32, 32, 32), 25, seed=6)
    clean = synthesize_affinities(labels, **CLEAN)
    holes = synthesize_affinities(labels, **{**CLEAN, "hole_fraction": 0.2})
    bridges = synthesize_affinities(labels, **{**CLEAN, "bridge_fraction": 0.2})
    assert np.all(holes >= clean)
    assert np.all(bridges <= clean)
    low_clean, low_holes = (clean < 128).mean(), (holes < 128).mean()
    high_clean, high_bridges = (clean >= 128).mean(), (bridges >= 128).mean()
    assert low_holes < 0.95 * low_clean
    assert high_bridges < 0.95 * high_clean


@pytest.mark.parametrize("correlation_vx", [0.0, 2.0])
def test_noise_has_the_given_sigma_and_correlation(correlation_vx: float) -> None:
    labels = np.ones((40, 40, 40), dtype=np.uint64)  # true affinity 1 everywhere
    sigma = 0.1
    affs = synthesize_affinities(
        labels, **{**CLEAN, "noise_sigma": sigma, "noise_correlation_vx": correlation_vx}
    )
    values = affs.astype(np.float64) / 255
    # zero-mean noise on 1, clipped at 1: half the values stay 1, the rest are
    # a half-normal below it with mean deficit sigma * sqrt(2 / pi)
    assert 0.4 < (affs == 255).mean() < 0.6
    deficit = 1 - values[affs < 255]
    assert deficit.mean() == pytest.approx(sigma * np.sqrt(2 / np.pi), rel=0.2)
    neighbours = np.corrcoef(values[0, :, :, :-1].ravel(), values[0, :, :, 1:].ravel())[0, 1]
    if correlation_vx > 0:
        assert neighbours > 0.7
    else:
        assert abs(neighbours) < 0.1


def test_default_settings_keep_most_boundary_faces_low_on_blobs() -> None:
    labels = blob_labels((32, 40, 48), 30, seed=9)
    affs = synthesize_affinities(labels, seed=0)
    for c in range(3):
        faces = boundary_faces(labels, c)
        assert (affs[c][faces] < 128).mean() > 0.9


def test_default_settings_keep_most_boundary_faces_low_on_fib25() -> None:
    labels = fib25_crop()
    affs = synthesize_affinities(labels, seed=0)
    for c in range(3):
        faces = boundary_faces(labels, c)
        assert faces.sum() > 1000
        assert (affs[c][faces] < 128).mean() > 0.9


def test_thresholded_fib25_affinities_give_a_plausible_number_of_pieces() -> None:
    labels = fib25_crop()
    num_bodies = len(np.unique(labels[labels != 0]))
    affs = synthesize_affinities(labels, seed=0)
    foreground = affs.mean(axis=0) > 127.5  # mean affinity > 0.5
    _, num_pieces = ndimage.label(foreground)
    assert 2 <= num_pieces <= 10 * num_bodies, (num_pieces, num_bodies)


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.ones((4, 4), dtype=np.uint64), "3D"),
        (np.ones((2, 4, 4, 4), dtype=np.uint64), "3D"),
        (np.ones((4, 4, 4), dtype=np.float32), "integer dtype"),
        (np.ones((4, 4, 4), dtype=bool), "integer dtype"),
        (np.ones((0, 4, 4), dtype=np.uint64), "non-empty"),
    ],
)
def test_bad_labels_are_rejected(labels: NDArray[np.generic], match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        synthesize_affinities(labels)  # type: ignore[arg-type]
    assert "received" in str(info.value)


@pytest.mark.parametrize(
    ("parameter", "value"),
    [
        ("membrane_width_vx", -1.0),
        ("blur_sigma_vx", float("nan")),
        ("noise_sigma", -0.1),
        ("noise_correlation_vx", float("inf")),
        ("hole_fraction", 1.5),
        ("bridge_fraction", -0.01),
        ("seed", -3),
        ("seed", 1.5),
    ],
)
def test_bad_parameters_are_rejected(parameter: str, value: float) -> None:
    labels = np.ones((4, 4, 4), dtype=np.uint64)
    with pytest.raises(ValueError, match=parameter) as info:
        synthesize_affinities(labels, **{parameter: value})
    assert "received" in str(info.value)


# --- the file function ---------------------------------------------------------------


def write_h5_labels(path: Path, labels: NDArray[np.integer], **attrs: object) -> Path:
    with h5py.File(path, "w") as f:
        dataset = f.create_dataset("volumes/labels", data=labels)
        dataset.attrs.update(attrs)
    return path


def test_file_round_trip_from_hdf5_and_zarr(tmp_path: Path) -> None:
    labels = blob_labels((20, 30, 70), 10, seed=10, dtype=np.int32)
    h5_path = write_h5_labels(
        tmp_path / "gt.h5", labels, resolution_nm=np.array([40, 4, 4]), axis_order="zyx"
    )
    out = tmp_path / "synth.zarr"
    synthesize_affinities_file(h5_path, "volumes/labels", out, seed=3)

    root = zarr.open_group(str(out), mode="r")
    affs, copied = root["affs"], root["labels"]
    np.testing.assert_array_equal(affs[...], synthesize_affinities(labels, seed=3))
    assert affs.chunks == (3, 20, 30, 64)
    assert copied.dtype == np.uint64
    np.testing.assert_array_equal(copied[...], labels)
    assert affs.attrs["resolution"] == [40, 4, 4]
    assert affs.attrs["offset"] == [0, 0, 0]
    assert affs.attrs["offsets"] == [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]
    assert "NOT a prediction" in affs.attrs["source"]
    assert copied.attrs["resolution"] == [40, 4, 4]
    assert copied.attrs["offset"] == [0, 0, 0]
    assert "ground truth" in copied.attrs["source"]

    # the written container is itself a valid zarr input, and a re-run with overwrite
    # replaces in place (without it, it is refused: tests/test_validation.py)
    again = tmp_path / "again.zarr"
    synthesize_affinities_file(out, "labels", again, seed=3)
    synthesize_affinities_file(out, "labels", again, seed=3, overwrite=True)
    np.testing.assert_array_equal(zarr.open_group(str(again), "r")["affs"][...], affs[...])
    assert zarr.open_group(str(again), "r")["affs"].attrs["resolution"] == [40, 4, 4]


@pytest.mark.parametrize("attrs", [{}, {"resolution_nm": "probably 10 nm"}, {"voxel_size": [1, 2]}])
def test_non_numeric_resolution_is_omitted(tmp_path: Path, attrs: dict[str, object]) -> None:
    h5_path = write_h5_labels(tmp_path / "gt.h5", blob_labels((8, 8, 8), 3, seed=0), **attrs)
    synthesize_affinities_file(h5_path, "volumes/labels", tmp_path / "out.zarr", seed=0)
    root = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    assert "resolution" not in root["affs"].attrs
    assert "resolution" not in root["labels"].attrs


def test_file_round_trip_on_gala_labels(tmp_path: Path) -> None:
    path = data_file("gala_fib_train.h5")
    out = tmp_path / "gala.zarr"
    synthesize_affinities_file(path, "labels", out, seed=0)
    root = zarr.open_group(str(out), mode="r")
    assert root["affs"].shape == (3, 50, 100, 200)
    assert "resolution" not in root["affs"].attrs  # the file states it as a string
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(root["labels"][...], f["labels"][...])


def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        synthesize_affinities_file(tmp_path / "nope.h5", "labels", tmp_path / "o.zarr", seed=0)


def test_missing_hdf5_dataset_is_an_input_error_naming_what_is_there(tmp_path: Path) -> None:
    h5_path = write_h5_labels(tmp_path / "gt.h5", np.ones((4, 4, 4), dtype=np.uint64))
    with pytest.raises(InputError, match=r"no dataset 'labels'.*volumes/labels"):
        synthesize_affinities_file(h5_path, "labels", tmp_path / "o.zarr", seed=0)


def test_missing_zarr_dataset_is_an_input_error(tmp_path: Path) -> None:
    root = zarr.open_group(str(tmp_path / "in.zarr"), mode="w")
    root.create_dataset("gt", data=np.ones((4, 4, 4), dtype=np.uint64))
    with pytest.raises(InputError, match=r"no dataset 'labels'.*'gt'"):
        synthesize_affinities_file(tmp_path / "in.zarr", "labels", tmp_path / "o.zarr", seed=0)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (np.ones((4, 4), dtype=np.uint64), r"shape \(4, 4\); expected a 3D"),
        (np.ones((4, 4, 4), dtype=np.float32), "expected integer labels"),
        (-np.ones((4, 4, 4), dtype=np.int64), "negative labels"),
    ],
)
def test_bad_label_files_are_input_errors(
    tmp_path: Path, data: NDArray[np.generic], match: str
) -> None:
    h5_path = write_h5_labels(tmp_path / "gt.h5", data)
    with pytest.raises(InputError, match=match):
        synthesize_affinities_file(h5_path, "volumes/labels", tmp_path / "o.zarr", seed=0)


def test_unrelated_output_path_is_not_overwritten(tmp_path: Path) -> None:
    h5_path = write_h5_labels(tmp_path / "gt.h5", np.ones((4, 4, 4), dtype=np.uint64))
    occupied = tmp_path / "mine"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a zarr container"):
        synthesize_affinities_file(h5_path, "volumes/labels", occupied, seed=0)
    assert sorted(p.name for p in occupied.iterdir()) == ["notes.txt"]


def test_cli_verb_writes_the_container(tmp_path: Path) -> None:
    from blockwise.cli import main

    h5_path = write_h5_labels(tmp_path / "gt.h5", blob_labels((8, 9, 10), 4, seed=0))
    out = tmp_path / "cli.zarr"
    args = ["synth-affinities", str(h5_path), str(out), "--labels-dataset", "volumes/labels"]
    assert main([*args, "--seed", "5"]) == 0
    affs = zarr.open_group(str(out), mode="r")["affs"]
    np.testing.assert_array_equal(
        affs[...], synthesize_affinities(blob_labels((8, 9, 10), 4, seed=0), seed=5)
    )
    assert main(["synth-affinities", str(tmp_path / "missing.h5"), str(out)]) == 2
