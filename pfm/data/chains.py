"""Online coarse-grained chains for TITO / PLaTITO: (x_t, x_{t+lag}) pairs from on-device Langevin pools.

Batches are dicts: ``x_t``, ``x_next`` ``(B, L, 3)`` nm (centred over valid residues), ``mask`` ``(B, L)``
bool, ``lag`` ``(B,)`` ns, ``temperature`` ``(B,)`` K, ``residue_ids`` ``(B, L)`` long and, unless
``embeddings`` is null (TITO), ``sequence_emb`` ``(B, L, D)``; padded to the batch's longest chain.
``embeddings``: null (TITO: amino-acid identity through ``residue_ids``), ``identity`` (one-hot pLM stand-in,
D = 20), or a table from ``pfm embed`` (its sequences become the library the chains are drawn from).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from datagen.md import AMINO_ACIDS, ChainPool, ForceField
from datagen.seeding import validation_seed
from pfm.data.stream_state import PoolStream
from pfm.embeddings import EmbeddingTable, residue_ids

__all__ = ["ChainDataModule", "pad_batch"]


def pad_batch(parts: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate per-pool batches whose residue axis (dim 1 of 2D+ tensors) differs, zero-padding it."""
    length = max(p["mask"].shape[1] for p in parts)
    out = {}
    for key in parts[0]:
        tensors = []
        for p in parts:
            t = p[key]
            if t.ndim >= 2 and key != "lag":
                pad = [0, 0] * (t.ndim - 2) + [0, length - t.shape[1]]
                t = torch.nn.functional.pad(t, pad)
            tensors.append(t)
        out[key] = torch.cat(tensors)
    return out


