"""pfm.distributed: strategies chosen by config, and the model transforms applied from outside the model.

Public names:
- :func:`build_strategy`, :class:`StrategySetup`, :func:`available_strategies`, ``STRATEGIES``
  (``conf/strategy/*.yaml`` target ``build_strategy``);
- :class:`CPUDeepSpeedStrategy`, :class:`FSDP2Strategy`: Lightning strategies that also run on CPU;
- :func:`set_cpu_mmap_threshold`: stop glibc keeping freed layers resident in multi-process CPU runs;
- :func:`prepare_model`, :func:`shard_model`, :func:`find_blocks`: activation checkpointing -> compile ->
  shard, in that order.
"""

from pfm.distributed.catalog import STRATEGIES, StrategySetup, available_strategies, build_strategy
from pfm.distributed.memory import set_cpu_mmap_threshold
from pfm.distributed.parallelize import find_blocks, prepare_model, shard_model
from pfm.distributed.strategies import CPUDeepSpeedStrategy, FSDP2Strategy

__all__ = [
    "STRATEGIES",
    "CPUDeepSpeedStrategy",
    "FSDP2Strategy",
    "StrategySetup",
    "available_strategies",
    "build_strategy",
    "find_blocks",
    "prepare_model",
    "set_cpu_mmap_threshold",
    "shard_model",
]
