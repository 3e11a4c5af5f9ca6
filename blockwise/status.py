"""``blockwise status``: how far a run got, read without running anything.

Blocks done come from daisy's done markers (one byte per block in a zarr v3
array ``done`` inside each stage's tracking directory, keyed by the stage's
config hash, so markers of other parameters do not count); node and edge
counts come from the graph store.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from blockwise.config import RunConfig
from blockwise.failures import read_failures
from blockwise.run_context import RunContext
from blockwise.stages import active_stages
from blockwise.tasks import tracking_path


def blocks_done(tracking_dir: Path) -> int:
    """Number of blocks marked done in a daisy tracking directory (0 if none)."""
    meta_path = tracking_dir / "done" / "zarr.json"
    if not meta_path.exists():
        return 0
    meta = json.loads(meta_path.read_text())
    chunk = meta["chunk_grid"]["configuration"]["chunk_shape"]
    shape = meta["shape"]
    done = 0
    for path in (tracking_dir / "done" / "c").rglob("*"):
        if not path.is_file():
            continue
        index = [int(p) for p in path.relative_to(tracking_dir / "done" / "c").parts]
        data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
        # cells of edge chunks beyond the array's shape are padding
        extent = [min(c, s - i * c) for c, s, i in zip(chunk, shape, index, strict=True)]
        cells = data.reshape(chunk)[tuple(slice(0, e) for e in extent)]
        done += int(np.count_nonzero(cells))
    return done


def describe_status(config: RunConfig) -> str:
    """A text table of blocks done per stage and the graph store's size."""
    ctx = RunContext(config)
    lines = [f"run {config.name} in {config.run_dir}"]
    if not config.run_dir.exists():
        lines.append("not started (no run directory)")
        return "\n".join(lines)
    lines.append(f"{'stage':<18}{'blocks':>8}{'done':>8}")
    for stage in active_stages(config):
        done = blocks_done(tracking_path(ctx, stage.name))
        lines.append(f"{stage.name:<18}{stage.tiling(ctx).num_blocks:>8}{done:>8}")
    store = ctx.store
    lines.append(
        f"graph store {store.uri}: {store.count_nodes()} nodes, {store.count_edges()} edges"
    )
    failures = read_failures(config.run_dir)
    if failures:
        lines.append(f"{len(failures)} failed block(s) in the last run:")
        lines += [f"  {f.stage} block {f.block_index} {f.write_roi}: {f.error}" for f in failures]
    ctx.close()
    return "\n".join(lines)
