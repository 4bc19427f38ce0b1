"""Lightning strategies that also run on CPU: DeepSpeed (``DS_ACCELERATOR=cpu``, gloo) and FSDP2 (gloo).

Lightning's stock ``DeepSpeedStrategy`` and ``fsdp`` refuse a CPU accelerator. On GPU these subclasses
behave as the stock ones; on CPU they skip the CUDA-only checks, which is all that stands in the way.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from lightning.fabric.utilities.init import _materialize_distributed_module
from lightning.fabric.utilities.optimizer import _optimizers_to_device
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, ModelParallelStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

from pfm.distributed.parallelize import shard_model

__all__ = ["CPUDeepSpeedStrategy", "FSDP2Strategy"]


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """``DeepSpeedStrategy`` that also accepts Lightning's CPU accelerator (gloo, ``DS_ACCELERATOR=cpu``)."""

    def _on_cpu(self) -> bool:
        return not isinstance(self.accelerator, CUDAAccelerator)

    def setup_environment(self) -> None:
        """Skip the CUDA-only check on CPU; otherwise the stock set-up."""
        if self._on_cpu():
            DDPStrategy.setup_environment(self)
        else:
            super().setup_environment()

    def setup_distributed(self) -> None:
        """Set ranks without validating CUDA device indices (CPU devices have none)."""
        if not self._on_cpu():
            super().setup_distributed()
            return
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    def _setup_model_and_optimizer(
        self, model: nn.Module, optimizer: torch.optim.Optimizer | None, lr_scheduler: Any = None
    ) -> tuple[Any, torch.optim.Optimizer]:
        """``deepspeed.initialize`` with ``device_rank=local_rank``: a CPU device has no index to pass."""
        import deepspeed  # the optional deepspeed extra, needed only by these strategies

        device_rank = self.local_rank if self._on_cpu() else self.root_device.index
        engine, ds_optimizer, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=device_rank),
            config=self.config,
            model=model,
            model_parameters=filter(lambda p: p.requires_grad, model.parameters()),
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            dist_init_required=False,
        )
        return engine, ds_optimizer


class FSDP2Strategy(ModelParallelStrategy):
    """Fully sharded data parallel with PyTorch's FSDP2 (``fully_shard``) on CPU (gloo) or GPU (NCCL).

    Shards each block of the task's networks, then each network, over all processes (see
    :func:`pfm.distributed.parallelize.shard_model`); the task needs no ``configure_model``. Checkpoints
    are gathered into one file on rank 0 by default, so they load with any other strategy.
    """

    def __init__(
        self,
        block_types: list[str] | None = None,
        mixed_precision: str | None = None,
        save_distributed_checkpoint: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            **kwargs,
        )
        self.block_types = block_types
        self.mixed_precision = mixed_precision

    def setup_environment(self) -> None:
        """One data-parallel mesh dimension over every process (no tensor parallelism)."""
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def setup(self, trainer: Any) -> None:
        """Shard the task's networks, then the stock set-up (which requires a ``configure_model`` hook)."""
        # imported when sharding: torch builds without distributed support have no torch.distributed.fsdp
        from torch.distributed.fsdp import MixedPrecisionPolicy

        assert self.model is not None and self.accelerator is not None
        self.accelerator.setup(trainer)
        policy = None
        if self.mixed_precision is not None:
            dtype = getattr(torch, self.mixed_precision)
            # keep reductions in fp32: the gradient average must not depend on the number of processes
            policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        self.model.to(self.root_device)
        shard_model(
            self.model, self.device_mesh["data_parallel"], block_types=self.block_types, mp_policy=policy
        )
        _materialize_distributed_module(self.model, self.root_device)
        self.model = self.precision_plugin.convert_module(self.model)
        self.model_to_device()
        self.barrier()
        if trainer.state.fn == TrainerFn.FITTING:
            self.setup_optimizers(trainer)
        self.setup_precision_plugin()
        if trainer.state.fn == TrainerFn.FITTING:
            _optimizers_to_device(self.optimizers, self.root_device)
