"""The run description a pfm-train checkpoint carries under ``checkpoint["pfm"]``.

Written by :func:`run_info` (``PeriodicCheckpoint`` stores it with the step, world size and metrics); read by
resume (:func:`pfm.checkpoints.check_compatible` compares :data:`pfm.checkpoints.resume.RESUME_KEYS`), export
(``config.yaml``) and loading (``pfm.build.load_pretrained`` rebuilds the network from ``model``, ``head`` and
``data_spec``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pfm.checkpoints.files import read_checkpoint

__all__ = ["RENAMED_KEYS", "current_names", "read_run_info", "run_info"]

# Keys renamed since checkpoints were written with them (old -> new), at the top of a run description and in
# its data config; read under the new name, so such a checkpoint still resumes and evaluates. A config typed
# with an old key is refused by the config check instead (pfm.config_check.MOVED_KEYS is this table).
RENAMED_KEYS = {"num_data_shards": "num_pools"}


def run_info(cfg: DictConfig, data_spec: Mapping[str, Any], strategy: str) -> dict[str, Any]:
    """What a checkpoint records about its run: resume compares part of it, export rebuilds from it.

    ``data_spec`` is the DataModule's ``spec`` (the shapes the model was built with); ``strategy`` the name of
    the strategy the run trains with (``StrategySetup.name``).
    """
    container = OmegaConf.to_container(cfg, resolve=True)
    head = container.get("head") if cfg.get("head") and cfg.head.get("_target_") else None
    finetune = {k: v for k, v in (container.get("finetune") or {}).items() if v}
    return {
        **({"finetune": finetune} if finetune else {}),  # absent when unused: older checkpoints still match
        "model": container["model"],
        "head": head,
        "task_target": cfg.task._target_,
        "data_spec": dict(data_spec),
        "num_pools": cfg.data.get("num_pools"),
        # DeepSpeed writes folders of shards that only DeepSpeed reads back; the others write one file
        "checkpoint_format": "deepspeed" if strategy.startswith("deepspeed") else "file",
        "strategy": strategy,
        "config": container,
    }


def current_names(info: Mapping[str, Any]) -> dict[str, Any]:
    """The run description ``info`` with the keys an older pfm wrote (:data:`RENAMED_KEYS`) renamed."""
    out = {RENAMED_KEYS.get(k, k): v for k, v in info.items()}
    config = out.get("config")
    if isinstance(config, Mapping) and isinstance(config.get("data"), Mapping):
        out["config"] = {**config, "data": {RENAMED_KEYS.get(k, k): v for k, v in config["data"].items()}}
    return out


def read_run_info(path: str | Path) -> tuple[dict[str, Any], Mapping[str, Any] | None]:
    """``(checkpoint, run description or None)`` of a checkpoint, read without running pickled code."""
    checkpoint = read_checkpoint(path, strict=False)  # may be an official file: its classes stay inert
    info = checkpoint.get("pfm") if isinstance(checkpoint, Mapping) else None
    return checkpoint, current_names(info) if isinstance(info, Mapping) else None
