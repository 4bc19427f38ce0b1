"""Shared pieces of the foundation-model recipes (benchmarks/foundation/<family>.py).

Every recipe pretrains, fine-tunes ("pretrained" arm) and trains from scratch ("scratch" arm) with N training
trajectories (or chains) and several seeds, scores each model with `pfm evaluate`, and writes one table and one
plot. This module holds what they share:

- `make_parser`, `parse_args`: the common flags (--quick, --out, --seeds, --n, --threads), `--set` stays per recipe.
- `load`, `machine`: the 1/5/15-minute load averages (`uptime`) and a one-line machine description.
- `Stages`: wall time per stage (`with stages("pretrain"): ...`), the load before each, written to timing.json.
- `run_command`, `pfm_train`, `pfm_export`, `evaluate`: pfm-train / pfm export as subprocesses (the commands
  a user types, each logged to a file), `pfm evaluate` through `pfm.evaluate.evaluate_checkpoint` (the same
  code path, no interpreter start) or as a subprocess (`subprocess=True`).
- `score_rows`: the (forecaster, window) -> (mean, median, num_failed) cells of one metrics.json record.
- `Results`: every scored model as long rows (arm, N, seed, forecaster, window, mean, median, ...), written as
  results.csv / results.json, the table over seeds as table.md / table.csv (`TABLE_COLUMNS`), and
  `plot_error_vs_n`: error against N, one line per arm (mean over seeds, min-max band), baselines dashed.

The recipes run from a clone (benchmarks/ is not in the wheel) with the venv's python; import this module as
`sys.path.insert(0, str(Path(__file__).resolve().parent)); from _common import ...`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ARMS",
    "BASELINES",
    "RESULT_COLUMNS",
    "TABLE_COLUMNS",
    "Results",
    "Stages",
    "evaluate",
    "last_checkpoint",
    "load",
    "machine",
    "make_parser",
    "parse_args",
    "pfm_export",
    "pfm_train",
    "plot_error_vs_n",
    "run_command",
    "score_rows",
    "write_summary",
]

ARMS = ("pretrained", "scratch")  # the two trained arms every recipe compares
BASELINES = ("persistence", "mean")  # pfm evaluate's baseline forecasters, scored beside every model
BIN = Path(sys.executable).parent  # the venv's bin/: pfm-train and pfm live beside its python

# One row per (arm, N, seed, forecaster, window) of one scored model
RESULT_COLUMNS = (
    "arm",
    "n",
    "seed",
    "forecaster",
    "metric",
    "window",
    "mean",
    "median",
    "num_failed",
    "num_trajectories",
)
# The table: one row per (arm, N, window); arm is "pretrained", "scratch" or a baseline ("persistence", "mean").
# mean / median: over test trajectories, then averaged over seeds; seed_min / seed_max / seed_std: of the
# per-seed means; num_failed: failed rollouts summed over seeds.
TABLE_COLUMNS = (
    "arm",
    "N",
    "window",
    "seeds",
    "mean",
    "median",
    "seed_min",
    "seed_max",
    "seed_std",
    "num_failed",
)


# ------------------------------------------------------------------------------------------------- arguments
def make_parser(
    description: str,
    *,
    seeds: Sequence[int],
    quick_seeds: Sequence[int],
    n_values: Sequence[int],
    quick_n_values: Sequence[int],
) -> argparse.ArgumentParser:
    """The common flags; the recipe adds its own before calling `parse_args`."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="the CI-sized mode: fewer seeds, N values and steps"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (created; runs, table, plot)")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help=f"fine-tuning seeds (default {list(seeds)}; --quick {list(quick_seeds)})",
    )
    parser.add_argument(
        "--n",
        type=int,
        nargs="+",
        default=None,
        dest="n_values",
        help=f"training trajectories N (default {list(n_values)}; --quick {list(quick_n_values)})",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per run (default 1: on a shared machine more threads than free cores slow down)",
    )
    parser.add_argument(
        "--subprocess",
        action="store_true",
        help="run pfm-train and pfm evaluate as commands (default: through pfm's Python functions, one process)",
    )
    parser.set_defaults(
        _defaults={
            "seeds": list(seeds),
            "quick_seeds": list(quick_seeds),
            "n_values": list(n_values),
            "quick_n_values": list(quick_n_values),
        }
    )
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse `argv`, fill --seeds / --n from the mode's defaults and create --out."""
    args = parser.parse_args(argv)
    defaults = args._defaults
    if args.seeds is None:
        args.seeds = defaults["quick_seeds"] if args.quick else defaults["seeds"]
    if args.n_values is None:
        args.n_values = defaults["quick_n_values"] if args.quick else defaults["n_values"]
    del args._defaults
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def add_override_flags(parser: argparse.ArgumentParser) -> None:
    """``--pretrain-set`` and ``--finetune-set``: more pfm-train overrides of pretraining and of both arms."""
    parser.add_argument(
        "--pretrain-set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="more pfm-train overrides of pretraining",
    )
    parser.add_argument(
        "--finetune-set", nargs="*", default=[], metavar="KEY=VALUE", help="more overrides of both arms' runs"
    )


