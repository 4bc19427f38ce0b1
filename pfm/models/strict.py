"""Strict weight loading with the difference named: the one check used for pfm's own weights
(`pfm.checkpoints.pretrained`) and for the official converters (`pfm.models.tito_official`).

Public names: `state_diff`, `load_strict`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

__all__ = ["load_strict", "state_diff"]


def _first(names: list[str], limit: int = 5) -> str:
    return f"{names[:limit]}{' ...' if len(names) > limit else ''}"


def state_diff(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> str:
    """The missing, unexpected and wrong-shape names of `state` against `own` ("" when they fit)."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    parts = [f"missing {_first(missing)}"] if missing else []
    if unexpected:
        parts.append(f"unexpected {_first(unexpected)}")
    if wrong:
        shapes = ", ".join(f"{k}: {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong[:5])
        parts.append(f"wrong shape {shapes}{' ...' if len(wrong) > 5 else ''}")
    return "; ".join(parts)


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], message: Callable[[str], str]) -> None:
    """Load `state` into `module` strictly; on any difference raise ValueError(message(state_diff(...)))."""
    detail = state_diff(module.state_dict(), state)
    if detail:
        raise ValueError(message(detail))
    module.load_state_dict(dict(state), strict=True)
