"""Initialise a model from pretrained weights before fine-tuning: a pfm checkpoint, an export folder, or the
official Tadpole safetensors (encoder and decoder stored separately)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

__all__ = ["load_pretrained"]


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        detail = "; ".join(
            part
            for part in (
                f"missing {missing[:5]}" if missing else "",
                f"unexpected {unexpected[:5]}" if unexpected else "",
                "shape mismatch "
                + ", ".join(f"{k}: {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong[:5])
                if wrong
                else "",
            )
            if part
        )
        raise ValueError(
            f"The weights in {source} do not fit {type(module).__name__}: {detail}. Pick the model config "
            "that matches the checkpoint (e.g. model=tadpole_b for tadpole_b_*.safetensors)."
        )
    module.load_state_dict(state)


def load_pretrained(model: nn.Module, source: str | Path) -> nn.Module:
    """Load weights from ``source`` into ``model`` (strictly) and return it.

    ``source`` may be a pfm training checkpoint (a ``.ckpt`` file or DeepSpeed folder; the task's ``model.``
    weights are taken), an export folder holding ``model.safetensors``, or a folder with the official
    ``tadpole_<size>_encoder.safetensors`` and ``tadpole_<size>_decoder.safetensors``.
    """
    from safetensors.torch import load_file

    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"init_from={source!r} does not exist; give a checkpoint file or folder.")
    if path.is_dir() and (path / "model.safetensors").is_file():
        _load_strict(model, load_file(path / "model.safetensors"), path)
        return model
    encoders = sorted(path.glob("*_encoder.safetensors")) if path.is_dir() else []
    if encoders:
        decoder = encoders[0].with_name(encoders[0].name.replace("_encoder.", "_decoder."))
        if not decoder.is_file() or not hasattr(model, "encoder") or not hasattr(model, "decoder"):
            raise ValueError(
                f"{path} holds {encoders[0].name} but the model has no encoder/decoder pair or {decoder.name} "
                "is missing; download both files of the published checkpoint."
            )
        _load_strict(model.encoder, load_file(encoders[0]), encoders[0])
        _load_strict(model.decoder, load_file(decoder), decoder)
        return model
    from pfm.checkpoints.export import training_state_dict

    state = training_state_dict(path)
    prefix = "model."
    network = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    if not network:
        raise ValueError(f"{path} holds no 'model.*' weights; expected a pfm training checkpoint.")
    _load_strict(model, network, path)
    return model