def with_flags(sizes: Mapping[str, Any], args: argparse.Namespace, keys: Sequence[str]) -> dict[str, Any]:
    """``sizes`` with each of ``keys`` replaced by its command-line flag where one was given."""
    given = {key: getattr(args, key) for key in keys if getattr(args, key) is not None}
    return {**sizes, **given}


# ------------------------------------------------------------------------------------------- load and timing
def load() -> tuple[float, float, float]:
    """The 1, 5 and 15-minute load averages, as `uptime` prints them (Linux /proc/loadavg)."""
    with open("/proc/loadavg") as f:
        one, five, fifteen = (float(v) for v in f.read().split()[:3])
    return one, five, fifteen


def machine() -> str:
    """One line: CPU count, memory, platform (and the torch version when importable)."""
    try:
        with open("/proc/meminfo") as f:
            mem_gib = int(f.readline().split()[1]) / 2**20
    except OSError:
        mem_gib = float("nan")
    line = f"{os.cpu_count()} CPUs, {mem_gib:.0f} GiB, {platform.platform()}"
    with contextlib.suppress(ImportError):
        import torch

        line += f", torch {torch.__version__}" + (", CUDA" if torch.cuda.is_available() else ", no GPU")
    return line


@dataclass
class Stages:
    """Wall time and load per named stage of a recipe; `write` saves them as JSON."""

    stages: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        """Time the block as stage `name`, recording the load before and after it."""
        before, start = load(), time.perf_counter()
        try:
            yield
        finally:
            self.stages.append(
                {
                    "stage": name,
                    "wall_s": round(time.perf_counter() - start, 2),
                    "load_before": before,
                    "load_after": load(),
                }
            )
            print(
                f"[{name}] {self.stages[-1]['wall_s']:.1f} s, load {before[0]:.1f} -> {load()[0]:.1f}",
                flush=True,
            )

    @property
    def total_s(self) -> float:
        """Seconds since this object was made."""
        return time.time() - self.started

    def write(self, path: Path, **extra: Any) -> dict[str, Any]:
        """Write {stages, total_s, machine, load_end, **extra} to `path`; returns it."""
        record = {
            "total_s": round(self.total_s, 1),
            "machine": machine(),
            "load_end": load(),
            "stages": self.stages,
            **extra,
        }
        path.write_text(json.dumps(record, indent=2) + "\n")
        return record


