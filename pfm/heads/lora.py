"""LoRA for any pfm model: low-rank updates of Linear and Conv3d layers that keep the base parameter names.

Used by every fine-tuning head (Tadpole dynamics, GPhyT fields). A small wrapper here, not peft: peft's
`inject_adapter_in_model` moves the base weights to `<layer>.base_layer.weight`, so official checkpoints (and
pfm's own) no longer load by name. `LoRALinear` and `LoRAConv3d` subclass the layer they adapt and keep its
`weight` and `bias` (the same Parameter objects), adding only `lora_A` and `lora_B`; `load_base_state_dict`
loads a LoRA-free state dict strictly apart from the LoRA factors. The update is merged into the weight on the
fly, `W + alpha / r * B @ A`, one matmul or convolution per layer with no extra activation memory; for
convolutions the update is reshaped from (out * k, in * k * k) as in the official Tadpole recipe (GIFt's
"balanced" layout).

Public names: `LoRALinear`, `LoRAConv3d`, `add_lora`, `load_base_state_dict`, `merged_state_dict`,
`is_lora_name`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "LoRAConv3d",
    "LoRALinear",
    "add_lora",
    "is_lora_name",
    "load_base_state_dict",
    "merged_state_dict",
]

_LORA_NAMES = ("lora_A", "lora_B")


def _init_lora(module: LoRALinear | LoRAConv3d, rank: int, alpha: float, shape_b: int, shape_a: int) -> None:
    """Add `lora_A` (rank, shape_a) Kaiming-uniform and `lora_B` (shape_b, rank), zero (no change at init)."""
    module.rank = rank
    module.scaling = alpha / rank
    module.lora_A = nn.Parameter(module.weight.new_empty(rank, shape_a))
    module.lora_B = nn.Parameter(module.weight.new_zeros(shape_b, rank))
    nn.init.kaiming_uniform_(module.lora_A, a=math.sqrt(5))


class LoRALinear(nn.Linear):
    """`nn.Linear` with a low-rank update, y = x (W + alpha/r B A)^T + b; keeps the `weight`, `bias` names."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.register_parameter("bias", base.bias)
        _init_lora(self, rank, alpha, self.out_features, self.in_features)

    def delta_weight(self) -> torch.Tensor:
        """The LoRA update of the weight, shape (out, in)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out)."""
        return F.linear(x, self.weight + self.delta_weight(), self.bias)


class LoRAConv3d(nn.Conv3d):
    """`nn.Conv3d` with a low-rank update: (out * k0, r) @ (r, in/groups * k1 * k2), as a kernel."""

    _CONV_ATTRIBUTES = (
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "transposed",
        "output_padding",
        "groups",
        "padding_mode",
        "_reversed_padding_repeated_twice",
    )

    def __init__(self, base: nn.Conv3d, rank: int, alpha: float) -> None:
        nn.Module.__init__(self)
        for name in self._CONV_ATTRIBUTES:
            setattr(self, name, getattr(base, name))
        self.weight = base.weight
        self.register_parameter("bias", base.bias)
        out_c, in_c, k0, k1, k2 = self.weight.shape
        _init_lora(self, rank, alpha, out_c * k0, in_c * k1 * k2)

    def delta_weight(self) -> torch.Tensor:
        """The LoRA update of the kernel, shape (out, in / groups, k0, k1, k2)."""
        return ((self.lora_B @ self.lora_A) * self.scaling).view(self.weight.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in, X, Y, Z) -> (N, out, X', Y', Z')."""
        return self._conv_forward(x, self.weight + self.delta_weight(), self.bias)


def add_lora(
    module: nn.Module,
    rank: int,
    alpha: float | None = None,
    exclude: Sequence[str] = ("adaLN_modulation",),
    layer_types: Sequence[type[nn.Module]] = (nn.Linear, nn.Conv3d),
) -> list[str]:
    """Replace, in place, every nn.Linear / nn.Conv3d of `module` by its LoRA version; return their names.

    Layers whose qualified name contains one of `exclude`, or whose exact type is not in `layer_types`, are
    left alone. `alpha` defaults to `rank` (scaling 1).
    """
    unsupported = [t.__name__ for t in layer_types if t not in (nn.Linear, nn.Conv3d)]
    if unsupported:
        raise ValueError(f"add_lora supports nn.Linear and nn.Conv3d; got layer_types {unsupported}.")
    if rank <= 0:
        raise ValueError(f"lora rank={rank} must be positive.")
    alpha = float(rank if alpha is None else alpha)
    wrapped = []
    for name, child in list(module.named_modules()):
        if type(child) not in tuple(layer_types) or any(part in name for part in exclude):
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name)
        lora = (
            LoRALinear(child, rank, alpha) if isinstance(child, nn.Linear) else LoRAConv3d(child, rank, alpha)
        )
        setattr(parent, attr, lora)
        wrapped.append(name)
    return wrapped


def is_lora_name(name: str) -> bool:
    """Whether a state-dict key is a LoRA factor."""
    return name.rsplit(".", 1)[-1] in _LORA_NAMES


def load_base_state_dict(module: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load a LoRA-free state dict into `module`; strict except for LoRA factors."""
    missing, unexpected = module.load_state_dict(state_dict, strict=False)
    missing = [key for key in missing if not is_lora_name(key)]
    if missing or unexpected:
        raise RuntimeError(
            f"state dict does not match the module apart from LoRA factors: missing {missing[:5]} "
            f"({len(missing)} in all), unexpected {unexpected[:5]} ({len(unexpected)} in all)."
        )


def merged_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of `module` with every LoRA update merged into its weight and the factors dropped.

    The result has the names of the module without LoRA, e.g. the official layout for a Tadpole encoder.
    """
    state = {k: v for k, v in module.state_dict().items() if not is_lora_name(k)}
    with torch.no_grad():
        for name, child in module.named_modules():
            if isinstance(child, (LoRALinear, LoRAConv3d)):
                key = f"{name}.weight" if name else "weight"
                state[key] = (child.weight + child.delta_weight()).detach().clone()
    return state
