#!/usr/bin/env bash
# Stop what launch/slurm/ci/start.sh started (slurmd, slurmctld by their pid files; munged by its pid, if that
# script started it). A cluster that start.sh found already running is left alone.
# Usage: launch/slurm/ci/stop.sh [STATE_DIR]
set -uo pipefail
state="${1:-${PFM_SLURM_DIR:-/tmp/pfm-slurm}}"
[ -f "$state/started" ] || exit 0

stop_pid() {
    local pid="$1"
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
}

if grep -q slurmctld "$state/started"; then
    for name in slurmd slurmctld; do
        [ -s "$state/$name.pid" ] && stop_pid "$(cat "$state/$name.pid")"
    done
fi
munged_pid="$(awk '$1 == "munged" {print $2}' "$state/started")"
stop_pid "$munged_pid"
rm -f "$state/started"
exit 0