# ------------------------------------------------------------------------------------------- running pfm
def run_command(
    cmd: Sequence[str],
    log: Path,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> None:
    """Run `cmd`, its stdout and stderr into `log` (the command on the first line); raise with the log's tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **(env or {})}
    with open(log, "w") as f:
        f.write("$ " + shlex.join(map(str, cmd)) + "\n")
        f.flush()
        proc = subprocess.run(
            list(map(str, cmd)),
            cwd=cwd,
            env=full_env,
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    if proc.returncode:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        raise RuntimeError(f"{shlex.join(map(str, cmd))} exited {proc.returncode}; the end of {log}:\n{tail}")


def last_checkpoint(run_dir: Path) -> Path:
    """The run's `checkpoints/last.ckpt` (pfm-train's final checkpoint)."""
    path = Path(run_dir) / "checkpoints" / "last.ckpt"
    if not path.exists():
        found = sorted(p.name for p in (Path(run_dir) / "checkpoints").glob("*")) if run_dir.exists() else []
        raise FileNotFoundError(f"{path} is missing; the run's checkpoints folder holds {found}.")
    return path


def pfm_train(
    overrides: Sequence[str],
    run_dir: Path,
    *,
    threads: int | None = None,
    timeout: float | None = None,
    in_process: bool = False,
) -> Path:
    """`pfm-train *overrides hydra.run.dir=run_dir` (log: run_dir/train.log); returns its last.ckpt.

    As a subprocess (the command a user types), or with `in_process` through `pfm.train.run` on the config
    Hydra composes from the same overrides (no interpreter start: about 15 s less a run on a loaded 2-core
    machine). `threads` sets OMP_NUM_THREADS (subprocess) or `torch.set_num_threads` (in process).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if in_process:
        _train_in_process(list(overrides), run_dir, threads)
        return last_checkpoint(run_dir)
    env = {"OMP_NUM_THREADS": str(threads)} if threads else None
    cmd = [BIN / "pfm-train", *overrides, f"hydra.run.dir={run_dir}"]
    run_command(cmd, run_dir / "train.log", cwd=run_dir, env=env, timeout=timeout)
    return last_checkpoint(run_dir)


def _train_in_process(overrides: list[str], run_dir: Path, threads: int | None) -> None:
    """pfm-train's `run` on the composed config, `${hydra:runtime.output_dir}` = run_dir, logs to train.log."""
    import logging
    from contextlib import redirect_stderr, redirect_stdout

    import torch
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from pfm.build import CONF_DIR
    from pfm.train import run

    if threads:
        torch.set_num_threads(threads)
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"hydra.run.dir={run_dir}"], return_hydra_config=True)
    cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    (run_dir / "overrides.txt").write_text(
        "pfm-train " + shlex.join([*overrides, f"hydra.run.dir={run_dir}"])
    )
    root = logging.getLogger()
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        with open(run_dir / "train.out", "w") as f, redirect_stdout(f), redirect_stderr(f):
            run(cfg, run_dir)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()
        GlobalHydra.instance().clear()


def pfm_export(checkpoint: Path, out: Path, *, in_process: bool = False) -> Path:
    """`pfm export CHECKPOINT --out OUT` (log beside OUT); returns OUT.

    With `in_process`, the command's function `pfm.checkpoints.export_checkpoint` in this process.
    """
    out = Path(out)
    if in_process:
        from pfm.checkpoints import export_checkpoint

        export_checkpoint(checkpoint, out)
        out.with_name(out.name + ".log").write_text(f"pfm export {checkpoint} --out {out} (in process)\n")
        return out
    run_command([BIN / "pfm", "export", checkpoint, "--out", out], out.with_name(out.name + ".log"))
    return out


def evaluate(
    checkpoint: Path, out: Path, overrides: Sequence[str] = (), *, as_command: bool = False, **options: Any
) -> dict[str, Any]:
    """`pfm evaluate CHECKPOINT *overrides --out OUT` with `options` as its flags; returns metrics.json's record.

    In this process through `pfm.evaluate.evaluate_checkpoint` by default, or as the `pfm evaluate` command
    (`as_command=True`, log beside OUT). Either way the record is what OUT/metrics.json holds.
    """
    out = Path(out)
    if as_command:
        flags = []
        for key, value in options.items():
            if value is not None:
                flags += [f"--{key.replace('_', '-')}", str(value)]
        run_command(
            [BIN / "pfm", "evaluate", checkpoint, *overrides, "--out", out, *flags],
            out.with_name(out.name + ".log"),
        )
        return json.loads((out / "metrics.json").read_text())
    from contextlib import redirect_stdout

    from pfm.evaluate import evaluate_checkpoint

    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(out.name + ".log"), "w") as f, redirect_stdout(f):
        return evaluate_checkpoint(checkpoint, out, list(overrides), **options)


