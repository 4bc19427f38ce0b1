"""Which data shards this process generates: the split of a global batch over processes and shards.

Every online DataModule (PDE pools, chain pools) splits its *global* ``batch_size`` evenly over
``num_data_shards`` shards (default: one per process); each process generates only its own shards, so the union
of all processes' samples does not depend on the number of processes.

Public names: ``ShardLayout``, ``shard_layout``, ``process_rank``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ShardLayout", "process_rank", "shard_layout"]


def process_rank(trainer: Any) -> tuple[int, int]:
    """``(global rank, world size)`` of this process: the Trainer's, else torch.distributed's, else ``(0, 1)``."""
    world = getattr(trainer, "world_size", None)
    if isinstance(world, int):
        return int(getattr(trainer, "global_rank", 0)), world
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@dataclass(frozen=True)
class ShardLayout:
    """This process's share of the global batch: its ``local`` shard indices of ``num_shards``."""

    rank: int
    world: int
    num_shards: int
    local: list[int]
    samples_per_shard: int


def shard_layout(trainer: Any, *, batch_size: int, num_data_shards: int | None) -> ShardLayout:
    """The shards this process generates; refuses a shard count that does not split the processes and batch."""
    rank, world = process_rank(trainer)
    shards = num_data_shards or world
    if shards < 1 or batch_size < 1 or shards % world or batch_size % shards:
        raise ValueError(
            f"data.num_data_shards={shards} must be a positive multiple of the number of processes ({world}) "
            f"and divide data.batch_size={batch_size}; adjust one of them."
        )
    per_rank = shards // world
    local = list(range(rank * per_rank, (rank + 1) * per_rank))
    return ShardLayout(rank, world, shards, local, batch_size // shards)
