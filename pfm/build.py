"""Build networks and runs from configs: the one place where a network is made.

:func:`build_network` builds a network from (model config, data spec, head config) and optionally loads
weights; training (:func:`build_task`), :func:`load_exported`, :func:`load_pretrained`, :func:`load_tito`
(``pfm sample``, and ``pfm evaluate`` on official PLaTITO files) all build through it. ``pfm.checkpoints``
below reads and writes the files (weights, the run description); it builds nothing.

This module sits below the entry points (``pfm.train``, ``pfm.cli``, ...) and above the packages it combines
(docs/architecture.md, the import contracts in pyproject.toml). Shapes that come from the data (channels, crop
size) are passed from the DataModule's ``spec`` into the model, never written in YAML.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from pfm.checkpoints.export import strip_prefix
from pfm.checkpoints.pretrained import (
    NAME_PATTERN,
    foreign_state,
    is_registry_name,
    load_weights,
    resolve_source,
)
from pfm.checkpoints.registry import get_entry, verify_export
from pfm.checkpoints.run_description import read_run_info
from pfm.config_check import check_config
from pfm.models import PLaTITO
from pfm.paths import CONF_DIR  # re-exported: tests and older code import it from here
from pfm.tasks.finetune import describe_groups, freeze_parameters
from pfm.unpickle import load_state_dict

__all__ = [
    "CONF_DIR",
    "accepted",
    "build_model",
    "build_network",
    "build_task",
    "head_model_spec",
    "load_exported",
    "load_pretrained",
    "load_tito",
    "model_config",
]

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


def _as_config(cfg: Any) -> DictConfig:
    # a node of a composed run config stays itself: its interpolations may point at other parts of the run
    return cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))


def build_network(
    model_cfg: Mapping[str, Any],
    spec: Mapping[str, Any],
    head_cfg: Mapping[str, Any] | None = None,
    *,
    init_from: str | Path | None = None,
    weights: str | Path | Mapping[str, torch.Tensor] | None = None,
) -> nn.Module:
    """The network of a run: the model, ``init_from`` loaded into it, wrapped by the head, then ``weights``.

    ``model_cfg`` and ``head_cfg`` are ``_target_`` configs (a composed config's nodes or plain mappings, as a
    checkpoint's run description holds them); ``spec`` holds the data's shapes (a DataModule's ``spec``): the
    model gets those its constructor accepts, with the head's ``model_spec`` on top, the head the data's.
    ``init_from`` (a path or registry name, see :func:`pfm.checkpoints.load_weights`) fills the model under
    the head before fine-tuning. ``weights`` (a path, registry name or state dict) fills the whole network;
    a model class with ``from_official`` is built by it instead when ``weights`` holds the authors' names (a
    torch file that is not a pfm checkpoint, or a state dict), its widths read off the shapes. In train mode.
    """
    model_cfg = _as_config(model_cfg)
    head_cfg = _as_config(head_cfg) if head_cfg is not None and head_cfg.get("_target_") else None
    if weights is not None and head_cfg is None and init_from is None:
        official = _from_official(model_cfg, spec, weights)
        if official is not None:
            return official
    # a head's model_spec (e.g. GPhyT's pretrained field vocabulary) comes first: the model must fit its weights
    model = build_model(model_cfg, head_model_spec(spec, head_cfg))
    if init_from:
        load_weights(model, init_from)
    if head_cfg is not None:
        head = instantiate(head_cfg, _partial_=True)
        model = head(model, **accepted(head.func, spec))
    if isinstance(weights, Mapping):
        model.load_state_dict(dict(weights))
    elif weights is not None:
        load_weights(model, weights)
    return model


def _from_official(
    model_cfg: DictConfig, spec: Mapping[str, Any], weights: str | Path | Mapping[str, torch.Tensor]
) -> nn.Module | None:
    """The model built by its class's ``from_official(state_dict, ...)`` when it has one and ``weights`` holds
    the authors' names (PLaTITO reads its widths off the shapes; the 3M models' are published nowhere else)."""
    factory = getattr(get_method(model_cfg._target_), "from_official", None)
    if not callable(factory):
        return None
    state = dict(weights) if isinstance(weights, Mapping) else foreign_state(resolve_source(weights))
    if state is None:
        return None
    options = {k: v for k, v in OmegaConf.to_container(model_cfg, resolve=True).items() if k != "_target_"}
    return factory(state, **accepted(factory, {**options, **spec}))


def build_task(cfg: DictConfig, *, checked: bool = False) -> tuple[L.LightningDataModule, L.LightningModule]:
    """Build the DataModule and the task (model, optional head, objective) described by ``cfg``.

    Its sections are checked first (:func:`pfm.config_check.check_config`), ``init_from`` once a registry name
    is resolved to files; ``checked=True`` says the caller already checked every other section
    (:func:`pfm.train.run` does, before building the strategy), so each key is checked once per run.
    """
    # a registry name (init_from=tadpole-s) becomes its verified local files, downloaded if needed
    if cfg.get("init_from") and is_registry_name(cfg.init_from):
        with open_dict(cfg):
            cfg.init_from = str(resolve_source(cfg.init_from))
    # clear errors before building
    check_config(cfg, ("init_from",) if checked else ("data", "model", "head", "task", "init_from"))
    datamodule = instantiate(cfg.data, **_data_sample(cfg))
    model = build_network(cfg.model, datamodule.spec, cfg.get("head"), init_from=cfg.get("init_from"))
    spec = datamodule.spec
    task_extras = {
        "pde_names": getattr(datamodule, "pde_names", []),
        "fields": spec.get("fields", ()),
        "num_frames": spec.get("num_frames"),
    }
    task = instantiate(cfg.task, model=model, **accepted(get_method(cfg.task._target_), task_extras))
    _apply_finetune(cfg.get("finetune"), task)
    return datamodule, task


def _data_sample(cfg: DictConfig) -> dict[str, str]:
    """``sample=<what the task reads>`` for a DataModule that serves several kinds and was left to choose.

    ``data=well`` serves GPhyT's field windows, Tadpole's dynamics windows or its autoencoder's crops;
    ``data.sample: null`` (its config's default) means the kind the task declares (``Task.data_sample``), so
    ``experiment=<any> data=well data.path=DIR`` works as typed. An explicit ``data.sample`` stands.
    """
    if "sample" not in cfg.data or cfg.data.sample is not None:
        return {}
    kind = getattr(get_method(cfg.task._target_), "data_sample", None)
    if kind is None:
        raise ValueError(
            f"data.sample=null lets the task choose what {cfg.data._target_} serves, but task "
            f"{cfg.task._target_} reads none of its kinds. Fix: data.sample=fields|windows|crops, or a task "
            "that reads one (next_frame, dynamics, autoencoder)."
        )
    return {"sample": kind}


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


def model_config(choice: str) -> DictConfig:
    """The ``conf/model/<choice>.yaml`` config (read as a file: no Hydra composition below the entry points)."""
    path = CONF_DIR / "model" / f"{choice}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
        raise ValueError(
            f"Model config {choice!r} is not in {CONF_DIR / 'model'}; known: {', '.join(known)}."
        )
    cfg = OmegaConf.load(path)
    if "defaults" in cfg:
        cfg.pop("defaults")
    return cfg


def _is_export(path: Path) -> bool:
    return path.is_dir() and (path / "config.yaml").is_file() and (path / "model.safetensors").is_file()


def load_exported(directory: str | Path, verify: bool = True) -> nn.Module:
    """The network of a ``pfm export`` folder with its weights, in eval mode (checksums verified first)."""
    directory = Path(directory)
    if verify:
        verify_export(directory)
    config = OmegaConf.load(directory / "config.yaml")
    spec = OmegaConf.to_container(config.data_spec)
    return build_network(config.model, spec, config.get("head"), weights=directory).eval()


def load_pretrained(source: str | Path, revision: str | None = None) -> nn.Module:
    """The built model holding the weights of ``source`` (a registry name, export folder or pfm checkpoint), in eval mode.

    Registry entries are built from their ``conf/model`` choice with the data shapes in their ``spec`` and
    loaded through :func:`pfm.checkpoints.load_weights` (the official converters included); files are
    verified first.
    """
    path = Path(source).expanduser()
    if path.exists():
        if _is_export(path):
            return load_exported(path, verify=(path / "SHA256SUMS").is_file())
        _, info = read_run_info(path)
        if info is None or not isinstance(info.get("model"), Mapping):
            raise ValueError(
                f"{path} carries no pfm model description, so the model cannot be rebuilt from it; give a "
                "registry name, a `pfm export` folder or a pfm-train checkpoint, or build the model yourself "
                "and call load_weights(model, path)."
            )
        spec = dict(info.get("data_spec") or {})
        return build_network(info["model"], spec, info.get("head"), weights=path).eval()
    if not NAME_PATTERN.match(str(source)):
        raise FileNotFoundError(
            f"{str(source)!r} does not exist and is not a registry name; give a registry name (`pfm list`), "
            "a `pfm export` folder or a pfm-train checkpoint."
        )
    entry = get_entry(str(source))
    if entry.status != "supported":
        raise ValueError(
            f"pfm cannot build {entry.name!r} yet (status: {entry.status} in {entry.source}): its model "
            f"config {entry.model!r} or its converter is missing. `pfm download {entry.name}` still fetches "
            "the files."
        )
    local = resolve_source(entry.name, revision)
    if _is_export(local):
        return load_exported(local, verify=False)  # the registry's sha256 were checked by the download
    return build_network(model_config(entry.model), dict(entry.spec), weights=local).eval()


def load_tito(source: str | Path) -> tuple[PLaTITO, bool]:
    """(PLaTITO model, official?) from an official .ckpt, a pfm training checkpoint or a `pfm export` folder.

    In eval mode. A checkpoint file needs no run description: the widths are read off the weights' shapes
    (pfm's PLaTITO keeps the official names); "official" says the file holds the authors' names unprefixed.
    """
    source = Path(source)
    if source.is_dir():
        model = load_exported(source)
        model = getattr(model, "model", model)
        if not isinstance(model, PLaTITO):
            raise ValueError(f"{source} holds a {type(model).__name__}, not a TITO/PLaTITO model.")
        return model.eval(), False
    if not source.is_file():
        raise FileNotFoundError(
            f"checkpoint {source} does not exist; pass an official .ckpt, a pfm .ckpt or folder."
        )
    sd = load_state_dict(source)  # tensors only: no pickled code runs
    prefixes = {k[: k.index("velocity_net.")] for k in sd if "velocity_net." in k}
    if not prefixes:
        raise ValueError(f"{source} has no 'velocity_net.*' weights; it is not a TITO/PLaTITO checkpoint.")
    prefix = min(prefixes, key=len)  # "" for official files, "model." for pfm task checkpoints
    model = build_network(
        {"_target_": f"{PLaTITO.__module__}.{PLaTITO.__qualname__}"}, {}, weights=strip_prefix(sd, prefix)
    )
    return model.eval(), prefix == ""
