"""Build data, model, head and task from a composed config: used by pfm-train, export and loading.

This module sits below the entry points (``pfm.train``, ``pfm.cli``) and above the packages they combine, so
that nothing has to import an entry point. Shapes that come from the data (channels, crop size) are passed
from the DataModule's ``spec`` into the model, never written in YAML.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any

import lightning as L
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from pfm.checkpoints.pretrained import is_registry_name, load_weights, resolve_source
from pfm.config_check import check_config
from pfm.distributed import StrategySetup
from pfm.paths import CONF_DIR  # re-exported: tests and older code import it from here
from pfm.tasks.finetune import describe_groups, freeze_parameters

__all__ = ["CONF_DIR", "accepted", "build_model", "build_task", "head_model_spec", "run_info"]

log = logging.getLogger("pfm.build")


def accepted(target: Any, available: Mapping[str, Any]) -> dict[str, Any]:
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
    model = instantiate(model_cfg, **accepted(target, spec))
    _check_divisible(crop, getattr(model, "downsample_factor", 1))
    return model


def head_model_spec(spec: Mapping[str, Any], head_cfg: Any) -> dict[str, Any]:
    """The spec the model under a head is built with: the data's, with the head's ``model_spec`` on top.

    A fine-tuning head whose model must match pretrained weights (GPhyT's field vocabulary, grid, frames)
    names those entries in ``head.model_spec``; the head then adapts the model to the data.
    """
    extra = head_cfg.get("model_spec") if head_cfg is not None and head_cfg.get("_target_") else None
    if isinstance(extra, DictConfig):
        extra = OmegaConf.to_container(extra, resolve=True)
    return {**spec, **(extra or {})}


def _check_divisible(crop: int | None, factor: int) -> None:
    if crop is not None and crop % factor:
        lower = max(factor, crop // factor * factor)
        raise ValueError(
            f"data.crop={crop} is not divisible by the model's downsampling factor {factor}; "
            f"choose a multiple of {factor}, e.g. data.crop={lower} or data.crop={lower + factor}."
        )


def build_task(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule]:
    """Build the DataModule and the task (model, optional head, objective) described by ``cfg``."""
    # a registry name (init_from=tadpole-s) becomes its verified local files, downloaded if needed
    if cfg.get("init_from") and is_registry_name(cfg.init_from):
        with open_dict(cfg):
            cfg.init_from = str(resolve_source(cfg.init_from))
    check_config(cfg, ("data", "model", "head", "task", "init_from"))  # clear errors before building
    datamodule = instantiate(cfg.data)
    model = build_model(cfg.model, head_model_spec(datamodule.spec, cfg.get("head")))
    if cfg.get("init_from"):
        load_weights(model, cfg.init_from)
    if cfg.get("head") and cfg.head.get("_target_"):
        head = instantiate(cfg.head, _partial_=True)
        model = head(model, **accepted(head.func, datamodule.spec))
    spec = datamodule.spec
    task_extras = {
        "pde_names": getattr(datamodule, "pde_names", []),
        "fields": spec.get("fields", ()),
        "num_frames": spec.get("num_frames"),
    }
    task = instantiate(cfg.task, model=model, **accepted(get_method(cfg.task._target_), task_extras))
    _apply_finetune(cfg.get("finetune"), task)
    return datamodule, task


def _apply_finetune(finetune: Any, task: L.LightningModule) -> None:
    """``finetune.freeze`` and ``finetune.param_groups`` (pfm/tasks/finetune.py) on the built task's model."""
    if not finetune:
        return
    if isinstance(finetune, DictConfig):
        finetune = OmegaConf.to_container(finetune, resolve=True)
    unknown = sorted(set(finetune) - {"freeze", "param_groups"})
    if unknown:
        raise ValueError(
            f"finetune.{unknown[0]}: not a fine-tuning control; finetune takes freeze and param_groups "
            "(docs/own_data.md). Fix: drop it or rename it."
        )
    frozen = freeze_parameters(task.model, finetune.get("freeze"))
    if frozen:
        count = sum(p.numel() for n, p in task.model.named_parameters() if n in set(frozen))
        log.info("finetune.freeze: %d parameter tensors frozen (%s parameters)", len(frozen), f"{count:,}")
    for i, line in enumerate(describe_groups(task.set_param_groups(finetune.get("param_groups") or []))):
        log.info("optimizer group %d: %s", i, line)


def run_info(cfg: DictConfig, datamodule: L.LightningDataModule, setup: StrategySetup) -> dict[str, Any]:
    """What a checkpoint records about its run: resume compares part of it, export rebuilds from it."""
    container = OmegaConf.to_container(cfg, resolve=True)
    head = container.get("head") if cfg.get("head") and cfg.head.get("_target_") else None
    finetune = {k: v for k, v in (container.get("finetune") or {}).items() if v}
    return {
        **({"finetune": finetune} if finetune else {}),  # absent when unused: older checkpoints still match
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