class ChainDataModule(PoolStream, L.LightningDataModule):
    """Pairs from pools of coarse-grained C-alpha chains simulated on the training device while training.

    ``batch_size`` is the global batch, split evenly over ``num_pools`` (default: one per process), as
    for the PDE pools. ``lags``/``lag_range`` are in frames of ``frame_ns`` ns each; batches carry ns.
    """

    def __init__(
        self,
        *,
        min_residues: int = 8,
        max_residues: int = 16,
        temperatures: Sequence[float] = (300.0, 350.0, 400.0),
        lags: Sequence[int] | None = (1, 2, 4),
        lag_range: Sequence[int] | None = None,
        frame_ns: float = 1.0,
        num_chains: int = 16,
        substeps: int = 20,
        step_size: float = 2.0e-4,
        warmup_frames: int = 5,
        refresh_fraction: float = 0.05,
        max_bond: float = 1.0,
        force_field: Mapping[str, float] | None = None,
        embeddings: str | None = None,
        batch_size: int = 8,
        steps_per_batch: int = 1,
        num_pools: int | None = None,
        num_val_batches: int = 2,
        val_burn_in_frames: int = 10,
        augment: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not frame_ns > 0:
            raise ValueError(f"data.frame_ns={frame_ns}; expected the frame spacing in ns, > 0.")
        self.pool_kwargs = {
            "num_chains": num_chains,
            "min_residues": min_residues,
            "max_residues": max_residues,
            "temperatures": list(temperatures),
            "lags": list(lags) if lags is not None else None,
            "lag_range": list(lag_range) if lag_range is not None else None,
            "substeps": substeps,
            "step_size": step_size,
            "warmup_frames": warmup_frames,
            "refresh_fraction": refresh_fraction,
            "max_bond": max_bond,
            "force_field": dict(force_field or {}),
        }
        ForceField.from_dict(self.pool_kwargs["force_field"])  # unknown terms fail at construction
        self.frame_ns = float(frame_ns)
        self.embeddings = embeddings
        self.batch_size = batch_size
        self.steps_per_batch = steps_per_batch
        self.num_pools = num_pools
        self.num_val_batches = num_val_batches
        self.val_burn_in_frames = val_burn_in_frames
        self.augment = augment
        self.seed = seed
        self.pools: list[ChainPool] = []
        self.generation_seconds = 0.0
        self._library: list[str] | None = None
        self._library_emb: list[torch.Tensor] = []
        self._plm_dim = 0
        if embeddings == "identity":
            self._plm_dim = len(AMINO_ACIDS)
        elif embeddings is not None:
            table = EmbeddingTable(embeddings)
            self._library = table.library()
            if not self._library:
                raise ValueError(
                    f"data.embeddings={embeddings} stores no sequences (an official .pt file?); online chains "
                    "need a table written by `pfm embed`, whose sequences they are drawn from."
                )
            self._library_emb = [table.for_sequence(s) for s in self._library]
            self._plm_dim = table.dim

    @property
    def spec(self) -> dict[str, int]:
        """What the model takes from the data: the pLM embedding width (0: TITO, amino-acid identity)."""
        return {"plm_dim": self._plm_dim}

    def simulation(self) -> dict[str, Any]:
        """The pool settings (force field, step size, substeps, frame spacing) for long reference runs."""
        return {**self.pool_kwargs, "frame_ns": self.frame_ns}

    def _pool(self, pool_index: int, seed: int, device: torch.device) -> ChainPool:
        sequences = [residue_ids(s).tolist() for s in self._library] if self._library else None
        return ChainPool(
            **self.pool_kwargs, sequences=sequences, seed=seed, pool_index=pool_index, device=device
        )

    def setup(self, stage: str | None = None) -> None:
        """Build this process's pools on the training device."""
        if self.pools:
            return
        device, layout = self._device_and_layout()
        self._library_emb = [e.to(device) for e in self._library_emb]
        self.pools = [self._pool(s, self.seed, device) for s in layout.local]
        self._load_pending_state()

    def finish(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Frames to ns, embeddings looked up; the library index is dropped."""
        batch["lag"] = batch["lag"] * self.frame_ns
        index = batch.pop("sequence_index")
        if self.embeddings == "identity":
            emb = torch.nn.functional.one_hot(batch["residue_ids"], self._plm_dim).float()
            batch["sequence_emb"] = emb * batch["mask"][..., None]
        elif self._library is not None:
            length = batch["mask"].shape[1]
            emb = torch.zeros(*batch["mask"].shape, self._plm_dim, device=batch["x_t"].device)
            for row, i in enumerate(index.tolist()):
                e = self._library_emb[i]
                emb[row, : min(length, e.shape[0])] = e[:length]
            batch["sequence_emb"] = emb
        return batch

    def _produce(self) -> dict[str, torch.Tensor]:
        """Advance the local pools and draw this process's slice of the next global batch.

        Its position is kept by :class:`~pfm.data.stream_state.PoolStream`: ``make_batch()``, ``next_batch()``,
        ``mark_trained()``, ``rewind()`` and ``state_dict()`` (the pools just after the last trained batch).
        """
        start = time.perf_counter()
        parts = []
        for pool in self.pools:
            for _ in range(self.steps_per_batch):
                pool.advance()
            parts.append(pool.sample_pairs(self.samples_per_pool, augment=self.augment))
        batch = self.finish(pad_batch(parts))
        self.generation_seconds = time.perf_counter() - start
        return batch

    @property
    def num_rejected(self) -> int:
        """Chains dropped because they blew up, over this process's pools."""
        return sum(p.num_rejected for p in self.pools)

    def val_dataloader(self) -> DataLoader:
        """A fixed validation set from separately seeded pools, advanced ``val_burn_in_frames`` per batch."""
        device = self.pools[0].device if self.pools else torch.device("cpu")
        batches = []
        for s in self._layout().local:
            pool = self._pool(s, validation_seed(self.seed), device)
            for _ in range(self.num_val_batches):
                for _ in range(max(1, self.val_burn_in_frames)):
                    pool.advance()
                batches.append(self.finish(pool.sample_pairs(self.samples_per_pool, augment=False)))
        return DataLoader(batches, batch_size=None, num_workers=0)
