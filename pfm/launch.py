"""``pfm launch slurm``: compose a run's config, render an sbatch script into its run folder, submit it.

The config is composed here first (Hydra's compose API, the same ``conf/`` as ``pfm-train``), so an unknown
key, a bad choice or a strategy that cannot run the asked-for number of processes fails before anything is
queued. The script is rendered from ``launch/slurm/job.sbatch.j2`` into ``<run>/slurm/job.sbatch``: the job
can be resubmitted by hand with ``sbatch`` and that file. One task per GPU (``srun``); ``--gpus-per-node 0``
with ``--tasks-per-node N`` starts N CPU processes per node instead (gloo), which is how the tests run it.

Inside the job, Lightning's ``SLURMEnvironment`` reads ranks, world size and the master address from SLURM
(:mod:`pfm.distributed.cluster`); ``resume=auto`` is the default, so a requeued job continues from its
newest checkpoint (:mod:`pfm.callbacks.preemption`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from pfm.config_check import check_config, moved_override_problems
from pfm.distributed.catalog import STRATEGIES
from pfm.distributed.trainer_switches import merge_trainer_switches
from pfm.io import atomic_path
from pfm.paths import CONF_DIR, LAUNCH_DIR

__all__ = ["LAUNCH_DIR", "SlurmJob", "add_parser", "compose_run", "render_sbatch", "submit"]

# Keys pfm launch sets from its own options; an explicit override of one must agree with them (a trainer.*
# twin must too: the composed config's merge_trainer_switches refuses a different value).
_OWNED = ("strategy.devices", "strategy.num_nodes", "strategy.accelerator")


class LaunchError(ValueError):
    """A launch request that cannot work; the message names the values and the fix."""


@dataclass
class SlurmJob:
    """What ``pfm launch slurm`` asks SLURM for, and where the job's files go."""

    run_dir: Path
    overrides: list[str]
    nodes: int = 1
    gpus_per_node: int = 1
    tasks_per_node: int = 1
    time: str | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    setup: list[str] = field(default_factory=list)
    container: str | None = None
    signal_seconds: int = 300
    job_name: str = "pfm"
    python: str = sys.executable
    workdir: Path = field(default_factory=Path.cwd)
    sbatch_args: list[str] = field(default_factory=list)

    @property
    def script_path(self) -> Path:
        """``<run>/slurm/job.sbatch``."""
        return self.run_dir / "slurm" / "job.sbatch"

    @property
    def log_pattern(self) -> Path:
        """Where SLURM writes the job's output (``%j``: job id; requeued runs append to the same file)."""
        return self.run_dir / "slurm" / "%j.out"


def _split(override: str) -> tuple[str, str] | None:
    key, sep, value = override.partition("=")
    return (key.lstrip("+~"), value) if sep else None


def _explicit(overrides: list[str]) -> dict[str, str]:
    return {kv[0]: kv[1] for kv in map(_split, overrides) if kv is not None}


# SLURM's --time formats (sbatch(1)): minutes, minutes:seconds, hours:minutes:seconds, days-hours,
# days-hours:minutes, days-hours:minutes:seconds; "infinite"/"unlimited" where the partition allows it
_SLURM_TIME = re.compile(
    r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+|\d+-\d+:\d{1,2}|\d+-\d+:\d{1,2}:\d{1,2})$"
)


def check_slurm_time(text: str) -> str:
    """``text`` if it is a time limit sbatch accepts, else a LaunchError naming it, the formats and an example."""
    if text.lower() in ("infinite", "unlimited") or (
        _SLURM_TIME.match(text) and any(c != "0" for c in text if c.isdigit())
    ):
        return text
    raise LaunchError(
        f"--time {text!r} is not a SLURM time limit; expected minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or "
        "D-HH:MM:SS (not zero). Fix: e.g. --time 24:00:00 or --time 1-12:00:00."
    )


