"""``pfm export``: any training checkpoint (file, or DeepSpeed ZeRO shards) -> a publishable model folder.

The folder holds ``model.safetensors`` (the network's weights, fp32, names as in the plain ``nn.Module``),
``config.yaml`` (the model, head and data-shape config that :func:`load_exported` rebuilds it from),
a ``README.md`` model card, and ``SHA256SUMS``. Every file is written atomically.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from pfm.checkpoints.files import is_complete, read_checkpoint
from pfm.io import atomic_path

__all__ = ["export_checkpoint", "load_exported", "training_state_dict"]

_NETWORK_PREFIX = "model."  # the task holds its network (model, or head wrapping it) as `self.model`


def training_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The task's full fp32 state dict from a checkpoint file or a DeepSpeed ZeRO folder (any stage)."""
    path = Path(path)
    if path.is_dir() and (path / "checkpoint").is_dir():
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        # gathers the fp32 master weights from every rank's optimizer shard (ZeRO-1/2/3 alike)
        state = get_fp32_state_dict_from_zero_checkpoint(str(path), tag="checkpoint")
        # DeepSpeed records frozen parameters (e.g. a LoRA-frozen base) for ZeRO-2/3 only; under ZeRO-1
        # they exist solely in the replicated module weights, so take any missing ones from there.
        for states_file in sorted((path / "checkpoint").glob("*model_states.pt"))[:1]:
            module = torch.load(states_file, map_location="cpu", weights_only=False).get("module") or {}
            for key, value in module.items():
                if key not in state and torch.is_tensor(value) and value.numel() > 0:
                    state[key] = value.float()
    else:
        state = read_checkpoint(path)["state_dict"]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("_forward_module.").removeprefix("module.")
        out[key] = value.detach().to("cpu").contiguous().clone()
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _model_card(info: Mapping[str, Any], step: int | None, num_params: int, source: Path) -> str:
    config = info.get("config", {})
    data = config.get("data", {}) if isinstance(config, Mapping) else {}
    pdes = ", ".join(data.get("pdes", {})) if isinstance(data.get("pdes"), Mapping) else "unknown"
    metrics = info.get("metrics") or {}
    lines = [
        f"# {info.get('model', {}).get('_target_', 'pfm model')}",
        "",
        "Exported with `pfm export` from a pfm-train checkpoint.",
        "",
        "## Model",
        f"- class: `{info.get('model', {}).get('_target_', '?')}`, {num_params:,} parameters",
        f"- data shapes: {dict(info.get('data_spec', {}))}",
        "",
        "## Training",
        f"- data: online PDE crops ({pdes}); grid n={data.get('n', '?')}, crop={data.get('crop', '?')}, "
        f"global batch {data.get('batch_size', '?')}, seed {config.get('seed', '?')}",
        f"- steps: {step}",
        f"- strategy: {info.get('strategy', '?')} on {info.get('world_size', '?')} process(es)",
        f"- source checkpoint: `{source.name}`",
        "",
        "## Metrics at export",
        *(f"- {k}: {v:.6g}" for k, v in sorted(metrics.items())),
        *([] if metrics else ["- none logged"]),
        "",
        "## Use",
        "```python",
        "from pfm.checkpoints import load_exported",
        'model = load_exported("<this folder>")  # a plain torch.nn.Module in eval mode',
        "```",
        "",
    ]
    return "\n".join(lines)


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Write ``model.safetensors``, ``config.yaml``, ``README.md`` and ``SHA256SUMS`` into ``out_dir``."""
    from safetensors.torch import save

    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise FileNotFoundError(f"Checkpoint {checkpoint} does not exist; pass a step*.ckpt file or folder.")
    if not is_complete(checkpoint):
        raise ValueError(f"Checkpoint {checkpoint} is truncated or unreadable; export an older one.")
    meta = read_checkpoint(checkpoint)
    info = meta.get("pfm")
    if not info or "model" not in info:
        raise ValueError(
            f"Checkpoint {checkpoint} has no pfm run description (key 'pfm'); only checkpoints written by "
            "pfm-train can be exported, since the model config is needed to rebuild the network."
        )
    state = training_state_dict(checkpoint)
    weights = {k[len(_NETWORK_PREFIX) :]: v for k, v in state.items() if k.startswith(_NETWORK_PREFIX)}
    if not weights:
        raise ValueError(
            f"Checkpoint {checkpoint} holds no '{_NETWORK_PREFIX}*' weights; got {list(state)[:5]}."
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "model": info["model"],
        "head": info.get("head"),
        "data_spec": dict(info.get("data_spec", {})),
        "global_step": meta.get("global_step"),
    }
    files = {
        "model.safetensors": save(
            weights, metadata={"format": "pt", "global_step": str(meta.get("global_step"))}
        ),
        "config.yaml": OmegaConf.to_yaml(OmegaConf.create(config)).encode(),
        "README.md": _model_card(
            info, meta.get("global_step"), sum(v.numel() for v in weights.values()), checkpoint
        ).encode(),
    }
    for name, data in files.items():
        _write_atomic(out_dir / name, data)
    sums = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in files.items())
    _write_atomic(out_dir / "SHA256SUMS", sums.encode())
    return out_dir


def load_exported(directory: str | Path, verify: bool = True) -> nn.Module:
    """Rebuild the network from an export folder and load its weights (checksums verified first)."""
    from hydra.utils import instantiate
    from safetensors.torch import load_file

    from pfm.build import accepted, build_model

    directory = Path(directory)
    if verify:
        for line in (directory / "SHA256SUMS").read_text().splitlines():
            digest, name = line.split(maxsplit=1)
            actual = hashlib.sha256((directory / name).read_bytes()).hexdigest()
            if actual != digest:
                raise ValueError(
                    f"{directory / name} has SHA-256 {actual}, expected {digest}; re-export or re-download."
                )
    config = OmegaConf.load(directory / "config.yaml")
    spec = OmegaConf.to_container(config.data_spec)
    model = build_model(config.model, spec)
    if config.get("head") and config.head.get("_target_"):
        head = instantiate(config.head, _partial_=True)
        model = head(model, **accepted(head.func, spec))
    model.load_state_dict(load_file(directory / "model.safetensors"))
    return model.eval()
