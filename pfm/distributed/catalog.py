"""``build_strategy``: the ``_target_`` of ``conf/strategy/*.yaml``. Turns a strategy name into Trainer arguments.

Each strategy is one entry of ``STRATEGIES``, with what it needs from the hardware and how it is built; add
an entry (and a YAML file) to add a strategy. A strategy the hardware cannot run fails here, before any
process starts, with the list of those that will.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy, Strategy
from torch import nn

from pfm.distributed.memory import set_cpu_mmap_threshold
from pfm.distributed.parallelize import prepare_model
from pfm.distributed.strategies import CPUDeepSpeedStrategy, FSDP2Strategy
from pfm.extras import extra_problem

__all__ = [
    "STRATEGIES",
    "ZERO3_BUFFERS",
    "ZERO3_CONFIG",
    "StrategySetup",
    "available_strategies",
    "build_strategy",
]


@dataclass(frozen=True)
class _Kind:
    """What a strategy needs and how to build it from (accelerator, precision, block types, options)."""

    summary: str
    build: Callable[[str, str, Sequence[str] | None, dict[str, Any]], Strategy | str]
    multi_process: bool = True
    needs_gpu: bool = False
    needs_deepspeed: bool = False


def _single(accelerator: str, precision: str, block_types: Any, options: dict[str, Any]) -> str:
    return "auto"


def _ddp(accelerator: str, precision: str, block_types: Any, options: dict[str, Any]) -> Strategy:
    # static graph: every parameter takes part in every step, so DDP need not search for unused ones
    return DDPStrategy(**{"find_unused_parameters": False, **options})


def _fsdp(accelerator: str, precision: str, block_types: Any, options: dict[str, Any]) -> Strategy:
    # FSDP2 does its own mixed precision (bf16 compute, fp32 master weights and gradient reduction)
    mixed = "bfloat16" if precision.startswith("bf16") else None
    return FSDP2Strategy(
        block_types=list(block_types) if block_types else None, mixed_precision=mixed, **options
    )


def _zero(stage: int, offload: bool = False) -> Callable[..., Strategy]:
    def build(accelerator: str, precision: str, block_types: Any, options: dict[str, Any]) -> Strategy:
        # our batches are dicts from an endless loader, which Lightning cannot read a batch size from;
        # DeepSpeed uses this number only for its timing logs
        kwargs: dict[str, Any] = {"stage": stage, "logging_batch_size_per_gpu": 1}
        if stage == 3:
            kwargs.update(ZERO3_BUFFERS)
        if offload:
            kwargs.update(offload_optimizer=True, offload_parameters=True)
        # DeepSpeed's stage3_* keys are not Lightning constructor arguments: they go into the config itself
        stage3 = {
            **(ZERO3_CONFIG if stage == 3 else {}),
            **{k: options.pop(k) for k in list(options) if k.startswith("stage3_")},
        }
        strategy = CPUDeepSpeedStrategy(**{**kwargs, **options})
        strategy.config.setdefault("zero_optimization", {}).update(stage3)
        return strategy

    return build


# ZeRO-3 buffer sizes (elements). Lightning's defaults (reduce bucket 2e8, one optimizer sub-group of up to
# 1e12 parameters, and DeepSpeed's 1e9 live gathered parameters) make every rank hold buffers as large as a
# whole ~100M-parameter model: a contiguous gradient bucket of reduce_bucket_size elements, a zeroed buffer
# the size of the largest sub-group's *unpartitioned* parameters at optimizer set-up, and gathered layers
# kept between forward and backward. That cancels ZeRO-3's saving below ~1B parameters. These bound each at
# <= 80 MB in fp32 (benchmarks/README.md, "distributed"); big models on fast interconnects may raise them
# through strategy.options, e.g. strategy.options.reduce_bucket_size=2e8.
ZERO3_BUFFERS: dict[str, Any] = {"reduce_bucket_size": int(5e6), "sub_group_size": int(2e7)}
ZERO3_CONFIG: dict[str, Any] = {
    "stage3_prefetch_bucket_size": int(5e6),
    "stage3_max_live_parameters": int(1e7),
}

STRATEGIES: dict[str, _Kind] = {
    "single": _Kind("one process on one device", _single, multi_process=False),
    "ddp": _Kind("data parallel, full replica per process", _ddp),
    "fsdp": _Kind("FSDP2: parameters, gradients and optimizer state sharded per block", _fsdp),
    "deepspeed_zero1": _Kind("DeepSpeed ZeRO-1: optimizer state sharded", _zero(1), needs_deepspeed=True),
    "deepspeed_zero2": _Kind("DeepSpeed ZeRO-2: + gradients sharded", _zero(2), needs_deepspeed=True),
    "deepspeed_zero3": _Kind("DeepSpeed ZeRO-3: + parameters sharded", _zero(3), needs_deepspeed=True),
    "deepspeed_zero3_offload": _Kind(
        "ZeRO-3 with parameters and optimizer state offloaded from GPU to CPU memory",
        _zero(3, offload=True),
        needs_gpu=True,
        needs_deepspeed=True,
    ),
}


def _resolve_accelerator(accelerator: str) -> str:
    if accelerator in ("auto", "gpu", "cuda"):
        return "gpu" if torch.cuda.is_available() else ("cpu" if accelerator == "auto" else "missing-gpu")
    if accelerator != "cpu":
        raise ValueError(
            f"strategy.accelerator={accelerator!r} is not one of auto, cpu, gpu; pick one of these."
        )
    return accelerator


def _resolve_devices(devices: int | str, accelerator: str, multi_process: bool) -> int:
    if devices == "auto":
        if not multi_process:
            return 1
        return max(torch.cuda.device_count(), 1) if accelerator == "gpu" else 1
    try:
        count = int(devices)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"strategy.devices={devices!r} is not a count; expected 'auto' or an integer >= 1."
        ) from err
    if count < 1:
        raise ValueError(f"strategy.devices={count} must be >= 1.")
    return count


def _resolve_precision(precision: str, accelerator: str) -> str:
    if precision != "auto":
        return precision
    if accelerator != "gpu":
        return "32-true"  # CPU autocast to bf16 is slow and changes the numerics of the reference runs
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def _problem(name: str, accelerator: str, devices: int | str, num_nodes: int) -> str | None:
    """Why strategy ``name`` cannot run with this hardware and configuration, or None if it can."""
    kind = STRATEGIES[name]
    if accelerator == "missing-gpu":
        return "accelerator=gpu was asked for but no CUDA device is visible"
    if kind.needs_gpu and accelerator != "gpu":
        return f"{name} moves GPU memory to the CPU, and this run has no GPU (accelerator={accelerator})"
    if kind.needs_deepspeed and (missing := extra_problem("deepspeed", "deepspeed", f"strategy={name}")):
        return missing
    count = _resolve_devices(devices, accelerator, kind.multi_process)
    if not kind.multi_process and (count > 1 or num_nodes > 1):
        return f"{name} runs one process, but devices={count} and num_nodes={num_nodes} were asked for"
    if accelerator == "gpu" and count > torch.cuda.device_count():
        return f"devices={count} GPUs were asked for, but {torch.cuda.device_count()} are visible"
    if kind.multi_process and not torch.distributed.is_available():
        return "this PyTorch build has no torch.distributed"
    return None


def available_strategies(
    accelerator: str = "auto", devices: int | str = "auto", num_nodes: int = 1
) -> list[str]:
    """Names of the strategies this machine can run with the given accelerator, devices and nodes."""
    resolved = _resolve_accelerator(accelerator)
    return [name for name in STRATEGIES if _problem(name, resolved, devices, num_nodes) is None]


@dataclass
class StrategySetup:
    """A built strategy: Trainer arguments plus the model transforms applied before sharding.

    ``trainer_kwargs`` holds ``strategy``, ``accelerator``, ``devices``, ``num_nodes`` and ``precision``;
    :meth:`prepare_model` applies activation checkpointing and compile (the order is documented in
    :mod:`pfm.distributed.parallelize`); the strategy itself shards at set-up.
    """

    name: str
    trainer_kwargs: dict[str, Any]
    activation_checkpointing: bool = False
    compile: bool = False
    block_types: list[str] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Steps 1-2 of the documented order (checkpoint, compile) on ``model``'s blocks, in place."""
        return prepare_model(
            model,
            activation_checkpointing=self.activation_checkpointing,
            compile=self.compile,
            block_types=self.block_types,
        )


