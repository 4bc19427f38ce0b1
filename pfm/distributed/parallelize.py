"""Model transforms applied from outside the model: activation checkpointing, torch.compile, FSDP2 sharding.

Models stay single-device code. This module applies the transforms in one fixed order, the one torchtitan
uses, because each later step must see the result of the earlier ones:

1. **activation checkpointing** wraps each block's ``forward`` (recompute in backward instead of storing);
2. **compile** compiles each block in place (``nn.Module.compile``), so the checkpointed forward is traced
   as one graph and parameter names do not change;
3. **shard** (FSDP2 ``fully_shard``) each block, then the model root, done by the strategy at set-up.

Steps 1 and 2 run in :func:`prepare_model` before the Trainer exists; step 3 runs in
:class:`pfm.distributed.FSDP2Strategy`. None of them changes a parameter's name, so checkpoints taken with
any strategy load into any other and into the plain model.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["find_blocks", "forward_methods", "prepare_model", "shard_model"]


def _resolve_types(block_types: Sequence[str | type] | None) -> tuple[type, ...] | None:
    if block_types is None:
        return None
    resolved: list[type] = []
    for entry in block_types:
        if isinstance(entry, type):
            resolved.append(entry)
            continue
        module_name, _, class_name = str(entry).rpartition(".")
        try:
            resolved.append(getattr(__import__(module_name, fromlist=[class_name]), class_name))
        except (ImportError, AttributeError, ValueError) as err:
            raise ValueError(
                f"strategy.block_types entry {entry!r} is not an importable class; expected a dotted path "
                "such as 'pfm.models.tadpole.WindowStage', or null for the automatic choice."
            ) from err
    return tuple(resolved)


def _outermost(model: nn.Module, select) -> list[nn.Module]:
    chosen: list[nn.Module] = []
    covered: set[int] = set()
    parents = {id(child): module for module in model.modules() for child in module.children()}
    for module in model.modules():  # pre-order, so outer modules come before their descendants
        if id(module) in covered or not select(module, parents.get(id(module))):
            continue
        covered.update(id(m) for m in module.modules())
        if any(True for _ in module.parameters()):
            chosen.append(module)
    return chosen


def find_blocks(model: nn.Module, block_types: Sequence[str | type] | None = None) -> list[nn.Module]:
    """The model's repeated blocks: instances of ``block_types`` if given, else the outermost list members.

    The automatic choice takes the members of every outermost ``nn.ModuleList`` (transformer stages and
    layers); a model without lists falls back to the members of its outermost ``nn.Sequential``s. Only
    blocks holding parameters are returned, outermost first, never one inside another.
    """
    types = _resolve_types(block_types)
    if types is not None:
        return _outermost(model, lambda module, _: isinstance(module, types))
    for container in (nn.ModuleList, nn.Sequential):
        blocks = _outermost(model, lambda _, parent, c=container: isinstance(parent, c))
        if blocks:
            return blocks
    return []


def _checkpointed(module: nn.Module) -> None:
    forward = module.forward

    @functools.wraps(forward)
    def checkpointed_forward(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        # non-reentrant: works with kwargs, with compile and with FSDP2/ZeRO-3 parameter hooks
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    # instance attribute: the class, its state_dict keys and other instances stay untouched
    module.forward = checkpointed_forward


def prepare_model(
    model: nn.Module,
    *,
    activation_checkpointing: bool = False,
    compile: bool = False,
    block_types: Sequence[str | type] | None = None,
) -> nn.Module:
    """Apply steps 1 (activation checkpointing) and 2 (compile) to ``model``'s blocks, in place."""
    if not (activation_checkpointing or compile):
        return model
    blocks = find_blocks(model, block_types)
    if not blocks:
        raise ValueError(
            f"{type(model).__name__} has no blocks to checkpoint or compile (no nn.ModuleList or "
            "nn.Sequential members with parameters); set strategy.block_types to its block classes."
        )
    for block in blocks:
        if activation_checkpointing:
            _checkpointed(block)
        if compile:
            # shapes are fixed by the crop size; dynamic shapes only add recompiles (and hit inductor bugs)
            block.compile(dynamic=False)
    return model


def forward_methods(model: nn.Module) -> list[str]:
    """Public methods of the model's class, besides ``forward``, whose first argument is a tensor.

    Tasks call these directly (``encode_distribution``, ``decode``, ...), so a sharded network must gather
    its parameters for them as it does for ``forward``.
    """
    names: list[str] = []
    for cls in type(model).__mro__:
        if not issubclass(cls, nn.Module) or cls is nn.Module:
            continue
        for name, value in vars(cls).items():
            if name.startswith("_") or name == "forward" or name in names or not inspect.isfunction(value):
                continue
            params = list(inspect.signature(value).parameters.values())[1:]
            annotation = params[0].annotation if params else None
            if annotation is torch.Tensor or str(annotation) in ("torch.Tensor", "Tensor"):
                names.append(name)
    return names


def shard_model(
    root: nn.Module,
    mesh: torch.distributed.device_mesh.DeviceMesh,
    *,
    block_types: Sequence[str | type] | None = None,
    mp_policy: object | None = None,
) -> None:
    """Step 3: ``fully_shard`` every block of each child network of ``root``, then the network itself.

    ``root`` is the task (LightningModule); its child networks are sharded as FSDP2 roots that keep their
    parameters gathered from forward to backward, since tasks call several of their methods per step.
    """
    # imported when sharding: torch builds without distributed support have no torch.distributed.fsdp
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    kwargs = {"mesh": mesh}
    if mp_policy is not None:
        kwargs["mp_policy"] = mp_policy
    for network in root.children():
        if not any(True for _ in network.parameters()):
            continue
        for block in find_blocks(network, block_types):
            fully_shard(block, **kwargs)
        fully_shard(network, reshard_after_forward=False, **kwargs)
        for name in forward_methods(network):
            register_fsdp_forward_method(network, name)
