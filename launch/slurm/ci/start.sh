#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine for pfm's tests: munged, slurmctld, slurmd.
# Usage: launch/slurm/ci/start.sh [STATE_DIR]   (default /tmp/pfm-slurm; needs root, as CI has)
# Writes STATE_DIR/slurm.conf from slurm.conf.in for this host and prints `export SLURM_CONF=...
# PFM_SLURM_STARTED=1` (0 when a cluster started from STATE_DIR was already up: it is reused, not restarted).
# Installs Debian's slurm-wlm and munge first if they are missing (PFM_SLURM_INSTALL=0 to forbid that).
# Exits non-zero, with the daemons' log tails, if the cluster does not answer `srun hostname` in time.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
state="${1:-${PFM_SLURM_DIR:-/tmp/pfm-slurm}}"

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    if [ "${PFM_SLURM_INSTALL:-1}" != 1 ]; then
        echo "start.sh: slurmctld or munged missing and PFM_SLURM_INSTALL=0" >&2; exit 1
    fi
    if ! command -v apt-get >/dev/null; then
        echo "start.sh: slurmctld or munged missing and there is no apt-get to install them" >&2; exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq slurm-wlm munge >/dev/null
fi

mkdir -p "$state/state" "$state/spool"
# already up (an earlier start.sh with the same folder): reuse it, and leave stopping it to whoever started it
if [ -s "$state/slurmctld.pid" ] && kill -0 "$(cat "$state/slurmctld.pid")" 2>/dev/null \
        && SLURM_CONF="$state/slurm.conf" sinfo -h -o %T 2>/dev/null | grep -q -E '^(idle|mix|alloc)'; then
    echo "export SLURM_CONF=$state/slurm.conf PFM_SLURM_STARTED=0"
    exit 0
fi
: > "$state/started"  # what this script started, for stop.sh
host="$(hostname -s)"
cpus="$(nproc)"
# ports away from the defaults (6817/6818), so a real cluster on the same machine is not disturbed
sed -e "s|@HOST@|$host|g" -e "s|@CPUS@|$cpus|g" -e "s|@STATE@|$state|g" \
    -e "s|@CTLD_PORT@|${PFM_SLURMCTLD_PORT:-16817}|g" -e "s|@SLURMD_PORT@|${PFM_SLURMD_PORT:-16818}|g" \
    "$here/slurm.conf.in" > "$state/slurm.conf.tmp"
mv "$state/slurm.conf.tmp" "$state/slurm.conf"
export SLURM_CONF="$state/slurm.conf"

# munge: the key comes with the package; its socket dir may not survive a reboot or a fresh container
if ! munge -n >/dev/null 2>&1; then
    mkdir -p /run/munge && chown munge:munge /run/munge && chmod 0755 /run/munge
    if [ ! -s /etc/munge/munge.key ]; then
        (umask 077; dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null)
        chown munge:munge /etc/munge/munge.key
    fi
    runuser -u munge -- /usr/sbin/munged
    sleep 0.5
    echo "munged $(cat /run/munge/munged.pid 2>/dev/null || pgrep -n -x munged)" >> "$state/started"
fi
munge -n | unmunge >/dev/null

# -c: a clean start (no jobs left from an earlier CI run)
/usr/sbin/slurmctld -c -f "$SLURM_CONF"
/usr/sbin/slurmd -f "$SLURM_CONF"
echo "slurmctld slurmd" >> "$state/started"

for _ in $(seq 1 60); do
    if sinfo -h -o %T 2>/dev/null | grep -q -E '^idle'; then
        if timeout 30 srun -N1 -n1 hostname >/dev/null 2>&1; then
            echo "export SLURM_CONF=$SLURM_CONF PFM_SLURM_STARTED=1"
            exit 0
        fi
    fi
    sleep 1
done
echo "start.sh: the one-node cluster did not come up; see $state/slurmctld.log and $state/slurmd.log" >&2
tail -n 20 "$state/slurmctld.log" "$state/slurmd.log" >&2 || true
exit 1