def _counts(args: argparse.Namespace) -> tuple[int, str, int]:
    """(tasks per node, accelerator, gpus per node) from the command line, or a LaunchError."""
    if args.nodes < 1:
        raise LaunchError(f"--nodes {args.nodes}: expected an integer >= 1. Fix: e.g. --nodes 2.")
    if args.gpus_per_node < 0:
        raise LaunchError(
            f"--gpus-per-node {args.gpus_per_node}: expected an integer >= 0 (0: CPU processes). "
            "Fix: e.g. --gpus-per-node 4."
        )
    if args.cpus_per_task is not None and args.cpus_per_task < 1:
        raise LaunchError(
            f"--cpus-per-task {args.cpus_per_task}: expected an integer >= 1. Fix: e.g. --cpus-per-task 8."
        )
    if args.time is not None:
        check_slurm_time(args.time)
    if args.gpus_per_node == 0:
        tasks = 1 if args.tasks_per_node is None else args.tasks_per_node
        if tasks < 1:
            raise LaunchError(
                f"--tasks-per-node {tasks}: expected an integer >= 1. Fix: e.g. --tasks-per-node 2."
            )
        return tasks, "cpu", 0
    if args.tasks_per_node not in (None, args.gpus_per_node):
        raise LaunchError(
            f"--tasks-per-node {args.tasks_per_node} disagrees with --gpus-per-node {args.gpus_per_node}: "
            "pfm runs one task per GPU; drop --tasks-per-node (it is for --gpus-per-node 0, CPU processes)."
        )
    return args.gpus_per_node, "gpu", args.gpus_per_node


def _check_owned(explicit: dict[str, str], wanted: dict[str, str]) -> None:
    flags = {
        "strategy.devices": "--gpus-per-node (or --tasks-per-node with --gpus-per-node 0)",
        "strategy.num_nodes": "--nodes",
        "strategy.accelerator": "--gpus-per-node (0: cpu, else gpu)",
    }
    for key in _OWNED:
        if key in explicit and explicit[key] != "auto" and explicit[key] != wanted[key]:
            raise LaunchError(
                f"{key}={explicit[key]} (an override) disagrees with {key}={wanted[key]} from "
                f"{flags[key]}: pfm launch sets {key} from {flags[key]}; drop the override or change the flag."
            )


def compose_run(overrides: list[str], config_dir: Path = CONF_DIR) -> DictConfig:
    """Compose ``conf/train.yaml`` with ``overrides`` (and the hydra node); a LaunchError names what is wrong."""
    try:
        # Hydra would only say that a renamed key is not in the config
        if moved := moved_override_problems(overrides):
            raise ValueError(" ".join(moved))
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
        # resolve now: a broken interpolation fails here, not on the cluster (${hydra:...} needs the node set)
        with open_dict(cfg):
            # what Hydra sets when the job starts; loggers' save_dir and the like interpolate it
            cfg.hydra.runtime.output_dir = str(cfg.hydra.run.dir)
        HydraConfig.instance().set_config(cfg)
        OmegaConf.to_container(_job_part(cfg), resolve=True)
        merge_trainer_switches(cfg)  # as pfm-train does first: trainer.precision etc. are strategy.*
        # the checks pfm-train runs first (keys, types, ranges); init_from may live only on the cluster
        check_config(cfg, [key for key in cfg if key not in ("hydra", "init_from")])
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        raise LaunchError(
            f"the run's config does not compose, so nothing was submitted: {err}\n"
            f"Check it with `pfm-train --cfg job {' '.join(shlex.quote(o) for o in overrides)}`."
        ) from err
    return cfg


def _job_part(cfg: DictConfig) -> DictConfig:
    """``cfg`` without the ``hydra`` node: what the job itself is configured with."""
    part = cfg.copy()
    with open_dict(part):
        part.pop("hydra", None)
    return part


def _check_strategy(cfg: DictConfig, num_tasks: int) -> None:
    strategy = cfg.get("strategy") or {}
    name = strategy.get("name", "single")
    if name not in STRATEGIES:
        raise LaunchError(f"strategy.name={name!r} is unknown; expected one of {', '.join(STRATEGIES)}.")
    if num_tasks > 1 and not STRATEGIES[name].multi_process:
        multi = [n for n, k in STRATEGIES.items() if k.multi_process]
        raise LaunchError(
            f"strategy={name} runs one process, but the job has {num_tasks} tasks; pick a multi-process "
            f"strategy ({', '.join(multi)}), e.g. strategy=ddp."
        )


