#!/bin/bash
# Run a FIB-25 config into a fresh run directory, then score every threshold it
# wrote on the training half (z < 125, where a threshold is chosen) and on the
# held-out half (z >= 125): the main job's table in the README.
#
#   BLOCKWISE_DATA=../shared/data bash tests/benchmarks/score_halves.sh CONFIG WORK_DIR
#
# CONFIG: e.g. configs/fib25_from_raw.yaml; WORK_DIR: a new folder (removed first)
# that receives the config, the run directory, the evaluations and run.err
# (/usr/bin/time -v of the run: wall time and peak RSS).
set -euo pipefail
CONFIG=$1
WORK=$2
: "${BLOCKWISE_DATA:?set BLOCKWISE_DATA to the shared data folder}"
BIN=$(dirname "$(readlink -f "$0")")/../../.venv/bin
rm -rf "$WORK" && mkdir -p "$WORK"
WORK=$(readlink -f "$WORK")
sed -e "s|^run_dir: .*|run_dir: $WORK/run|" "$CONFIG" > "$WORK/config.yaml"
/usr/bin/time -v "$BIN/blockwise" run "$WORK/config.yaml" --no-progress > "$WORK/run.log" 2> "$WORK/run.err"
GT="$BLOCKWISE_DATA/fib25_training_sample2.h5:labels"
for name in $(ls "$WORK/run/output.zarr/segmentation"); do
  for half in train eval; do
    if [ $half = train ]; then ROI="0 0 0 1250 2500 2500"; else ROI="1250 0 0 1250 2500 2500"; fi
    "$BIN/blockwise" evaluate "$WORK/run/output.zarr:segmentation/$name" "$GT" --roi $ROI \
      --out "$WORK/$half/$name" > /dev/null
  done
done
"$BIN/python" - "$WORK" <<'PY'
import json
import sys
from pathlib import Path

work = Path(sys.argv[1])
rows: dict[str, dict[str, tuple[float, float, float]]] = {}
for half in ("train", "eval"):
    for d in sorted((work / half).iterdir()):
        r = json.loads((d / "evaluation.json").read_text())
        res = r["results"][0] if "results" in r else r
        rows.setdefault(d.name, {})[half] = (res["voi_split"], res["voi_merge"], res["arand"])
best = min(rows, key=lambda t: sum(rows[t]["train"][:2]))
for t, v in rows.items():
    tr, ev = v["train"], v["eval"]
    print(
        f"{t}: z < 125 VOI {tr[0]:.3f}+{tr[1]:.3f}={tr[0] + tr[1]:.3f} ARAND {tr[2]:.3f} | "
        f"z >= 125 VOI {ev[0]:.3f}+{ev[1]:.3f}={ev[0] + ev[1]:.3f} ARAND {ev[2]:.3f}"
        + ("  <- chosen on z < 125" if t == best else "")
    )
PY
grep -E "Elapsed|Maximum resident" "$WORK/run.err"
