"""Benchmark: distance_transform against scipy's distance_transform_edt, and fragments.

Runs on the interior mask of the evaluation half (z >= 125) of the FIB-25
predicted affinities (mean affinity over channels > 0.5), the mask whose
distances :func:`blockwise.fragments.fragments_from_affinities` measures:

    python tests/benchmarks/bench_distance.py [--data DIR] [--repeats N]

DIR defaults to $BLOCKWISE_DATA, else ../shared/data from the repository root.

Every measurement runs in a fresh subprocess that loads the inputs, resets its
peak RSS (``/proc/self/clear_refs``, Linux) and then runs the method: "peak MB"
is the peak RSS above the RSS after loading, "traced MB" the peak of Python's
tracemalloc (numpy's allocations) in a separate call; seconds are the best of
``--repeats`` calls. ``fragments_from_affinities`` runs once with this kernel and
once with scipy's transform patched in (the code before the kernel), and the
parent process checks that both give identical distances and fragments.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import os
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from blockwise import fragments
from blockwise.kernels.distance import distance_transform

REPO = Path(__file__).resolve().parents[2]
VOXEL_SIZE = (10, 10, 10)
SAMPLINGS = {"10,10,10": (10, 10, 10), "40,4,4": (40, 4, 4)}
FRAGMENT_CASES = {"3D seeds": False, "seeds per section": True}


def load_affs(data: Path) -> NDArray[np.float32]:
    with h5py.File(data / "fib25_baseline_affs.h5", "r") as f:
        return f["affs"][:, 125:].astype(np.float32) / np.float32(255)


def interior_mask(affs: NDArray[np.float32]) -> NDArray[np.bool_]:
    return affs.mean(axis=0, dtype=np.float32) > np.float32(0.5)


def scipy_boundary_distance_nm(
    interior: NDArray[np.bool_], voxel_nm: tuple[float, ...], per_section: bool
) -> NDArray[np.float64]:
    """``blockwise.fragments._boundary_distance_nm`` as it was with scipy's transform."""
    if not per_section:
        return scipy_distance_nm(interior, voxel_nm)
    depth_nm = np.empty(interior.shape, dtype=np.float64)
    for z in range(interior.shape[0]):
        depth_nm[z] = scipy_distance_nm(interior[z], voxel_nm[1:])
    return depth_nm


def scipy_distance_nm(
    interior: NDArray[np.bool_], voxel_nm: tuple[float, ...]
) -> NDArray[np.float64]:
    if interior.all():
        diagonal_nm = math.hypot(*(n * s for n, s in zip(interior.shape, voxel_nm, strict=True)))
        return np.full(interior.shape, diagonal_nm, dtype=np.float64)
    return ndimage.distance_transform_edt(interior, sampling=voxel_nm)


def with_scipy_distances(function: Callable[[], object]) -> object:
    """Call ``function`` with fragments' distances from scipy (float64, as before)."""
    kernel = fragments._boundary_distance_nm
    fragments._boundary_distance_nm = scipy_boundary_distance_nm  # type: ignore[assignment]
    try:
        return function()
    finally:
        fragments._boundary_distance_nm = kernel


def memory_kb() -> dict[str, int]:
    """VmRSS and VmHWM (peak) of this process in kB; empty where /proc is missing."""
    try:
        with open("/proc/self/status") as status:
            lines = [line.split() for line in status if line.startswith(("VmRSS", "VmHWM"))]
    except OSError:
        return {}
    return {fields[0].rstrip(":"): int(fields[1]) for fields in lines}


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def child(method: str, case: str, data: Path, repeats: int) -> None:
    """Measure one method in this (fresh) process and print a JSON line."""
    affs = load_affs(data)
    call: Callable[[], object]
    if method in ("ours", "scipy"):
        mask = interior_mask(affs)
        del affs
        sampling = SAMPLINGS[case]
        if method == "ours":

            def call() -> object:
                return distance_transform(mask, sampling)
        else:

            def call() -> object:
                return ndimage.distance_transform_edt(mask, sampling=sampling)
    else:
        per_section = FRAGMENT_CASES[case]

        def extract() -> object:
            return fragments.fragments_from_affinities(
                affs, VOXEL_SIZE, seeds_per_section=per_section
            )

        if method == "fragments-ours":
            call = extract
        else:

            def call() -> object:
                return with_scipy_distances(extract)

    gc.collect()
    has_peak = reset_peak_rss()
    before = memory_kb()
    best = float("inf")
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
        gc.collect()
    after = memory_kb()
    peak_mb = (after["VmHWM"] - before["VmRSS"]) / 1024 if has_peak and after else math.nan
    tracemalloc.start()
    call()
    traced_mb = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    print(json.dumps({"seconds": best, "peak_mb": peak_mb, "traced_mb": traced_mb}))


