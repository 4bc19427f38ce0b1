"""pfm-train: the Hydra entry point. Composes a run from conf/ and trains it with Lightning.

Hydra lives here only; everything below receives plain, built objects. Shapes that come from the data
(channels, crop size) are passed from the DataModule's ``spec`` into the model, never written in YAML.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf

from pfm.callbacks import ExamplePlot, LossCurvePlot, ThroughputMonitor
from pfm.checkpoints import PeriodicCheckpoint, check_compatible, resolve_resume
from pfm.checkpoints.pretrained import load_pretrained
from pfm.distributed import GlobalLoss, StrategySetup, build_strategy

__all__ = ["CONF_DIR", "build_model", "build_task", "main", "run"]

log = logging.getLogger("pfm.train")

CONF_DIR = Path(os.environ.get("PFM_CONFIG_DIR", Path(__file__).resolve().parents[1] / "conf"))


def _accepted(target: Any, available: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``available`` that ``target``'s signature accepts by name."""
    params = inspect.signature(target).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(available)
    return {k: v for k, v in available.items() if k in params}


def build_model(model_cfg: DictConfig, spec: Mapping[str, Any]) -> Any:
    """Instantiate ``model_cfg`` with the data-derived shapes in ``spec`` that its constructor accepts."""
    target = get_method(model_cfg._target_)
    crop = spec.get("crop_size")
    # Checked before and after construction: a class-level factor fails before any weights are allocated.
    _check_divisible(crop, getattr(target, "downsample_factor", 1))
    model = instantiate(model_cfg, **_accepted(target, spec))
    _check_divisible(crop, getattr(model, "downsample_factor", 1))
    return model


def _check_divisible(crop: int | None, factor: int) -> None:
    if crop is not None and crop % factor:
        lower = max(factor, crop // factor * factor)
        raise ValueError(
            f"data.crop={crop} is not divisible by the model's downsampling factor {factor}; "
            f"choose a multiple of {factor}, e.g. data.crop={lower} or data.crop={lower + factor}."
        )


def build_task(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule]:
    """Build the DataModule and the task (model, optional head, objective) described by ``cfg``."""
    datamodule = instantiate(cfg.data)
    model = build_model(cfg.model, datamodule.spec)
    if cfg.get("init_from"):
        load_pretrained(model, cfg.init_from)
    if cfg.get("head") and cfg.head.get("_target_"):
        head = instantiate(cfg.head, _partial_=True)
        model = head(model, **_accepted(head.func, datamodule.spec))
    task_extras = {"pde_names": getattr(datamodule, "pde_names", [])}
    task = instantiate(cfg.task, model=model, **_accepted(get_method(cfg.task._target_), task_extras))
    return datamodule, task


def _run_info(cfg: DictConfig, datamodule: L.LightningDataModule, setup: StrategySetup) -> dict[str, Any]:
    """What a checkpoint records about its run: resume compares part of it, export rebuilds from it."""
    container = OmegaConf.to_container(cfg, resolve=True)
    head = container.get("head") if cfg.get("head") and cfg.head.get("_target_") else None
    return {
        "model": container["model"],
        "head": head,
        "task_target": cfg.task._target_,
        "data_spec": dict(getattr(datamodule, "spec", {})),
        "num_data_shards": cfg.data.get("num_data_shards"),
        # DeepSpeed writes folders of shards that only DeepSpeed reads back; the others write one file
        "checkpoint_format": "deepspeed" if setup.name.startswith("deepspeed") else "file",
        "strategy": setup.name,
        "config": container,
    }


def run(cfg: DictConfig, output_dir: str | Path) -> L.Trainer:
    """Build data, model, head, task, strategy and trainer from ``cfg`` and fit; returns the finished trainer."""
    output_dir = Path(output_dir)
    # built first: a strategy the hardware cannot run fails before any work is done
    setup = instantiate(cfg.strategy, _convert_="all") if cfg.get("strategy") else build_strategy("single")
    L.seed_everything(cfg.seed, workers=True)
    datamodule, task = build_task(cfg)
    setup.prepare_model(task.model)  # activation checkpointing, then compile; the strategy shards later

    checkpoint_dir = output_dir / "checkpoints"
    resume = resolve_resume(cfg.get("resume") or cfg.get("ckpt_path"), checkpoint_dir)
    run_info = _run_info(cfg, datamodule, setup)
    if resume is not None:
        check_compatible(resume, run_info)
        log.info("Resuming from %s", resume)
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    callbacks: list[L.Callback] = [
        PeriodicCheckpoint(
            checkpoint_dir,
            every_n_steps=cfg.checkpoint_every_n_steps,
            every_n_minutes=cfg.get("checkpoint_every_n_minutes"),
            keep_last=cfg.get("checkpoint_keep_last"),
            run_info=run_info,
        ),
        ThroughputMonitor(),
        GlobalLoss(),
    ]
    if cfg.plots:
        callbacks += [LossCurvePlot(output_dir), ExamplePlot(output_dir)]
    trainer = instantiate(
        cfg.trainer,
        logger=loggers or False,
        callbacks=callbacks,
        default_root_dir=str(output_dir),
        enable_checkpointing=False,  # PeriodicCheckpoint replaces Lightning's ModelCheckpoint
        **setup.trainer_kwargs,
    )
    num_params = sum(p.numel() for p in task.parameters())
    num_trainable = sum(p.numel() for p in task.parameters() if p.requires_grad)
    log.info("Model: %s parameters, %s trainable", f"{num_params:,}", f"{num_trainable:,}")
    for logger in trainer.loggers:
        logger.log_hyperparams({"num_parameters": num_params, "num_trainable_parameters": num_trainable})
    trainer.fit(task, datamodule=datamodule, ckpt_path=str(resume) if resume is not None else None)
    if trainer.is_global_zero:
        log.info("Run folder: %s", output_dir)
        log.info("  checkpoints: %s", checkpoint_dir)
        log.info("  metrics:     %s", output_dir / "csv" / "metrics.csv")
        if cfg.plots:
            log.info("  pictures:    %s", ", ".join(str(p) for p in sorted(output_dir.glob("*.png"))))
    return trainer


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    """Console entry point ``pfm-train``; any ``key=value`` Hydra override applies."""
    run(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