def build_strategy(
    name: str,
    *,
    accelerator: str = "auto",
    devices: int | str = "auto",
    num_nodes: int = 1,
    precision: str = "auto",
    activation_checkpointing: bool = False,
    compile: bool = False,
    block_types: Sequence[str] | None = None,
    options: dict[str, Any] | None = None,
    cpu_mmap_threshold_mib: float | None = 1.0,
) -> StrategySetup:
    """Build strategy ``name`` (a key of ``STRATEGIES``) for this hardware, or fail naming those that work.

    ``precision="auto"`` means bf16 mixed precision on GPU and fp32 on CPU. ``options`` go to the strategy's
    constructor (e.g. ``{"allgather_bucket_size": 2e8}`` for DeepSpeed); DeepSpeed's ``stage3_*`` keys go
    into its config. ``cpu_mmap_threshold_mib`` applies to multi-process CPU runs (see
    :mod:`pfm.distributed.memory`; null leaves the C library's default).
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy name {name!r} is unknown; expected one of {', '.join(STRATEGIES)}.")
    resolved = _resolve_accelerator(accelerator)
    problem = _problem(name, resolved, devices, num_nodes)
    if problem is not None:
        working = available_strategies("cpu" if resolved == "missing-gpu" else resolved, devices, num_nodes)
        hint = (
            "accelerator=cpu" if resolved == "missing-gpu" else f"accelerator={resolved}, devices={devices}"
        )
        raise RuntimeError(
            f"strategy={name} cannot run here: {problem}. Strategies that will work here ({hint}): "
            f"{', '.join(working) or 'none'}; pick one with strategy=<name>."
        )
    kind = STRATEGIES[name]
    if kind.needs_deepspeed and resolved == "cpu":
        # read by DeepSpeed when first asked for its accelerator; child processes inherit it
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if cpu_mmap_threshold_mib is not None and resolved == "cpu" and kind.multi_process:
        # every rank runs this before it builds the model (Lightning re-executes the script for rank > 0)
        set_cpu_mmap_threshold(cpu_mmap_threshold_mib)
    precision = _resolve_precision(str(precision), resolved)
    strategy = kind.build(resolved, precision, block_types, dict(options or {}))
    trainer_precision = "32-true" if name == "fsdp" and precision.startswith("bf16") else precision
    return StrategySetup(
        name=name,
        trainer_kwargs={
            "strategy": strategy,
            "accelerator": resolved,
            "devices": _resolve_devices(devices, resolved, kind.multi_process),
            "num_nodes": num_nodes,
            "precision": trainer_precision,
        },
        activation_checkpointing=activation_checkpointing,
        compile=compile,
        block_types=list(block_types) if block_types else None,
        options=dict(options or {}),
    )
