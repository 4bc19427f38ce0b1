"""Timing helpers shared by the benchmark scripts: one timing loop, one subprocess-per-configuration runner.

Public names:
- `time_calls`: wall and CPU (process) seconds of each of `steps` calls after `warmup` untimed ones.
- `run_worker`: run `python <script> --worker <json config>` in a fresh process, return its last line as JSON.
- `rss_mib`, `peak_rss_mib`: current and peak resident set size of this process (Linux).

A fresh process per configuration keeps each one's peak memory its own. CPU time (all threads of the process)
is reported beside wall time because other processes' load disturbs it much less on a shared machine.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any


def rss_mib() -> float:
    """Current resident set size of this process in MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (`ru_maxrss` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_calls(
    call: Callable[[], Any], steps: int, warmup: int, sync: Callable[[], None] = lambda: None
) -> tuple[list[float], list[float]]:
    """Run `call` `warmup` times untimed, then `steps` times timed; return (wall seconds, CPU seconds) per call.

    `sync` runs before each timer read (e.g. `torch.cuda.synchronize`), so queued device work is counted.
    """
    for _ in range(warmup):
        call()
    walls, cpus = [], []
    for _ in range(steps):
        sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        call()
        sync()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu_start)
    return walls, cpus


def run_worker(script: str, config: dict[str, Any]) -> dict[str, Any]:
    """`python script --worker '<config as JSON>'` in a fresh process; its last stdout line, parsed as JSON."""
    out = subprocess.run(
        [sys.executable, script, "--worker", json.dumps(config)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])