def measure(method: str, case: str, data: Path, repeats: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", method, case, "--data", str(data)]
    command += ["--repeats", str(repeats)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def check_distances(mask: NDArray[np.bool_]) -> None:
    for name, sampling in SAMPLINGS.items():
        ours = distance_transform(mask, sampling)
        theirs = ndimage.distance_transform_edt(mask, sampling=sampling).astype(np.float32)
        differ = int((ours != theirs).sum())
        print(f"  sampling {name}: {differ} voxels differ from scipy's float64 cast to float32")


def check_fragments(affs: NDArray[np.float32]) -> None:
    """Distances, surface order and fragments with the kernel and with scipy."""
    interior = interior_mask(affs)
    voxel_nm = tuple(float(s) for s in VOXEL_SIZE)
    for case, per_section in FRAGMENT_CASES.items():
        depth_ours = fragments._boundary_distance_nm(interior, voxel_nm, per_section)
        depth_scipy = scipy_boundary_distance_nm(interior, voxel_nm, per_section)
        same_depth = np.array_equal(depth_ours, depth_scipy.astype(np.float32))
        # the flood sees only the order of the surface values, ties included
        surfaces = []
        for depth in (depth_ours, depth_scipy):
            surface = np.zeros(interior.shape, dtype=np.float32)
            surface[interior] = -depth[interior] / float(depth.max())
            surfaces.append(np.unique(surface, return_inverse=True)[1])
        same_order = np.array_equal(surfaces[0], surfaces[1])
        ours, n_ours = fragments.fragments_from_affinities(
            affs, VOXEL_SIZE, seeds_per_section=per_section
        )
        result = with_scipy_distances(
            functools.partial(
                fragments.fragments_from_affinities,
                affs,
                VOXEL_SIZE,
                seeds_per_section=per_section,
            )
        )
        assert isinstance(result, tuple)
        theirs, n_theirs = result
        differ = int((ours != theirs).sum())
        print(
            f"  {case}: distances == float32(scipy): {same_depth}; interior surface order "
            f"and ties identical: {same_order}; fragments {n_ours} vs {n_theirs}, "
            f"{differ} voxels differ"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = os.environ.get("BLOCKWISE_DATA", str(REPO.parent / "shared" / "data"))
    parser.add_argument("--data", type=Path, default=Path(default_data))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, case = args.child
        child(method, case, args.data, args.repeats)
        return

    affs = load_affs(args.data)
    mask = interior_mask(affs)
    mvox = mask.size / 1e6
    print(
        f"FIB-25 eval half: mask {mask.shape}, {mvox:.2f} MVox, {mask.mean():.1%} interior; "
        f"best of {args.repeats}; peak = RSS above the loaded inputs, one process per row"
    )
    header = f"{'':<40}{'seconds':>9}{'MVox/s':>9}{'peak MB':>9}{'B/vox':>7}{'traced MB':>10}"
    print(header)
    rows = [("ours", "scipy", case) for case in SAMPLINGS]
    rows += [("fragments-ours", "fragments-scipy", case) for case in FRAGMENT_CASES]
    for ours_method, scipy_method, case in rows:
        results = {}
        for method in (ours_method, scipy_method):
            result = measure(method, case, args.data, args.repeats)
            results[method] = result
            name = f"{method} ({case})"
            bytes_per_voxel = result["peak_mb"] * 2**20 / mask.size
            print(
                f"{name:<40}{result['seconds']:>9.3f}{mvox / result['seconds']:>9.2f}"
                f"{result['peak_mb']:>9.1f}{bytes_per_voxel:>7.1f}{result['traced_mb']:>10.1f}"
            )
        speed_up = results[scipy_method]["seconds"] / results[ours_method]["seconds"]
        print(f"{'  speed-up':<40}{speed_up:>8.2f}x")

    print("equality checks:")
    check_distances(mask)
    check_fragments(affs)


if __name__ == "__main__":
    main()
