"""Data-wait fraction and samples/s of a real training run, without and with prefetching, in one run.

Runs ``pfm-train`` twice with the same configuration, ``data.prefetch=false`` then ``true`` (or in the order
given by ``--order``), reads each run's ``csv/metrics.csv`` and prints, side by side, the median data-wait
fraction (time the training thread waits for the next batch / time per step), samples/s and generation
seconds per step over the steps after ``--skip`` (start-up excluded).

    python benchmarks/data_wait.py                                  # the demo, 60 steps, CPU
    python benchmarks/data_wait.py --device cuda --experiment tadpole_pretrain --steps 60
    python benchmarks/data_wait.py -- data.batch_size=8             # extra overrides after --
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COLUMNS = ("perf/data_wait_fraction", "perf/samples_per_s", "perf/generation_s_per_step")


def _run(overrides: list[str], out: Path) -> tuple[dict[str, list[float]], float]:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1"}
    cmd = [sys.executable, "-m", "pfm.train", *overrides, f"hydra.run.dir={out}"]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"pfm-train failed ({' '.join(cmd)}):\n{done.stderr[-4000:]}")
    values: dict[str, list[tuple[int, float]]] = {c: [] for c in COLUMNS}
    with open(out / "csv" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            for column in COLUMNS:
                if row.get(column):
                    values[column].append((int(row["step"]), float(row[column])))
    return {c: v for c, v in values.items()}, wall


def main() -> None:
    """Parse arguments, run both configurations, print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", default="demo")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--skip", type=int, default=10, help="steps left out of the medians (start-up)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--order", default="off,on", help="order of the runs, e.g. on,off")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides (after --)")
    args = parser.parse_args()
    accelerator = "gpu" if args.device == "cuda" else "cpu"
    base = [
        f"experiment={args.experiment}",
        f"trainer.max_steps={args.steps}",
        f"trainer.val_check_interval={args.steps}",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        f"strategy.accelerator={accelerator}",
        "logger=csv",
        "plots=false",
        f"checkpoint_every_n_steps={10 * args.steps}",
        *args.overrides,
    ]
    print(f"pfm-train {' '.join(base)}")
    print(f"load average before: {os.getloadavg()}")
    rows = {}
    with tempfile.TemporaryDirectory(prefix="pfm-data-wait-") as tmp:
        for label in args.order.split(","):
            flag = {"off": "false", "on": "true"}[label]
            values, wall = _run([*base, f"data.prefetch={flag}"], Path(tmp) / label)
            medians = {
                c: statistics.median([v for step, v in values[c] if step >= args.skip] or [float("nan")])
                for c in COLUMNS
            }
            rows[label] = (medians, wall)
            print(
                f"  prefetch {label}: done in {wall:.0f} s (load average {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    print()
    print("| prefetch | data-wait fraction | samples/s | generation s/step | run wall s |")
    print("|---|---|---|---|---|")
    for label, (m, wall) in rows.items():
        print(
            f"| {label} | {m['perf/data_wait_fraction']:.3f} | {m['perf/samples_per_s']:.2f} | "
            f"{m['perf/generation_s_per_step']:.3f} | {wall:.0f} |"
        )
    print(f"medians over steps >= {args.skip} of {args.steps}; load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
