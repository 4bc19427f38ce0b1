"""pfm-train: the Hydra entry point. Composes a run from conf/ and trains it with Lightning.

Hydra's composition lives here only; building from a composed config is :mod:`pfm.build`, which export and
loading use too. Nothing imports this module.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from pfm.build import CONF_DIR, build_task
from pfm.callbacks import (
    ChainEvaluation,
    ExamplePlot,
    FitSummary,
    GlobalLoss,
    LossCurvePlot,
    RolloutErrorPlot,
    StepProgressBar,
    ThroughputMonitor,
)
from pfm.callbacks.preemption import Preemption
from pfm.checkpoints import PeriodicCheckpoint, check_compatible, resolve_resume, run_info
from pfm.config_check import check_config, moved_override_problems
from pfm.distributed import build_strategy
from pfm.distributed.cluster import cluster_environment
from pfm.distributed.trainer_switches import merge_trainer_switches
from pfm.extras import extra_problem
from pfm.unpickle import torch_safe_globals

__all__ = ["main", "run"]

log = logging.getLogger("pfm.train")


def run(cfg: DictConfig, output_dir: str | Path) -> L.Trainer:
    """Build data, model, head, task, strategy and trainer from ``cfg`` and fit; returns the finished trainer."""
    output_dir = Path(output_dir)
    merge_trainer_switches(cfg)  # trainer.precision/accelerator/devices/num_nodes are strategy.*
    # keys, types and ranges of every _target_, before anything is built; init_from may be a registry
    # name, which build_task resolves and then checks (the only key it checks: checked=True)
    check_config(cfg, [key for key in cfg if key != "init_from"])
    # built first: a strategy the hardware cannot run fails before any work is done
    setup = instantiate(cfg.strategy, _convert_="all") if cfg.get("strategy") else build_strategy("single")
    L.seed_everything(cfg.seed, workers=True)
    datamodule, task = build_task(cfg, checked=True)
    setup.prepare_model(task.model)  # activation checkpointing, then compile; the strategy shards later

    checkpoint_dir = output_dir / "checkpoints"
    resume = resolve_resume(cfg.get("resume") or cfg.get("ckpt_path"), checkpoint_dir)
    info = run_info(cfg, getattr(datamodule, "spec", {}), setup.name)
    if resume is not None:
        check_compatible(resume, info)
        log.info("Resuming from %s", resume)
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    callbacks: list[L.Callback] = [
        PeriodicCheckpoint(
            checkpoint_dir,
            every_n_steps=cfg.checkpoint_every_n_steps,
            every_n_minutes=cfg.get("checkpoint_every_n_minutes"),
            keep_last=cfg.get("checkpoint_keep_last"),
            run_info=info,
        ),
        ThroughputMonitor(),
        GlobalLoss(),
        FitSummary(),  # the closing line: steps and wall time of this fit, last validation figures
        # after PeriodicCheckpoint: on SIGUSR1/SIGTERM it saves through it at the next step, then requeues
        instantiate(cfg.preemption) if cfg.get("preemption") else Preemption(),
        RolloutErrorPlot(output_dir),  # rollout_error.png after each validation, when the task collects it
    ]
    if cfg.plots:
        callbacks += [LossCurvePlot(output_dir), ExamplePlot(output_dir)]
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(StepProgressBar())  # step k/max_steps: the run is one endless epoch
    callbacks.append(ChainEvaluation(output_dir))  # last: the task's chain evaluation after every other end
    trainer = instantiate(
        cfg.trainer,
        logger=loggers or False,
        callbacks=callbacks,
        default_root_dir=str(output_dir),
        enable_checkpointing=False,  # PeriodicCheckpoint replaces Lightning's ModelCheckpoint
        # inside SLURM tasks: Lightning's SLURMEnvironment with its auto-requeue off (Preemption requeues)
        plugins=[env] if (env := cluster_environment()) is not None else None,
        **setup.trainer_kwargs,
    )
    num_params = sum(p.numel() for p in task.parameters())
    num_trainable = sum(p.numel() for p in task.parameters() if p.requires_grad)
    log.info("Model: %s parameters, %s trainable", f"{num_params:,}", f"{num_trainable:,}")
    for logger in trainer.loggers:
        logger.log_hyperparams({"num_parameters": num_params, "num_trainable_parameters": num_trainable})
    # resolve_resume vetted the checkpoint against pfm's allowlist; Lightning's own load of a file is restricted
    # to the same allowlist (weights_only=True whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says)
    with torch.serialization.safe_globals(torch_safe_globals()):
        trainer.fit(
            task,
            datamodule=datamodule,
            ckpt_path=str(resume) if resume is not None else None,
            weights_only=True,
        )
    if trainer.is_global_zero:
        log.info("Run folder: %s", output_dir)
        log.info("  checkpoints: %s", checkpoint_dir)
        log.info("  metrics:     %s", output_dir / "csv" / "metrics.csv")
        if cfg.plots:
            log.info("  pictures:    %s", ", ".join(str(p) for p in sorted(output_dir.glob("*.png"))))
    return trainer


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    run(cfg, HydraConfig.get().runtime.output_dir)


def main() -> None:
    """Console entry point ``pfm-train``; any ``key=value`` Hydra override applies."""
    # Hydra would only say that hydra/launcher/submitit_slurm is not found
    if any(arg.startswith("hydra/launcher=slurm") for arg in sys.argv[1:]) and (
        missing := extra_problem("hydra_plugins.hydra_submitit_launcher", "slurm", "hydra/launcher=slurm")
    ):
        sys.exit(f"pfm-train: {missing}")
    if moved := moved_override_problems(sys.argv[1:]):
        sys.exit("pfm-train: " + " ".join(moved))
    _hydra_main()


if __name__ == "__main__":
    main()
