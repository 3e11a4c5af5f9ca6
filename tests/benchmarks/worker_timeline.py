"""How busy a run's workers were: per worker, its blocks, busy time and idle gaps.

Reads a run's ``summary.json`` (``blockwise run`` writes it into the run
directory; ``bench_run_e2e.py --work DIR`` keeps them under
``DIR/<method>/``) and prints, per worker process, how many blocks it ran,
when its first block started and its last ended (seconds since the run
started), the seconds it spent inside blocks, and every gap between two of
its blocks longer than ``--gap`` seconds with the stages on either side. A
run whose workers are busy nearly from the first block to the last is
bound by its blocks' compute; long gaps point at scheduling (a stage
waiting for the one before, or a worker starting).

Not collected by pytest; run as

    python tests/benchmarks/worker_timeline.py RUN_DIR/summary.json [--gap 0.02]
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections import defaultdict
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summary", type=Path, help="a run's summary.json")
    parser.add_argument("--gap", type=float, default=0.02, help="report gaps above this (s)")
    args = parser.parse_args()
    summary = json.loads(args.summary.read_text())
    by_worker: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for block in summary["blocks"]:
        by_worker[block["worker"]].append(block)
    print(f"run wall {summary['wall_s']:.2f} s, {len(by_worker)} workers")
    for worker, blocks in sorted(by_worker.items()):
        blocks.sort(key=lambda b: b["start_s"])
        busy = sum(b["end_s"] - b["start_s"] for b in blocks)
        first, last = blocks[0]["start_s"], blocks[-1]["end_s"]
        print(
            f"{worker}: {len(blocks)} blocks, first starts {first:.2f} s, last ends "
            f"{last:.2f} s, busy {busy:.2f} s of those {last - first:.2f} s"
        )
        for before, after in itertools.pairwise(blocks):
            gap = after["start_s"] - before["end_s"]
            if gap > args.gap:
                print(
                    f"  idle {gap:.3f} s at {before['end_s']:.2f} s "
                    f"({before['stage']} -> {after['stage']})"
                )
    print("stages (first block starts / last ends, s):")
    for stage in summary["stages"]:
        if stage["start_s"] is not None:
            print(f"  {stage['name']:<20}{stage['start_s']:8.2f}{stage['end_s']:8.2f}")


if __name__ == "__main__":
    main()
