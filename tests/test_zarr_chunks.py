"""read_cached: zarr arrays read chunk by chunk give zarr's arrays; decoded chunks are kept
while their files are unchanged."""

from __future__ import annotations

import os
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import zarr
from funlib.geometry import Coordinate, Roi

from blockwise.errors import InputError
from blockwise.volume import Volume
from blockwise.zarr_chunks import DecodedChunks, cacheable, read_cached


def random_selections(rng: np.random.Generator, shape: tuple[int, ...], n: int) -> list:
    selections = []
    for _ in range(n):
        starts = [int(rng.integers(0, s)) for s in shape]
        stops = [int(rng.integers(a + 1, s + 1)) for a, s in zip(starts, shape, strict=True)]
        selections.append(tuple(slice(a, b) for a, b in zip(starts, stops, strict=True)))
    selections.append(tuple(slice(None) for _ in shape))
    return selections


@pytest.mark.parametrize(
    ("shape", "chunks", "dtype", "options"),
    [
        ((23, 17, 30), (8, 5, 7), np.uint64, {}),  # edge chunks on every axis, blosc
        ((3, 20, 21, 22), (3, 6, 8, 5), np.uint8, {"compressor": numcodecs.Zlib(level=1)}),
        ((2, 9, 10, 11), (1, 4, 4, 4), np.float32, {"compressor": None, "fill_value": 7.5}),
        ((12, 13, 14), (5, 5, 5), np.int32, {"filters": [numcodecs.Delta(dtype="i4")]}),
        ((12, 13, 14), (5, 6, 7), np.uint16, {"order": "F", "fill_value": 3}),
        ((10, 11, 12), (4, 4, 4), np.uint64, {"dimension_separator": "/"}),
    ],
)
def test_the_same_arrays_as_zarr_with_missing_chunks_read_as_the_fill_value(
    tmp_path: Path, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: type, options: dict
) -> None:
    rng = np.random.default_rng(len(shape) + chunks[0])
    array = zarr.open(
        str(tmp_path / "a.zarr"), mode="w", shape=shape, chunks=chunks, dtype=dtype, **options
    )
    data = (rng.random(shape) * 200).astype(dtype)
    array[...] = data
    # a few chunks without a file: zarr reads them as the fill value
    for key in sorted(k for k in os.listdir(tmp_path / "a.zarr") if not k.startswith("."))[:3]:
        path = tmp_path / "a.zarr" / key
        if path.is_file():
            path.unlink()
    array = zarr.open(str(tmp_path / "a.zarr"), mode="r")
    assert cacheable(array)
    cache = DecodedChunks(1 << 30)
    for selection in random_selections(rng, shape, 30):
        got = read_cached(array, selection, cache)
        expected = array[selection]
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert got.tobytes() == np.ascontiguousarray(expected).tobytes(), selection


def blosc_array(tmp_path: Path) -> zarr.Array:
    array = zarr.open(
        str(tmp_path / "b.zarr"), mode="w", shape=(8, 8, 8), chunks=(4, 4, 4), dtype=np.uint64
    )
    array[...] = np.arange(512, dtype=np.uint64).reshape(8, 8, 8)
    return array


def test_a_chunk_is_decoded_once_and_again_after_its_file_changes(tmp_path: Path) -> None:
    array = blosc_array(tmp_path)
    cache = DecodedChunks(1 << 30)
    whole = (slice(None),) * 3
    read_cached(array, whole, cache)
    assert cache.decoded == 8
    read_cached(array, whole, cache)
    read_cached(array, (slice(1, 3), slice(0, 8), slice(5, 7)), cache)
    assert cache.decoded == 8  # served from the cache
    # another process (here: another handle) writes a chunk: its file changes
    other = zarr.open(str(tmp_path / "b.zarr"), mode="r+")
    other[0:4, 0:4, 0:4] = 9
    got = read_cached(array, whole, cache)
    assert cache.decoded == 9
    expected = np.arange(512, dtype=np.uint64).reshape(8, 8, 8)
    expected[0:4, 0:4, 0:4] = 9
    np.testing.assert_array_equal(got, expected)
    # a chunk file removed reads as the fill value, as zarr reads it
    (tmp_path / "b.zarr" / "1.1.1").unlink()
    expected[4:, 4:, 4:] = 0
    np.testing.assert_array_equal(read_cached(array, whole, cache), expected)


def test_the_least_recently_used_chunks_go_first(tmp_path: Path) -> None:
    array = blosc_array(tmp_path)
    cache = DecodedChunks(3 * 4**3 * 8)  # three chunks
    first = (slice(0, 4), slice(0, 4), slice(0, 4))
    for z in (0, 4):
        read_cached(array, (slice(z, z + 4), slice(0, 8), slice(0, 4)), cache)
    assert cache.decoded == 4  # the first chunk was dropped to fit the fourth
    read_cached(array, first, cache)
    assert cache.decoded == 5
    tiny = DecodedChunks(100)  # smaller than a chunk: nothing is kept
    read_cached(array, first, tiny)
    read_cached(array, first, tiny)
    assert tiny.decoded == 2


def test_what_is_not_read_this_way(tmp_path: Path) -> None:
    assert not cacheable(zarr.zeros((4, 4), chunks=(2, 2)))  # in memory
    assert not cacheable(np.zeros((4, 4)))
    objects = zarr.open(
        str(tmp_path / "o.zarr"), mode="w", shape=(2,), dtype=object, object_codec=numcodecs.JSON()
    )
    assert not cacheable(objects)
    array = blosc_array(tmp_path)
    with pytest.raises(ValueError, match="one slice per axis"):
        read_cached(array, (slice(None),), DecodedChunks(1 << 20))
    with pytest.raises(ValueError, match="step of 1"):
        read_cached(array, (slice(None, None, 2),) * 3, DecodedChunks(1 << 20))


def test_volume_reads_through_the_cache_and_still_refuses_missing_chunks(tmp_path: Path) -> None:
    array = blosc_array(tmp_path)
    volume = Volume(
        tmp_path / "b.zarr",
        "",
        Coordinate(10, 10, 10),
        Roi((0, 0, 0), (80, 80, 80)),
        None,
        np.dtype(np.uint64),
        array,
    )
    roi = Roi((20, 20, 20), (40, 40, 40))
    np.testing.assert_array_equal(volume.read(roi), array[2:6, 2:6, 2:6])
    np.testing.assert_array_equal(volume.read(roi), array[2:6, 2:6, 2:6])
    assert volume._decoded_chunks.decoded == 8
    (tmp_path / "b.zarr" / "1.1.1").unlink()
    with pytest.raises(InputError, match=r"1\.1\.1 .*is missing"):
        volume.read(roi)
