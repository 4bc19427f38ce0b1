"""LightningDataModules streaming samples from on-device PDE pools, with no disk in between.

``OnlineCropDataModule`` yields single-channel 3D crops (Tadpole), ``OnlineWindowDataModule`` windows of
consecutive frames with all fields (GPhyT) and ``OnlinePairDataModule`` lagged pairs (transfer operators).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from datagen import FamilySpec, PDEPool, get_pde
from datagen.seeding import validation_seed
from pfm.data.prefetch import Prefetcher
from pfm.data.stream_state import PoolStream

__all__ = ["OnlineCropDataModule", "OnlinePairDataModule", "OnlineWindowDataModule"]


def _family_specs(pdes: Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any]]) -> list[FamilySpec]:
    """Family specs from ``data.pdes``; an entry set to null (``data.pdes.<name>=null``) drops that family."""
    items = pdes.values() if isinstance(pdes, Mapping) else pdes
    return [FamilySpec(**dict(item)) for item in items if item is not None]


class OnlineCropDataModule(PoolStream, L.LightningDataModule):
    """Single-channel periodic crops from pools of PDE trajectories advanced while training.

    ``batch_size`` is the *global* batch: it is split evenly over ``num_pools`` pools (default:
    one per process) and each process generates only its own pools. Batches are dicts with ``input``
    ``(batch, 1, crop, crop, crop)``, standardized per crop when ``standardize`` is set, and ``pde``
    ``(batch,)``, the index of each crop's family in ``pde_names``.

    With ``prefetch`` (default) the training stream makes the next batch in a background thread (on its own
    CUDA stream on a GPU; with ``prefetch_threads`` intra-op threads on a CPU) while the current one trains:
    same samples, same order. :meth:`state_dict` is the state just after the last *trained* batch (batches
    made ahead do not count), so a run restored from it draws the first untrained batch next.
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
        batches_per_advance: int = 1,
        num_pools: int | None = None,
        num_val_batches: int = 2,
        val_burn_in_steps: int = 20,
        standardize: bool = True,
        augment: bool = True,
        seed: int = 0,
        num_spatial_dims: int = 3,
        history: int = 1,
        max_abs: float = 1e4,
        prefetch: bool = True,
        prefetch_threads: int | None = 1,
    ) -> None:
        super().__init__()
        self.families = _family_specs(pdes)
        if not self.families:
            raise ValueError("data.pdes is empty; expected at least one PDE family (see conf/data/pde/).")
        if crop > n:
            raise ValueError(
                f"data.crop={crop} is larger than the grid data.n={n}; set data.crop <= {n} or data.n >= {crop}."
            )
        self.pool_kwargs = {
            "n": n,
            "length": length,
            "num_trajectories": num_trajectories,
            "num_spatial_dims": num_spatial_dims,
            "history": history,
            "max_abs": max_abs,
        }
        self.refresh_fraction = refresh_fraction
        self.crop = crop
        self.batch_size = batch_size
        self.steps_per_batch = steps_per_batch
        if batches_per_advance < 1:
            raise ValueError(
                f"data.batches_per_advance={batches_per_advance}; expected >= 1 batches drawn from each "
                "advanced pool state (1: advance before every batch)."
            )
        self.batches_per_advance = batches_per_advance
        self.num_pools = num_pools
        self.num_val_batches = num_val_batches
        self.val_burn_in_steps = val_burn_in_steps
        self.standardize = standardize
        self.augment = augment
        self.seed = seed
        self.prefetch = prefetch
        if prefetch_threads is not None and prefetch_threads < 1:
            raise ValueError(
                f"data.prefetch_threads={prefetch_threads}; expected a positive number of generation "
                "threads, or null for torch's default."
            )
        self.prefetch_threads = prefetch_threads
        self.pools: list[PDEPool] = []
        self.generation_seconds = 0.0
        self._prefetcher: Prefetcher | None = None

    @property
    def pde_names(self) -> list[str]:
        """Family names in the order used by the ``pde`` index of each batch."""
        return [f.name for f in self.families]

    @property
    def spec(self) -> dict[str, int]:
        """Shapes that models take from the data: channels, crop size and number of spatial axes."""
        return {
            "num_channels": 1,
            "crop_size": self.crop,
            "num_spatial_dims": self.pool_kwargs["num_spatial_dims"],
        }

    def setup(self, stage: str | None = None) -> None:
        """Build this process's pools on the training device."""
        if self.pools:
            return
        device, layout = self._device_and_layout()
        self.device = device
        if self.prefetch and self.device.type == "cuda":
            # everything the pools allocate lives on the generation stream (see pfm/data/prefetch.py)
            self._cuda_stream = torch.cuda.Stream(self.device)
        with self._generation_context():
            self.pools = [
                PDEPool(
                    self.families,
                    refresh_fraction=self.refresh_fraction,
                    seed=self.seed,
                    pool_index=s,
                    device=device,
                    **self.pool_kwargs,
                )
                for s in layout.local
            ]
        self._load_pending_state()

    # --- the training stream (its position is kept by PoolStream, pfm/data/stream_state.py) ---------------
    def next_batch(self) -> dict[str, torch.Tensor]:
        """Advance the local pools and draw this process's slice of the batch after the last trained one.

        No prefetch; the batch counts as trained at once: :meth:`state_dict` then continues after it.
        """
        self._close_prefetcher()
        return super().next_batch()

    def make_batch(self) -> dict[str, torch.Tensor]:
        """The next batch, made in this thread; it counts as trained only once :meth:`mark_trained` is called."""
        with self._generation_context():
            batch = super().make_batch()
        if self._cuda_stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(self._cuda_stream)
        return batch

    def stream(self) -> Iterator[dict[str, torch.Tensor]]:
        """The endless training stream, made one batch ahead in the background when ``prefetch`` is set.

        Under a Trainer a batch counts as trained when the Trainer takes it for a training step
        (:meth:`on_before_batch_transfer`); otherwise when the stream yields it. A new stream restarts just
        after the last trained batch, so batches made ahead and never trained are made again.
        """
        self._close_prefetcher()
        if not self.prefetch:
            yield from super().stream()
            return
        self.rewind()
        counted_by_trainer = self.trainer is not None
        prefetcher = Prefetcher(
            self._produce,
            self.device,
            num_threads=self.prefetch_threads,
            before_submit=self._record,
            stream=self._cuda_stream,
        )
        self._prefetcher = prefetcher
        try:
            while True:
                batch = prefetcher.next()
                if not counted_by_trainer:
                    self.mark_trained()
                yield batch
        finally:
            prefetcher.close()
            if self._prefetcher is prefetcher:
                self._prefetcher = None

    def _close_prefetcher(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None

    def rewind(self) -> None:
        """Put the pools back just after the last trained batch, dropping batches made ahead."""
        self._close_prefetcher()
        super().rewind()

    def _produce(self) -> dict[str, torch.Tensor]:
        """Advance the local pools once and draw this process's slice of the next global batch."""
        start = time.perf_counter()
        parts = []
        for pool in self.pools:
            # advance before the first batch and then every batches_per_advance batches; the draws in between
            # take other crops of the same states (cheaper generation, more correlated batches)
            if pool.num_draws == 0 or pool.num_draws >= self.batches_per_advance:
                for _ in range(self.steps_per_batch):
                    pool.advance()
            parts.append(self.sample(pool, self.samples_per_pool, augment=self.augment))
        batch = self.finish({k: torch.cat([p[k] for p in parts]) for k in parts[0]})
        self.generation_seconds = time.perf_counter() - start
        return batch

    def sample(self, pool: PDEPool, batch: int, *, augment: bool) -> dict[str, torch.Tensor]:
        """One pool's slice: ``input`` ``(batch, 1, crop, crop, crop)`` and ``pde`` ``(batch,)``."""
        x, pde = pool.sample_crops(batch, self.crop, augment=augment)
        return {"input": x, "pde": pde}

    def finish(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-sample standardization (when enabled) of the concatenated batch."""
        if self.standardize:
            batch["input"] = _standardize(batch["input"])
        return batch

    def val_dataloader(self) -> DataLoader:
        """A fixed validation set drawn from separately seeded pools.

        The pools are refreshed like the training pools and advanced ``val_burn_in_steps`` before each batch,
        so validation sees evolved states of the same distribution rather than raw initial conditions.
        """
        device = self.pools[0].grid.device if self.pools else torch.device("cpu")
        layout = self._layout()
        batches = []
        for s in layout.local:
            pool = PDEPool(
                self.families,
                refresh_fraction=self.refresh_fraction,
                seed=validation_seed(self.seed),
                pool_index=s,
                device=device,
                **self.pool_kwargs,
            )
            for _ in range(self.num_val_batches):
                for _ in range(max(1, self.val_burn_in_steps)):
                    pool.advance()
                batches.append(self.validation_sample(pool, layout.samples_per_pool))
        return DataLoader(batches, batch_size=None, num_workers=0)

    def validation_sample(self, pool: PDEPool, batch: int) -> dict[str, torch.Tensor]:
        """One pool's slice of a validation batch (no augmentation)."""
        return self.finish(self.sample(pool, batch, augment=False))

    def teardown(self, stage: str) -> None:
        """Stop the prefetch thread."""
        self._close_prefetcher()

    def _restore_pools(self, state: dict[str, Any]) -> None:
        self._close_prefetcher()
        super()._restore_pools(state)


class OnlineWindowDataModule(OnlineCropDataModule):
    """Windows of ``window`` consecutive frames with all fields (GPhyT), from the same pools.

    Batches: ``input`` ``(batch, window, channels, *grid_or_crop)`` (channels zero-padded to the largest
    family's count), ``channel_mask`` ``(batch, channels)``, ``pde`` ``(batch,)``, ``dt`` ``(batch,)``.
    ``crop=None`` keeps whole fields (rolled when augmenting). Fields are not standardized by default, so
    that the dynamics keep their scale. The pools keep ``history = window`` frames.
    """

    def __init__(
        self,
        pdes: Any,
        *,
        window: int = 4,
        crop: int | None = None,
        n: int = 32,
        standardize: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("history", window)
        super().__init__(pdes, n=n, crop=crop if crop is not None else n, standardize=standardize, **kwargs)
        self.window = window
        self.window_crop = crop
        if self.pool_kwargs["history"] < window:
            raise ValueError(
                f"data.history={self.pool_kwargs['history']} < data.window={window}; set history >= window."
            )

    @property
    def spec(self) -> dict[str, int]:
        """Shapes that models take from the data: channels, frames, spatial size and axes."""
        d = self.pool_kwargs["num_spatial_dims"]
        channels = max(get_pde(f.name).num_channels(d) for f in self.families)
        size = self.window_crop or self.pool_kwargs["n"]
        return {"num_channels": channels, "num_frames": self.window, "crop_size": size, "num_spatial_dims": d}

    def sample(self, pool: PDEPool, batch: int, *, augment: bool) -> dict[str, torch.Tensor]:
        """One pool's slice of windows."""
        return pool.sample_windows(batch, self.window, crop=self.window_crop, augment=augment)

    def finish(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Standardize each sample over frames and space (when enabled)."""
        if self.standardize:
            batch["input"] = _standardize(batch["input"])
        return batch


class OnlinePairDataModule(OnlineWindowDataModule):
    """Pairs ``(x_t, x_{t+lag})`` for transfer operators: ``input`` and ``target`` ``(batch, channels, *grid)``.

    Also ``channel_mask``, ``pde``, ``dt`` (frame spacing) and ``lag`` ``(batch,)``.
    """

    def __init__(self, pdes: Any, *, lag: int = 1, **kwargs: Any) -> None:
        kwargs.setdefault("history", lag + 1)
        super().__init__(pdes, window=lag + 1, **kwargs)
        self.lag = lag

    @property
    def spec(self) -> dict[str, int]:
        """Shapes that models take from the data: channels, spatial size and axes, and the lag."""
        spec = dict(super().spec)
        spec.pop("num_frames")
        return spec | {"lag": self.lag}

    def sample(self, pool: PDEPool, batch: int, *, augment: bool) -> dict[str, torch.Tensor]:
        """One pool's slice of lagged pairs."""
        return pool.sample_pairs(batch, self.lag, crop=self.window_crop, augment=augment)

    def finish(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Pairs keep their physical scale (a transfer operator must see it)."""
        return batch


def _standardize(x: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(1, x.ndim))
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True).clamp_min(1e-6)
    return (x - mean) / std