def _searchpath(config_dir: Path, explicit: dict[str, str]) -> str:
    """The override that adds the user's config folder for the compose here and in the job (absolute path)."""
    folder = Path(config_dir).expanduser().resolve()
    if not folder.is_dir():
        raise LaunchError(
            f"--config-dir {config_dir}: no such folder; expected your config folder (with experiment/, "
            "data/, model/ ... files beside pfm's groups)."
        )
    if "hydra.searchpath" in explicit:
        raise LaunchError(
            "--config-dir and hydra.searchpath=... both add config folders; give one "
            f"(--config-dir {config_dir} is hydra.searchpath=[file://{folder}])."
        )
    # what pfm-train's --config-dir does: the folder is searched after pfm's own configs
    return f"hydra.searchpath=[file://{folder}]"


def _default_run_dir() -> Path:
    now = dt.datetime.now()
    return Path("outputs") / "slurm" / now.strftime("%Y-%m-%d") / now.strftime("%H-%M-%S")


def render_sbatch(job: SlurmJob, template: Path | None = None) -> str:
    """The sbatch script for ``job``, from ``launch/slurm/job.sbatch.j2`` (or ``template``)."""
    template = template or LAUNCH_DIR / "slurm" / "job.sbatch.j2"
    if not template.is_file():
        raise LaunchError(
            f"sbatch template {template} is missing; it ships inside pfm (pfm.launch_files): reinstall pfm, "
            "or unset PFM_LAUNCH_DIR / point it at a folder with slurm/job.sbatch.j2."
        )
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    train = [job.python if job.container is None else "python", "-m", "pfm.train", *job.overrides]
    return env.from_string(template.read_text()).render(
        job=job,
        train_command=" ".join(shlex.quote(a) for a in train),
        quote=shlex.quote,
        created=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        argv=" ".join(["pfm", *(shlex.quote(a) for a in sys.argv[1:])]),
    )


def submit(script: Path, sbatch: str = "sbatch") -> str:
    """``sbatch --parsable script``; returns the job id, or raises with sbatch's own message."""
    if shutil.which(sbatch) is None:
        raise LaunchError(
            f"`{sbatch}` is not on PATH: this machine is not a SLURM login node. Copy {script} to one and "
            "run `sbatch` there, or use --dry-run here."
        )
    result = subprocess.run([sbatch, "--parsable", str(script)], capture_output=True, text=True)
    if result.returncode != 0:
        raise LaunchError(f"sbatch {script} failed (exit {result.returncode}): {result.stderr.strip()}")
    return result.stdout.strip().split(";")[0]


def build_job(args: argparse.Namespace) -> tuple[SlurmJob, DictConfig]:
    """Check the request, compose the config and describe the job; raises LaunchError on any mistake."""
    tasks, accelerator, gpus = _counts(args)
    overrides = list(args.overrides)
    explicit = _explicit(overrides)
    wanted = {
        "strategy.devices": str(tasks),
        "strategy.num_nodes": str(args.nodes),
        "strategy.accelerator": accelerator,
    }
    _check_owned(explicit, wanted)
    run_dir = Path(explicit.get("hydra.run.dir") or _default_run_dir()).expanduser().resolve()
    final = [o for o in overrides if (kv := _split(o)) is None or kv[0] not in (*_OWNED, "hydra.run.dir")]
    final += [f"{k}={v}" for k, v in wanted.items()]
    if args.config_dir is not None:
        final.append(_searchpath(args.config_dir, explicit))
    if "resume" not in explicit:
        final.append("resume=auto")  # a requeued job continues from its newest checkpoint
    final.append(f"hydra.run.dir={run_dir}")
    cfg = compose_run(final)
    _check_strategy(cfg, tasks * args.nodes)
    if args.signal_seconds < 0:
        raise LaunchError(
            f"--signal-seconds {args.signal_seconds}: expected >= 0 (seconds before the limit)."
        )
    job = SlurmJob(
        run_dir=run_dir,
        overrides=final,
        nodes=args.nodes,
        gpus_per_node=gpus,
        tasks_per_node=tasks,
        time=args.time,
        partition=args.partition,
        account=args.account,
        qos=args.qos,
        constraint=args.constraint,
        cpus_per_task=args.cpus_per_task,
        mem=args.mem,
        setup=list(args.setup or []),
        container=args.container,
        signal_seconds=args.signal_seconds,
        job_name=args.job_name or f"pfm-{run_dir.name}",
        sbatch_args=list(args.sbatch_arg or []),
    )
    return job, cfg


