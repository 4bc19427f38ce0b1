"""Which pools this process generates: the split of a global batch over processes and pools.

Every online DataModule (PDE pools, chain pools) splits its *global* ``batch_size`` evenly over
``num_pools`` pools (default: one per process); each process generates only its own pools, so the union
of all processes' samples does not depend on the number of processes.

Public names: ``PoolLayout``, ``pool_layout``, ``process_rank``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["PoolLayout", "pool_layout", "process_rank"]


def process_rank(trainer: Any) -> tuple[int, int]:
    """``(global rank, world size)`` of this process: the Trainer's, else torch.distributed's, else ``(0, 1)``."""
    world = getattr(trainer, "world_size", None)
    if isinstance(world, int):
        return int(getattr(trainer, "global_rank", 0)), world
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@dataclass(frozen=True)
class PoolLayout:
    """This process's share of the global batch: its ``local`` pool indices of ``num_pools``."""

    rank: int
    world: int
    num_pools: int
    local: list[int]
    samples_per_pool: int


def pool_layout(trainer: Any, *, batch_size: int, num_pools: int | None) -> PoolLayout:
    """The pools this process generates; refuses a pool count that does not split the processes and batch."""
    rank, world = process_rank(trainer)
    pools = num_pools or world
    if pools < 1 or batch_size < 1 or pools % world or batch_size % pools:
        raise ValueError(
            f"data.num_pools={pools} must be a positive multiple of the number of processes ({world}) "
            f"and divide data.batch_size={batch_size}; adjust one of them."
        )
    per_rank = pools // world
    local = list(range(rank * per_rank, (rank + 1) * per_rank))
    return PoolLayout(rank, world, pools, local, batch_size // pools)
