"""OME-Zarr multiscales metadata: scale and translation per level, read back by ome-zarr."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader

from blockwise.downsample import write_pyramid
from blockwise.errors import InputError
from blockwise.ngff import level_transform, read_multiscales, write_multiscales


def test_level_transform_formula() -> None:
    scale, translation = level_transform(0, (10, 4, 4), (100, 200, 300), (1, 2, 2))
    assert scale == [10, 4, 4] and translation == [100, 200, 300]
    scale, translation = level_transform(3, (10, 4, 4), (100, 200, 300), (1, 2, 2))
    assert scale == [10, 32, 32]
    assert translation == [100, 200 + 3.5 * 4, 300 + 3.5 * 4]


@pytest.mark.parametrize("factor", [(2, 2, 2), (1, 2, 2), (3, 3, 3)])
def test_levels_overlay_at_voxel_centres(factor) -> None:
    """The centre of coarse voxel 0 is the mean of the centres of the fine voxels it covers."""
    vs, offset = (8, 4, 6), (16, -40, 12)
    for k in range(1, 4):
        coarse_scale, coarse_t = level_transform(k, vs, offset, factor)
        fine_scale, fine_t = level_transform(k - 1, vs, offset, factor)
        for axis in range(3):
            fine_centres = [fine_t[axis] + i * fine_scale[axis] for i in range(factor[axis])]
            assert coarse_t[axis] == pytest.approx(np.mean(fine_centres))
            assert coarse_scale[axis] == fine_scale[axis] * factor[axis]


def read_with_ome_zarr(path: Path) -> tuple[list, list, list]:
    nodes = list(Reader(parse_url(str(path)))())
    image = nodes[0]
    transforms = image.metadata["coordinateTransformations"]
    scales = [next(t["scale"] for t in level if t["type"] == "scale") for level in transforms]
    translations = [
        next(t["translation"] for t in level if t["type"] == "translation") for level in transforms
    ]
    return scales, translations, [np.asarray(d) for d in image.data]


@pytest.mark.parametrize(
    ("kind", "factor"), [("raw", (2, 2, 2)), ("affs", (1, 2, 2)), ("labels", (2, 2, 2))]
)
def test_written_pyramid_read_back_by_ome_zarr(tmp_path: Path, kind: str, factor) -> None:
    rng = np.random.default_rng(0)
    vs, offset = (10, 4, 4), (1000, 400, 800)
    if kind == "affs":
        data, method = rng.integers(0, 256, size=(3, 16, 32, 32), dtype=np.uint8), "mean"
    elif kind == "labels":
        data, method = rng.integers(0, 9, size=(32, 32, 32)).astype(np.uint64), "mode"
    else:
        data, method = rng.integers(0, 256, size=(32, 32, 32), dtype=np.uint8), "mean"
    root = zarr.open_group(str(tmp_path / "p.zarr"), mode="w")
    levels = write_pyramid(root, kind, data, vs, offset, method, factor, (8, 8, 8))
    assert len(levels) == 3
    scales, translations, arrays = read_with_ome_zarr(tmp_path / "p.zarr" / kind)
    assert len(scales) == len(levels)
    channel = [1.0] if kind == "affs" else []
    zero = [0.0] if kind == "affs" else []
    for k, level in enumerate(levels):
        scale, translation = level_transform(k, vs, offset, factor)
        assert scales[k] == channel + scale
        assert translations[k] == zero + translation
        assert scales[k][-3:] == list(level.voxel_size)
        assert np.array_equal(arrays[k], level.array[...])
    attrs = root[kind].attrs["multiscales"][0]
    assert attrs["version"] == "0.4"
    assert [a["name"] for a in attrs["axes"]] == (["c"] if kind == "affs" else []) + ["z", "y", "x"]
    assert all(a.get("unit") == "nanometer" for a in attrs["axes"] if a["type"] == "space")
    # our reader inverts the convention back to funlib offsets
    for k, level in enumerate(read_multiscales(tmp_path / "p.zarr" / kind)):
        assert level.path == f"s{k}"
        assert level.offset == pytest.approx(offset)
        assert level.voxel_size == levels[k].voxel_size
        assert root[f"{kind}/s{k}"].attrs["offset"] == list(offset)
        assert root[f"{kind}/s{k}"].attrs["resolution"] == list(levels[k].voxel_size)


def test_flat_chunk_keys_refused(tmp_path: Path) -> None:
    root = zarr.open_group(str(tmp_path / "p.zarr"), mode="w")
    root.create_dataset("img/s0", shape=(4, 4, 4), chunks=(2, 2, 2), dtype=np.uint8)
    with pytest.raises(InputError, match=r"img/s0 .*separated by '\.'.*NGFF 0.4 needs '/'"):
        write_multiscales(root["img"], (1, 1, 1), (0, 0, 0), 1, (2, 2, 2))


def test_read_multiscales_errors(tmp_path: Path) -> None:
    root = zarr.open_group(str(tmp_path / "p.zarr"), mode="w")
    root.create_group("plain")
    with pytest.raises(InputError, match="no 'multiscales'"):
        read_multiscales(root["plain"])
    with pytest.raises(InputError, match="not a zarr group"):
        read_multiscales(tmp_path / "missing.zarr")
