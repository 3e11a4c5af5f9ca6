"""Benchmark: the predict stage vs a plain torch loop over tiles, with the same network.

Both predict uint8 affinities for one raw volume into a zarr array:

* ours: the ``predict`` stage of ``blockwise`` under the real daisy scheduler
  with ``--workers`` worker processes (model loaded once per worker, batches,
  reads and writes overlapping the forward pass, chunks aligned with blocks);
* plain: what a lab script does: read the raw, loop over output tiles of the
  same shape one at a time (no batching, no overlap), forward, write.

Networks: ``demo`` (the architecture of the shipped FIB-25 checkpoint, random
weights) and ``mala`` (num_fmaps 12, fmap_inc_factor 5, three (2,2,2)
levels and wider kernels: the MALA paper's size, ~80 M parameters). Raw is the
FIB-25 cube (``fib25_training_sample2.h5``), tiled to ``--size`` voxels per axis.
Each method runs in a fresh subprocess so its peak RSS is its own. Prints
output MVox/s, the ratio, and peak RSS; the paper's figure (2.6 s per MVox end
to end, i.e. 0.38 MVox/s for the whole pipeline) is printed for comparison.

    python tests/benchmarks/bench_predict.py [--network demo|mala] [--size 128]
        [--device cpu|cuda] [--precision fp32 bf16 fp16] [--batch-size 1 4]
        [--compile] [--workers 1] [--input 108]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import zarr

DATA = Path(
    os.environ.get("BLOCKWISE_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")
)
NETWORKS: dict[str, dict[str, Any]] = {
    # the shipped FIB-25 checkpoint's architecture (configs/fib25_from_raw.yaml)
    "demo": {"num_fmaps": 12, "fmap_inc_factor": 3, "downsample_factors": [[2, 2, 2], [2, 2, 2]]},
    "mala": {
        "num_fmaps": 12,
        "fmap_inc_factor": 5,
        "downsample_factors": [[2, 2, 2], [2, 2, 2], [2, 2, 2]],
        "kernel_size": [3, 3, 3],
        "num_conv_passes": 2,
    },
}


def make_raw(path: Path, size: int) -> Path:
    with h5py.File(DATA / "fib25_training_sample2.h5", "r") as f:
        cube = f["raw"][:]
    reps = -(-size // cube.shape[0])
    raw = np.tile(cube, (reps, reps, reps))[:size, :size, :size]
    array = zarr.open_group(str(path), mode="w").create_dataset(
        "raw", data=raw, chunks=(64, 64, 64)
    )
    array.attrs["resolution"] = [10, 10, 10]
    return path


def child(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from blockwise.config import UNetConfig, parse_config
    from blockwise.nn.architecture import context_vx, normalize_raw, output_shape
    from blockwise.nn.checkpoint import save_checkpoint
    from blockwise.nn.unet import build_unet, num_parameters

    unet = UNetConfig(**NETWORKS[spec["network"]])
    work = Path(spec["work"])
    checkpoint = work / f"{spec['network']}.pt"
    offsets = [(-1, 0, 0), (0, -1, 0), (0, 0, -1)]
    if not checkpoint.exists():
        torch.manual_seed(0)
        save_checkpoint(checkpoint, build_unet(unet, 3), unet, offsets, iteration=0)
    inp = [spec["input"]] * 3
    out = output_shape(unet, inp)
    raw_path = work / "raw.zarr"
    start = time.perf_counter()
    if spec["method"] == "plain":
        device = torch.device(spec["device"])
        model = build_unet(unet, 3).to(device)
        model.load_state_dict(torch.load(checkpoint)["model_state"])
        model.eval()
        raw = zarr.open_group(str(raw_path), mode="r")["raw"][:]
        c = context_vx(unet)
        padded = np.pad(raw, [(x, x + o) for x, o in zip(c, out, strict=True)], mode="reflect")
        result = zarr.open_group(str(work / "plain.zarr"), mode="w").create_dataset(
            "affs", shape=(3, *raw.shape), chunks=(3, *out), dtype=np.uint8
        )
        with torch.no_grad():
            for z in range(0, raw.shape[0], out[0]):
                for y in range(0, raw.shape[1], out[1]):
                    for x in range(0, raw.shape[2], out[2]):
                        tile = padded[z : z + inp[0], y : y + inp[1], x : x + inp[2]]
                        t = torch.from_numpy(normalize_raw(tile))[None, None].to(device)
                        a = model(t)[0].cpu().numpy()
                        a = a[:, : raw.shape[0] - z, : raw.shape[1] - y, : raw.shape[2] - x]
                        result[:, z : z + a.shape[1], y : y + a.shape[2], x : x + a.shape[3]] = (
                            np.clip(np.rint(a * 255), 0, 255).astype(np.uint8)
                        )
        params = num_parameters(model)
    else:
        import daisy.v2 as daisy

        from blockwise.execution.local import LocalProfile
        from blockwise.runner import prepare
        from blockwise.stages import get_stage
        from blockwise.tasks import build_pipeline

        cfg = parse_config(
            {
                "name": "bench_predict",
                "run_dir": str(work / f"run_{spec['tag']}"),
                "inputs": {"raw": {"file": str(raw_path), "dataset": "raw"}},
                "predict": {
                    "checkpoint": str(checkpoint),
                    "unet": unet.model_dump(mode="json"),
                    "input_shape_vx": inp,
                    "tiles_per_block": [spec["tiles"]] * 3,
                    "batch_size": spec["batch_size"],
                    "device": spec["device"],
                    "precision": spec["precision"],
                    "compile": spec["compile"],
                },
                "extract_fragments": {"block_shape_vx": [32, 32, 32]},
                "output": {"chunk_shape_vx": [32, 32, 32]},
                "execution": {"num_workers": spec["workers"]},
            }
        )
        ctx, _ = prepare(cfg)
        profile = LocalProfile(ctx.layout.config_path)
        pipeline = build_pipeline(ctx, [get_stage("predict")], profile)
        ok = daisy.run_blockwise(pipeline, host="127.0.0.1", progress=False, summary=False)
        if not ok:
            raise RuntimeError("predict blocks failed")
        params = sum(p.numel() for p in build_unet(unet, 3).parameters())
    seconds = time.perf_counter() - start
    voxels = zarr.open_group(str(raw_path), mode="r")["raw"].size
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "seconds": seconds,
        "mvox_per_s": voxels / 1e6 / seconds,
        "peak_rss_mib": max(own, children) / 1024,
        "parameters": params,
        "output_tile": list(out),
    }


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child")
    parser.add_argument("--network", default="demo", choices=sorted(NETWORKS))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--input", type=int, default=108)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", nargs="+", default=["fp32"])
    parser.add_argument("--batch-size", nargs="+", type=int, default=[1])
    parser.add_argument("--tiles", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_raw(work / "raw.zarr", args.size)
        base = {
            "work": str(work),
            "network": args.network,
            "input": args.input,
            "device": args.device,
            "workers": args.workers,
            "tiles": args.tiles,
        }
        plain = run_child({**base, "method": "plain", "tag": "plain"})
        print(
            f"{args.network} ({plain['parameters'] / 1e6:.1f} M parameters), {args.size}^3 "
            f"voxels, input {args.input}^3 -> output {plain['output_tile']}, {args.device}"
        )
        print(
            f"  plain torch loop (fp32, batch 1): {plain['mvox_per_s']:.3f} MVox/s, "
            f"{plain['seconds']:.1f} s, peak RSS {plain['peak_rss_mib']:.0f} MiB"
        )
        compile_modes = [False, True] if args.compile else [False]
        for precision in args.precision:
            for batch in args.batch_size:
                for compiled in compile_modes:
                    tag = f"{precision}_b{batch}_{'c' if compiled else 'e'}"
                    ours = run_child(
                        {
                            **base,
                            "method": "ours",
                            "tag": tag,
                            "precision": precision,
                            "batch_size": batch,
                            "compile": compiled,
                        }
                    )
                    ratio = ours["mvox_per_s"] / plain["mvox_per_s"]
                    print(
                        f"  blockwise predict ({precision}, batch {batch}, "
                        f"compile {compiled}, {args.workers} worker(s)): "
                        f"{ours['mvox_per_s']:.3f} MVox/s ({ratio:.2f}x "
                        f"the plain loop), {ours['seconds']:.1f} s, peak RSS "
                        f"{ours['peak_rss_mib']:.0f} MiB"
                    )
        print("  MALA paper, whole pipeline: 2.6 s/MVox = 0.385 MVox/s")


if __name__ == "__main__":
    main()
