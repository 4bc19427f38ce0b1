#!/usr/bin/env bash
# Stop the cluster that start.sh started (slurmd, slurmctld by their pid files; munged only if we started it).
# Usage: launch/slurm/ci/stop.sh [STATE_DIR]
set -uo pipefail
state="${1:-${PFM_SLURM_DIR:-/tmp/pfm-slurm}}"
for name in slurmd slurmctld; do
    pidfile="$state/$name.pid"
    if [ -s "$pidfile" ]; then
        pid="$(cat "$pidfile")"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    fi
done
exit 0