def score_rows(
    record: dict[str, Any], metric: str = "vrmse", field: str = "all", source: str = "all"
) -> dict[tuple[str, str], dict[str, Any]]:
    """{(forecaster, window): {mean, median, num_failed, num_trajectories}} of one `pfm evaluate` record."""
    cells = {}
    for row in record["rows"]:
        if (row["metric"], row["field"], row["source"]) == (metric, field, source):
            cells[row["model"], row["window"]] = {
                key: row.get(key) for key in ("mean", "median", "num_failed", "num_trajectories")
            }
    if not cells:
        raise ValueError(f"the record has no rows of metric={metric!r}, field={field!r}, source={source!r}.")
    return cells


# ---------------------------------------------------------------------------------------------------- results
def _number(value: Any) -> float:
    """None (pfm evaluate's non-finite median) -> inf; numbers as float."""
    return math.inf if value is None else float(value)


@dataclass
class Results:
    """Every scored model as long rows; the table over seeds; the plot against N."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(
        self,
        arm: str,
        n: int,
        seed: int,
        record: dict[str, Any],
        metric: str = "vrmse",
        baselines: bool = True,
    ) -> None:
        """Add one `pfm evaluate` record: the model's rows as `arm`, and (if `baselines`) its baselines' rows."""
        for (forecaster, window), cell in score_rows(record, metric).items():
            if forecaster == "model":
                name = arm
            elif baselines and forecaster in BASELINES:
                name = forecaster  # the same test data for both arms: kept once per (N, seed, window)
                if any(
                    (r["arm"], r["n"], r["seed"], r["window"]) == (name, n, seed, window) for r in self.rows
                ):
                    continue
            else:
                continue
            self.rows.append(
                {
                    "arm": name,
                    "n": n,
                    "seed": seed,
                    "forecaster": forecaster,
                    "metric": metric,
                    "window": window,
                    **cell,
                }
            )

    @property
    def windows(self) -> list[str]:
        """The windows in the order first seen."""
        return list(dict.fromkeys(row["window"] for row in self.rows))

    def table(self) -> list[dict[str, Any]]:
        """One row per (arm, N, window): `TABLE_COLUMNS`, over seeds (baselines: one value per N and seed)."""
        groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
        for row in self.rows:
            groups.setdefault((row["arm"], row["n"], row["window"]), []).append(row)
        order = {arm: i for i, arm in enumerate((*ARMS, *BASELINES))}
        windows = {w: i for i, w in enumerate(self.windows)}
        out = []
        for (arm, n, window), rows in sorted(
            groups.items(), key=lambda kv: (windows[kv[0][2]], kv[0][1], order.get(kv[0][0], 99), kv[0][0])
        ):
            means = [_number(r["mean"]) for r in rows]
            medians = [_number(r["median"]) for r in rows]
            out.append(
                {
                    "arm": arm,
                    "N": n,
                    "window": window,
                    "seeds": len(rows),
                    "mean": statistics.fmean(means),
                    "median": statistics.fmean(medians),
                    "seed_min": min(means),
                    "seed_max": max(means),
                    "seed_std": statistics.stdev(means) if len(means) > 1 else 0.0,
                    "num_failed": sum(int(r["num_failed"] or 0) for r in rows),
                }
            )
        return out

    def markdown(self, metric: str = "VRMSE") -> str:
        """The table as markdown: a header and one line per (window, N, arm)."""
        head = (
            f"| arm | N | window | seeds | {metric} mean | {metric} median | seed min | seed max | seed std "
            "| failed |\n|---|---|---|---|---|---|---|---|---|---|\n"
        )
        body = "".join(
            f"| {r['arm']} | {r['N']} | {r['window']} | {r['seeds']} | {r['mean']:.4f} | {r['median']:.4f} | "
            f"{r['seed_min']:.4f} | {r['seed_max']:.4f} | {r['seed_std']:.4f} | {r['num_failed']} |\n"
            for r in self.table()
        )
        return head + body

    def write(self, out: Path, metric: str = "VRMSE") -> None:
        """results.csv / results.json (long rows), table.csv and table.md (over seeds) into `out`."""
        out = Path(out)
        with open(out / "results.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)
        (out / "results.json").write_text(json.dumps(self.rows, indent=1) + "\n")
        with open(out / "table.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=TABLE_COLUMNS)
            writer.writeheader()
            writer.writerows(self.table())
        (out / "table.md").write_text(self.markdown(metric))


def plot_error_vs_n(
    results: Results,
    path: Path,
    *,
    windows: Sequence[str] | None = None,
    title: str = "",
    metric: str = "VRMSE",
    xlabel: str = "training trajectories N",
    panel_title: str = "steps {window}",
    styles: dict[str, tuple[str | None, str, str | None]] | None = None,
    yscale: str = "linear",
) -> Path:
    """Error against N: one panel per window, a line per arm (mean over seeds, min-max band), baselines dashed.

    ``panel_title`` is formatted with ``window`` (recipes whose "windows" are other metrics name them so);
    ``styles`` adds or replaces (color, line, marker) per arm; ``yscale="log"`` when the errors span decades
    (e.g. the mean baseline at 1 beside models at 0.02).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = results.table()
    windows = list(windows or results.windows)
    fig, axes = plt.subplots(1, len(windows), figsize=(4.2 * len(windows), 3.6), squeeze=False)
    styles = {
        "pretrained": ("C0", "-", "o"),
        "scratch": ("C3", "-", "s"),
        "persistence": ("0.4", "--", None),
        "mean": ("0.7", ":", None),
    } | dict(styles or {})
    for ax, window in zip(axes[0], windows, strict=True):
        for arm in dict.fromkeys(r["arm"] for r in table):
            rows = sorted(
                (r for r in table if r["arm"] == arm and r["window"] == window), key=lambda r: r["N"]
            )
            if not rows:
                continue
            color, line, marker = styles.get(arm, (None, "-", "^"))
            ns = [r["N"] for r in rows]
            label = f"{arm} (seeds: {max(r['seeds'] for r in rows)})" if arm in ARMS else arm
            ax.plot(ns, [r["mean"] for r in rows], line, color=color, marker=marker, label=label)
            if arm not in BASELINES:
                ax.fill_between(
                    ns,
                    [r["seed_min"] for r in rows],
                    [r["seed_max"] for r in rows],
                    color=color,
                    alpha=0.2,
                    linewidth=0,
                )
        ax.set_xscale("log", base=2)
        ax.set_yscale(yscale)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{metric} (mean over test trajectories)")
        ax.set_title(panel_title.format(window=window))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_summary(
    out: Path,
    results: Results,
    stages: Stages,
    *,
    command: str,
    extra: dict[str, Any] | None = None,
    metric: str = "VRMSE",
) -> dict[str, Any]:
    """table.md/csv, results.*, timing.json and summary.md (command, machine, load, wall time, table).

    ``metric`` names the values in the markdown tables' header.
    """
    results.write(out, metric)
    timing = stages.write(out / "timing.json", command=command, **(extra or {}))
    summary = (
        f"command: `{command}`\n\nmachine: {timing['machine']}\n\nwall time: {timing['total_s']:.0f} s; "
        f"load at the start / end: {stages.stages[0]['load_before'] if stages.stages else '-'} / "
        f"{timing['load_end']}\n\n" + results.markdown(metric)
    )
    (out / "summary.md").write_text(summary)
    return timing
