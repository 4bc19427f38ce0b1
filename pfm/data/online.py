"""LightningDataModule streaming random 3D crops from on-device PDE pools, with no disk in between."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from datagen import FamilySpec, ShardPool

__all__ = ["OnlineCropDataModule"]


def _family_specs(pdes: Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any]]) -> list[FamilySpec]:
    items = pdes.values() if isinstance(pdes, Mapping) else pdes
    return [FamilySpec(**dict(item)) for item in items]


class _CropStream(IterableDataset):
    """Endless stream of batches; each step advances the local shard pools and draws their slices."""

    def __init__(self, module: OnlineCropDataModule) -> None:
        self.module = module

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield self.module.next_batch()


class OnlineCropDataModule(L.LightningDataModule):
    """Single-channel periodic crops from pools of PDE trajectories advanced while training.

    ``batch_size`` is the *global* batch: it is split evenly over ``num_data_shards`` data shards (default:
    one per process) and each process generates only its own shards. Batches are dicts with ``input``
    ``(batch, 1, crop, crop, crop)``, standardized per crop when ``standardize`` is set, and ``pde``
    ``(batch,)``, the index of each crop's family in ``pde_names``.
    """

    def __init__(
        self,
        pdes: Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any]],
        *,
        n: int = 64,
        length: float = 1.0,
        crop: int = 32,
        batch_size: int = 8,
        num_trajectories: int = 8,
        refresh_fraction: float = 0.1,
        steps_per_batch: int = 1,
        num_data_shards: int | None = None,
        num_val_batches: int = 2,
        standardize: bool = True,
        augment: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.families = _family_specs(pdes)
        if not self.families:
            raise ValueError("data.pdes is empty; expected at least one PDE family (see conf/data/pde/).")
        if crop > n:
            raise ValueError(
                f"data.crop={crop} is larger than the grid data.n={n}; set data.crop <= {n} or data.n >= {crop}."
            )
        self.pool_kwargs = {"n": n, "length": length, "num_trajectories": num_trajectories}
        self.refresh_fraction = refresh_fraction
        self.crop = crop
        self.batch_size = batch_size
        self.steps_per_batch = steps_per_batch
        self.num_data_shards = num_data_shards
        self.num_val_batches = num_val_batches
        self.standardize = standardize
        self.augment = augment
        self.seed = seed
        self.pools: list[ShardPool] = []
        self.generation_seconds = 0.0
        self._pending_state: dict[str, Any] | None = None

    @property
    def pde_names(self) -> list[str]:
        """Family names in the order used by the ``pde`` index of each batch."""
        return [f.name for f in self.families]

    @property
    def spec(self) -> dict[str, int]:
        """Shapes that models take from the data: channels, crop size and number of spatial axes."""
        return {"num_channels": 1, "crop_size": self.crop, "num_spatial_dims": 3}

    def _layout(self) -> tuple[int, int, list[int]]:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        shards = self.num_data_shards or world
        if shards % world or self.batch_size % shards:
            raise ValueError(
                f"data.num_data_shards={shards} must be a multiple of the number of processes ({world}) and "
                f"divide data.batch_size={self.batch_size}; adjust one of them."
            )
        per_rank = shards // world
        return rank, shards, list(range(rank * per_rank, (rank + 1) * per_rank))

    def setup(self, stage: str | None = None) -> None:
        """Build this process's shard pools on the training device."""
        if self.pools:
            return
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        _, shards, local = self._layout()
        self.samples_per_shard = self.batch_size // shards
        self.pools = [
            ShardPool(
                self.families,
                refresh_fraction=self.refresh_fraction,
                seed=self.seed,
                shard=s,
                device=device,
                **self.pool_kwargs,
            )
            for s in local
        ]
        if self._pending_state is not None:
            self._restore(self._pending_state)
            self._pending_state = None

    def next_batch(self) -> dict[str, torch.Tensor]:
        """Advance the local pools and draw this process's slice of the next global batch."""
        start = time.perf_counter()
        inputs, labels = [], []
        for pool in self.pools:
            for _ in range(self.steps_per_batch):
                pool.advance()
            x, pde = pool.sample_crops(self.samples_per_shard, self.crop, augment=self.augment)
            inputs.append(x)
            labels.append(pde)
        x = torch.cat(inputs)
        if self.standardize:
            x = _standardize(x)
        self.generation_seconds = time.perf_counter() - start
        return {"input": x, "pde": torch.cat(labels)}

    def train_dataloader(self) -> DataLoader:
        """An endless loader; the pools live on the device, so batches are produced in this process."""
        return DataLoader(_CropStream(self), batch_size=None, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        """A fixed validation set drawn from separately seeded pools."""
        device = self.pools[0].grid.device if self.pools else torch.device("cpu")
        local = self._layout()[2]
        batches = []
        for s in local:
            pool = ShardPool(
                self.families,
                refresh_fraction=1.0,
                seed=self.seed + 1_000_003,
                shard=s,
                device=device,
                **self.pool_kwargs,
            )
            for _ in range(self.num_val_batches):
                pool.advance()
                x, pde = pool.sample_crops(self.samples_per_shard, self.crop, augment=False)
                batches.append({"input": _standardize(x) if self.standardize else x, "pde": pde})
        return DataLoader(batches, batch_size=None, num_workers=0)

    def state_dict(self) -> dict[str, Any]:
        """The state of every local pool, so that a resumed run draws exactly the samples it would have."""
        return {"pools": {pool.shard: pool.state_dict() for pool in self.pools}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore pool states (deferred until :meth:`setup` has built the pools)."""
        if self.pools:
            self._restore(state_dict)
        else:
            self._pending_state = state_dict

    def _restore(self, state: dict[str, Any]) -> None:
        saved = state["pools"]
        for pool in self.pools:
            if pool.shard not in saved:
                raise ValueError(
                    f"The checkpoint has no data state for shard {pool.shard} (it holds {sorted(saved)}); "
                    "resume with the same data.num_data_shards."
                )
            pool.load_state_dict(saved[pool.shard])


def _standardize(x: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(1, x.ndim))
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True).clamp_min(1e-6)
    return (x - mean) / std
