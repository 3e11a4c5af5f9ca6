"""Benchmark: U-Net forward throughput on the CPU, no_grad vs inference_mode vs torch.compile.

Two networks: the demo U-Net (the UNetConfig defaults: 12 feature maps, x5 per
level, two 2x2x2 poolings; 3.5 M parameters) and a MALA-size one (three 2x2x2
poolings; 87 M parameters). Each (network, input shape, mode) runs in a fresh
subprocess, so its peak RSS is its own; the model has random weights, batch 1.

    python tests/benchmarks/bench_unet.py [--repeats N] [--no-compile] [--compile-mala]
        [--networks demo,mala] [--demo-shapes 84,108] [--mala-shapes 100,116] [--json PATH]

Shapes are cube edges of the network input (voxels); each must be a valid input.
A mode's first call (which includes torch.compile's compilation) is reported
apart from the best of ``--repeats`` later calls; MVox/s counts output voxels.
torch.compile needs a C++ compiler; when it fails the reason is printed and the
row is skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
NETWORKS = {
    "demo": {},
    "mala": {"downsample_factors": [(2, 2, 2)] * 3},
}
MODES = ("no_grad", "inference_mode", "compile")


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one (network, shape, mode) measurement in this process."""
    import torch

    from blockwise.config import UNetConfig
    from blockwise.nn.architecture import output_shape
    from blockwise.nn.unet import build_unet, num_parameters

    unet = UNetConfig(**NETWORKS[spec["network"]])
    shape = tuple(spec["shape"])
    out = output_shape(unet, shape)
    torch.manual_seed(0)
    model = build_unet(unet, 3).eval()
    raw = torch.rand(1, 1, *shape) * 2 - 1
    result: dict[str, Any] = {
        **spec,
        "output": list(out),
        "parameters": num_parameters(model),
        "threads": torch.get_num_threads(),
        "rss_model_mb": peak_rss_mb(),
    }
    mode = spec["mode"]
    context = torch.no_grad if mode == "no_grad" else torch.inference_mode
    forward = model
    if mode == "compile":
        forward = torch.compile(model)
    try:
        with context():
            start = time.perf_counter()
            forward(raw)
            result["first_s"] = time.perf_counter() - start
            best = math.inf
            for _ in range(spec["repeats"]):
                start = time.perf_counter()
                forward(raw)
                best = min(best, time.perf_counter() - start)
    except Exception as e:  # torch.compile can fail in many ways on a CPU box
        result["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        return result
    result["best_s"] = best
    result["mvox_per_s"] = math.prod(out) / best / 1e6
    result["rss_peak_mb"] = peak_rss_mb()
    return result


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``child(spec)`` in a fresh interpreter and return its result."""
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {**spec, "error": f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}"}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=1, help="timed calls after the first")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument(
        "--compile-mala", action="store_true", help="also compile the MALA-size network (slow)"
    )
    parser.add_argument("--demo-shapes", default="84,108", help="input cube edges, voxels")
    parser.add_argument("--mala-shapes", default="100,116", help="input cube edges, voxels")
    parser.add_argument("--networks", default="demo,mala", help="which networks to run")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    plan = []
    for network, shapes in (("demo", args.demo_shapes), ("mala", args.mala_shapes)):
        if network not in args.networks.split(","):
            continue
        for i, edge in enumerate(int(e) for e in shapes.split(",")):
            for mode in MODES:
                compiled = mode == "compile"
                if compiled and (
                    args.no_compile or i > 0 or (network == "mala" and not args.compile_mala)
                ):
                    continue  # compile once per network: it costs minutes on a small CPU
                plan.append(
                    {"network": network, "shape": [edge] * 3, "mode": mode, "repeats": args.repeats}
                )

    print(
        f"{'network':>7} {'params':>7} {'input':>11} {'output':>11} {'mode':>15} "
        f"{'first s':>8} {'best s':>7} {'MVox/s':>7} {'vs no_grad':>10} {'RSS MB':>7} "
        f"{'(model)':>7}",
        flush=True,
    )
    results = []
    baseline: dict[tuple[str, int], float] = {}
    for spec in plan:
        result = run(spec)
        results.append(result)
        edge = spec["shape"][0]
        head = f"{spec['network']:>7} "
        if "parameters" in result:
            head += f"{result['parameters'] / 1e6:>6.1f}M "
        else:
            head += f"{'?':>7} "
        head += f"{'x'.join(map(str, spec['shape'])):>11} "
        head += f"{'x'.join(map(str, result.get('output', ['?']))):>11} {spec['mode']:>15} "
        if "error" in result:
            print(f"{head}skipped: {result['error']}", flush=True)
            continue
        key = (spec["network"], edge)
        if spec["mode"] == "no_grad":
            baseline[key] = result["best_s"]
        ratio = baseline[key] / result["best_s"] if key in baseline else float("nan")
        print(
            f"{head}{result['first_s']:>8.2f} {result['best_s']:>7.2f} "
            f"{result['mvox_per_s']:>7.3g} {ratio:>9.2f}x {result['rss_peak_mb']:>7.0f} "
            f"{result['rss_model_mb']:>7.0f}",
            flush=True,
        )
    threads = {r.get("threads") for r in results if "threads" in r}
    print(f"torch threads per process: {sorted(t for t in threads if t is not None)}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