def _launch_slurm(args: argparse.Namespace) -> int:
    try:
        job, cfg = build_job(args)
        script = render_sbatch(job)
    except LaunchError as err:
        print(f"pfm launch slurm: {err}", file=sys.stderr)
        return 2
    run_cfg = OmegaConf.to_yaml(_job_part(cfg))
    if args.dry_run:
        print(f"# --- {job.script_path} (dry run: nothing written, nothing submitted) ---")
        print(script, end="")
        print("# --- composed config (what the job will run) ---")
        print(run_cfg, end="")
        return 0
    with atomic_path(job.script_path) as tmp:
        tmp.write_text(script)
    os.chmod(job.script_path, 0o755)
    with atomic_path(job.run_dir / "slurm" / "config.yaml") as tmp:
        tmp.write_text(run_cfg)
    try:
        job_id = submit(job.script_path)
    except LaunchError as err:
        print(f"pfm launch slurm: {err}", file=sys.stderr)
        return 1
    ids = job.run_dir / "slurm" / "job_ids"
    previous = ids.read_text() if ids.exists() else ""
    with atomic_path(ids) as tmp:
        tmp.write_text(previous + f"{job_id}\n")
    print(f"Submitted job {job_id}")
    print(f"  run folder: {job.run_dir}")
    print(f"  script:     {job.script_path}  (resubmit by hand: sbatch {job.script_path})")
    print(f"  log:        {str(job.log_pattern).replace('%j', job_id)}")
    print(f"  follow:     squeue -j {job_id}; tail -f {str(job.log_pattern).replace('%j', job_id)}")
    return 0


def add_parser(sub: Any) -> None:
    """Add ``pfm launch slurm`` to the ``pfm`` command."""
    launch = sub.add_parser("launch")
    kinds = launch.add_subparsers(dest="launcher", required=True)
    p = kinds.add_parser(
        "slurm",
        help="compose the run's config, write an sbatch script into its run folder, submit it",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("overrides", nargs="*", help="Hydra overrides, as for pfm-train (e.g. experiment=demo)")
    p.add_argument(
        "--config-dir",
        "-cd",
        type=Path,
        help="your own config folder (experiment/, data/, model/ ...), as pfm-train's --config-dir; the job "
        "reads it from the same absolute path",
    )
    p.add_argument("--nodes", type=int, default=1, help="number of nodes (strategy.num_nodes)")
    p.add_argument(
        "--gpus-per-node", type=int, default=1, help="GPUs per node, one task each (0: CPU processes)"
    )
    p.add_argument(
        "--tasks-per-node", type=int, default=None, help="with --gpus-per-node 0: CPU processes per node"
    )
    p.add_argument("--time", help="time limit, e.g. 24:00:00")
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--qos")
    p.add_argument("--constraint")
    p.add_argument("--cpus-per-task", type=int)
    p.add_argument("--mem", help="memory per node, e.g. 480G")
    p.add_argument(
        "--setup",
        action="append",
        help="shell line run before training, e.g. 'module load cuda' (repeatable)",
    )
    p.add_argument("--container", help="container image: a .sif file (apptainer) or an image name (pyxis)")
    p.add_argument(
        "--signal-seconds",
        type=int,
        default=300,
        help="SIGUSR1 this many seconds before the time limit: checkpoint and requeue (default 300)",
    )
    p.add_argument("--job-name", help="SLURM job name (default pfm-<run folder name>)")
    p.add_argument("--sbatch-arg", action="append", help="extra #SBATCH line content, e.g. --exclusive")
    p.add_argument("--dry-run", action="store_true", help="print the script and the composed config only")
    p.set_defaults(func=_launch_slurm)
