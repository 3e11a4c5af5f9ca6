"""read_deflate: deflate-compressed HDF5 chunks inflated by ISA-L give h5py's arrays."""

from __future__ import annotations

import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from funlib.geometry import Coordinate, Roi

from blockwise.config import DatasetConfig
from blockwise.hdf5_chunks import deflate_only, read_deflate
from blockwise.volume import open_volume

from datafiles import require_data


def random_selections(rng: np.random.Generator, shape: tuple[int, ...], n: int) -> list:
    selections = []
    for _ in range(n):
        starts = [int(rng.integers(0, s)) for s in shape]
        stops = [int(rng.integers(a + 1, s + 1)) for a, s in zip(starts, shape, strict=True)]
        selections.append(tuple(slice(a, b) for a, b in zip(starts, stops, strict=True)))
    selections.append(tuple(slice(None) for _ in shape))
    return selections


@pytest.mark.parametrize(
    ("shape", "chunks", "dtype", "fill"),
    [
        ((23, 17, 30), (8, 5, 7), np.uint8, 0),  # edge chunks on every axis
        ((3, 20, 21, 22), (3, 6, 8, 5), np.float32, 0.0),  # channels, as affinities
        ((2, 9, 10, 11), (1, 4, 4, 4), np.uint64, 7),  # channels split across chunks
        ((12, 12, 12), (12, 12, 12), np.int16, -3),  # one chunk
    ],
)
def test_the_same_arrays_as_h5py_with_unallocated_chunks_read_as_the_fill_value(
    tmp_path: Path, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: type, fill: float
) -> None:
    rng = np.random.default_rng(len(shape) + chunks[-1])
    data = (rng.random(shape) * 200).astype(dtype)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        dataset = f.create_dataset(
            "a", shape=shape, chunks=chunks, dtype=dtype, compression="gzip", fillvalue=fill
        )
        # leave the chunks of one corner unwritten: they read as the fill value
        written = tuple(slice(s // 2, None) for s in shape)
        dataset[written] = data[written]
    with h5py.File(tmp_path / "a.h5", "r") as f:
        dataset = f["a"]
        assert deflate_only(dataset)
        for selection in random_selections(rng, shape, 60):
            np.testing.assert_array_equal(read_deflate(dataset, selection), dataset[selection])


def test_a_chunk_stored_with_its_filter_skipped_is_taken_as_stored(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "a.h5", "w") as f:
        dataset = f.create_dataset(
            "a", shape=(8, 8), chunks=(4, 4), dtype=np.uint8, compression="gzip"
        )
        dataset[...] = np.arange(64, dtype=np.uint8).reshape(8, 8)
        raw = np.full((4, 4), 9, dtype=np.uint8)
        dataset.id.write_direct_chunk((4, 4), raw.tobytes(), filter_mask=1)
        compressed = zlib.compress(np.full((4, 4), 5, dtype=np.uint8).tobytes())
        dataset.id.write_direct_chunk((0, 4), compressed, filter_mask=0)
    with h5py.File(tmp_path / "a.h5", "r") as f:
        dataset = f["a"]
        whole = read_deflate(dataset, (slice(None), slice(None)))
        np.testing.assert_array_equal(whole, dataset[...])
        assert (whole[4:, 4:] == 9).all() and (whole[:4, 4:] == 5).all()


def test_only_datasets_with_deflate_alone_and_native_numbers_are_read_here(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "a.h5", "w") as f:
        kinds = {
            "gzip": dict(chunks=(4, 4), compression="gzip"),
            "gzip_shuffle": dict(chunks=(4, 4), compression="gzip", shuffle=True),
            "gzip_fletcher": dict(chunks=(4, 4), compression="gzip", fletcher32=True),
            "lzf": dict(chunks=(4, 4), compression="lzf"),
            "chunked_plain": dict(chunks=(4, 4)),
            "contiguous": {},
        }
        for name, options in kinds.items():
            f.create_dataset(name, data=np.ones((8, 8), np.uint8), **options)
        f.create_dataset(
            "big_endian", data=np.ones((8, 8), ">u2"), chunks=(4, 4), compression="gzip"
        )
        found = {name: deflate_only(f[name]) for name in [*kinds, "big_endian"]}
    assert found == {
        "gzip": True,
        "gzip_shuffle": False,
        "gzip_fletcher": False,
        "lzf": False,
        "chunked_plain": False,
        "contiguous": False,
        "big_endian": False,
    }


def test_a_step_or_a_wrong_number_of_slices_is_refused(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "a.h5", "w") as f:
        dataset = f.create_dataset(
            "a", data=np.ones((8, 8), np.uint8), chunks=(4, 4), compression="gzip"
        )
        with pytest.raises(ValueError, match="one slice per axis"):
            read_deflate(dataset, (slice(None),))
        with pytest.raises(ValueError, match="a step of 1"):
            read_deflate(dataset, (slice(None), slice(0, 8, 2)))


def test_fib25_affinities_read_through_a_volume_equal_h5py() -> None:
    path = require_data("fib25_baseline_affs.h5")
    volume = open_volume(DatasetConfig(file=str(path), dataset="affs"))
    assert volume._inflates_chunks  # gzip-6 chunks of (3, 64, 64, 64)
    rng = np.random.default_rng(0)
    with h5py.File(path, "r") as f:
        reference = f["affs"]
        for selection in random_selections(rng, tuple(reference.shape[1:]), 6):
            begin = Coordinate(
                s.indices(n)[0] for s, n in zip(selection, reference.shape[1:], strict=True)
            )
            end = Coordinate(
                s.indices(n)[1] for s, n in zip(selection, reference.shape[1:], strict=True)
            )
            roi = Roi(
                volume.roi.begin + begin * volume.voxel_size, (end - begin) * volume.voxel_size
            )
            np.testing.assert_array_equal(volume.read(roi), reference[(slice(None), *selection)])


def test_the_cache_inflates_each_chunk_once_within_its_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from blockwise import hdf5_chunks

    inflated: list[int] = []
    real = hdf5_chunks.isal_zlib.decompress

    def counting(data: bytes) -> bytes:
        inflated.append(len(data))
        return real(data)

    monkeypatch.setattr(hdf5_chunks.isal_zlib, "decompress", counting)
    data = np.arange(16 * 16 * 16, dtype=np.uint16).reshape(16, 16, 16)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("a", data=data, chunks=(8, 8, 8), compression="gzip")
    with h5py.File(tmp_path / "a.h5", "r") as f:
        dataset = f["a"]
        chunk_bytes = 8 * 8 * 8 * 2
        cache = hdf5_chunks.ChunkCache(3 * chunk_bytes)  # room for three of the eight
        first = (slice(0, 8), slice(0, 8), slice(0, 16))  # two chunks
        np.testing.assert_array_equal(read_deflate(dataset, first, cache), data[first])
        np.testing.assert_array_equal(read_deflate(dataset, first, cache), data[first])
        assert len(inflated) == 2  # the second read came from the cache
        whole = (slice(None),) * 3
        np.testing.assert_array_equal(read_deflate(dataset, whole, cache), data)
        assert len(inflated) == 2 + 6  # only the six chunks not kept
        # the budget held: the two first chunks were dropped (least recently used)
        np.testing.assert_array_equal(read_deflate(dataset, first, cache), data[first])
        assert len(inflated) == 2 + 6 + 2
