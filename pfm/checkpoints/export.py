"""``pfm export``: any training checkpoint (file, or DeepSpeed ZeRO shards) -> a publishable model folder.

:func:`run` is the command's code (its arguments are in :mod:`pfm.checkpoints.commands`, which names it as
``"pfm.checkpoints.export:run"`` so that the other checkpoint commands load no torch).

The folder holds ``model.safetensors`` (the network's weights, fp32, names as in the plain ``nn.Module``),
``config.yaml`` (the model, head and data-shape config that ``pfm.build.load_exported`` rebuilds it from),
a ``README.md`` model card, and ``SHA256SUMS``. Every file is written atomically.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from safetensors.torch import save

from pfm.checkpoints.files import is_complete, read_checkpoint
from pfm.checkpoints.registry import entry_yaml, export_entry
from pfm.extras import require_extra
from pfm.io import sha256_file, write_atomic
from pfm.unpickle import check_checkpoint, refused_globals, safe_load

__all__ = [
    "NETWORK_PREFIX",
    "export_checkpoint",
    "network_weights",
    "run",
    "strip_prefix",
    "training_state_dict",
]

NETWORK_PREFIX = "model."  # the task holds its network (model, or head wrapping it) as `self.model`
# the wrappers' prefixes (Lightning's, then DeepSpeed's or DDP's), outermost first
_WRAPPER_PREFIXES = ("_forward_module.", "module.")


def _unwrapped(key: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        key = key.removeprefix(prefix)
    return key


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``state`` whose names start with ``prefix``, named without it."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def network_weights(state: Mapping[str, torch.Tensor], source: str | Path) -> dict[str, torch.Tensor]:
    """The network's weights in a task's state dict: ``model.*`` (under any wrapper), named as in the network.

    The one extractor of network weights from a training checkpoint (export, ``init_from``, ``load_weights``,
    ``pfm sample``). Raises ``ValueError`` naming ``source`` when the state holds none.
    """
    network = strip_prefix({_unwrapped(k): v for k, v in state.items()}, NETWORK_PREFIX)
    if not network:
        raise ValueError(
            f"{source} holds no '{NETWORK_PREFIX}*' weights (got {list(state)[:5]}); expected a pfm training "
            "checkpoint."
        )
    return network


def training_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The task's full fp32 state dict from a checkpoint file or a DeepSpeed ZeRO folder (any stage).

    Runs no pickled code of the file's choosing: checkpoint files go through :mod:`pfm.unpickle`;
    DeepSpeed folders are read by DeepSpeed's own loader (which unpickles with ``weights_only=False``), after
    every file in them was checked against pfm's one allowlist (:func:`pfm.unpickle.check_checkpoint`).
    """
    path = Path(path)
    if path.is_dir() and (path / "checkpoint").is_dir():
        require_extra("deepspeed", "deepspeed", f"Reading the DeepSpeed checkpoint folder {path}")
        # the optional deepspeed extra (seconds to import), needed only for ZeRO checkpoint folders
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        check_checkpoint(path)
        # gathers the fp32 master weights from every rank's optimizer shard (ZeRO-1/2/3 alike)
        state = get_fp32_state_dict_from_zero_checkpoint(str(path), tag="checkpoint")
        # DeepSpeed records frozen parameters (e.g. a LoRA-frozen base) for ZeRO-2/3 only; under ZeRO-1
        # they exist solely in the replicated module weights, so take any missing ones from there.
        for states_file in sorted((path / "checkpoint").glob("*model_states.pt"))[:1]:
            module = safe_load(states_file, strict=True).get("module") or {}
            for key, value in module.items():
                if key not in state and torch.is_tensor(value) and value.numel() > 0:
                    state[key] = value.float()
    else:
        checkpoint = read_checkpoint(path, strict=False)  # only its tensors are used
        state = checkpoint.get("state_dict") if isinstance(checkpoint, Mapping) else None
        if not isinstance(state, Mapping):
            raise ValueError(
                f"{path} holds no 'state_dict' (top-level keys: "
                f"{sorted(map(str, checkpoint))[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__}); "
                f"expected a checkpoint written by pfm-train.{_refused_note(checkpoint)}"
            )
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not torch.is_tensor(value):
            raise ValueError(
                f"{path}: state_dict[{key!r}] is {value!r}, not a tensor; a checkpoint whose weights need "
                f"executing code is refused.{_refused_note(value)}"
            )
        out[_unwrapped(key)] = value.detach().to("cpu").contiguous().clone()
    return out


def _refused_note(obj: object) -> str:
    refused = refused_globals(obj)
    return f" It names globals that were not executed: {', '.join(refused[:5])}." if refused else ""


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
        "from pfm.build import load_exported",
        'model = load_exported("<this folder>")  # a plain torch.nn.Module in eval mode',
        "```",
        "",
    ]
    return "\n".join(lines)


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Write ``model.safetensors``, ``config.yaml``, ``README.md`` and ``SHA256SUMS`` into ``out_dir``."""
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise FileNotFoundError(f"Checkpoint {checkpoint} does not exist; pass a step*.ckpt file or folder.")
    if not is_complete(checkpoint):
        raise ValueError(f"Checkpoint {checkpoint} is truncated or unreadable; export an older one.")
    meta = read_checkpoint(checkpoint, strict=False)  # runs no pickled code; only tensors and "pfm" are used
    info = meta.get("pfm") if isinstance(meta, Mapping) else None
    if not info or "model" not in info:
        raise ValueError(
            f"Checkpoint {checkpoint} has no pfm run description (key 'pfm'); only checkpoints written by "
            "pfm-train can be exported, since the model config is needed to rebuild the network."
        )
    weights = network_weights(training_state_dict(checkpoint), f"Checkpoint {checkpoint}")
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
        write_atomic(out_dir / name, data)
    sums = "".join(f"{sha256_file(out_dir / name)}  {name}\n" for name in files)
    write_atomic(out_dir / "SHA256SUMS", sums.encode())
    return out_dir


def run(args: argparse.Namespace) -> int:
    """Run ``pfm export``: write the folder, then print its registry entry and its files' paths."""
    out = export_checkpoint(args.checkpoint, args.out)
    print(f"# registry entry for {out} (add it under `models:` of your registry; publish rewrites the urls):")
    print(entry_yaml(args.name or Path(out).resolve().name, export_entry(out)), end="")
    for name in ("model.safetensors", "config.yaml", "README.md", "SHA256SUMS"):
        print(out / name)
    return 0
