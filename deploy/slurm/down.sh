#!/usr/bin/env bash
# Stop the single-node SLURM that deploy/slurm/up.sh started, by its PID files
# (never by process name). Idempotent: missing or stale PID files are skipped.
# A daemon that ignores SIGTERM for 10 s gets SIGKILL.
for f in /run/slurmd.pid /run/slurmctld.pid /run/slurmdbd.pid /run/blockwise-mariadbd.pid \
  /run/munge/munged.pid; do
  [ -s "$f" ] || continue
  pid=$(cat "$f")
  if kill "$pid" 2>/dev/null; then
    stopped=0
    for _ in $(seq 100); do
      if ! kill -0 "$pid" 2>/dev/null; then stopped=1; break; fi
      sleep 0.1
    done
    [ "$stopped" = 1 ] || kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
done
exit 0
