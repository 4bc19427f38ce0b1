"""LightningDataModule reading webdataset shards written by ``pfm-datagen write``.

It yields the batches the online DataModules yield for the same configuration: ``input`` and ``pde`` (plus
``target``, ``channel_mask`` for pairs and windows), standardized per sample for crops when asked.

Resume: without ``resampled`` every epoch reads the shards in the same order, so the stream's position is
(epoch, batches trained in it); ``state_dict()`` holds it as of the last *trained* batch (counted when the
Trainer takes a batch for a step, so batches read ahead by the fetcher or by workers do not count). A resumed
run reads and drops the batches of the current epoch it already trained, then goes on: the same batches in the
same order as an uninterrupted run, at the cost of re-reading at most one epoch. A ``resampled`` stream draws
shards with webdataset's unseeded sampler and is not resumed exactly (a warning says so).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from datagen.shards import decode_sample

__all__ = ["ShardDataModule"]

log = logging.getLogger(__name__)


def _collate(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    keys = [k for k in samples[0] if k != "meta" and not k.startswith("__")]  # webdataset adds __key__
    out = {k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in keys}
    return out


class ShardDataModule(L.LightningDataModule):
    """Batches from the tar shards in ``path`` (a directory with ``format.json``).

    Shards are split over nodes (ranks) and dataloader workers. ``resampled`` draws shards with replacement
    forever (an endless stream); otherwise each epoch reads every shard once, in order. ``batch_size`` is
    per process.
    """

    def __init__(
        self,
        path: str,
        *,
        batch_size: int = 8,
        resampled: bool = False,
        num_workers: int = 0,
        standardize: bool = True,
        val_path: str | None = None,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        fmt = self.path / "format.json"
        if not fmt.is_file():
            raise ValueError(
                f"{fmt} not found; expected a directory written by `pfm-datagen write --out {path}`."
            )
        self.format = json.loads(fmt.read_text())
        self.urls = sorted(str(p) for p in self.path.glob("*.tar"))
        if not self.urls:
            raise ValueError(f"No .tar shards in {self.path}; write some with `pfm-datagen write`.")
        self.batch_size = batch_size
        self.resampled = resampled
        self.num_workers = num_workers
        self.standardize = standardize and self.format["kind"] == "crops"
        self.val_path = val_path
        self._epoch = 0  # epochs begun by the training loader, counting from 0
        self._trained = 0  # batches of the current epoch taken by the Trainer for a step
        self._num_iterations = 0
        self._resume_at: tuple[int, int] | None = None

    @property
    def pde_names(self) -> list[str]:
        """Family names in the order used by the ``pde`` index of each batch."""
        return list(self.format["pde_names"])

    @property
    def spec(self) -> dict[str, int]:
        """Shapes that models take from the data."""
        from datagen import get_pde

        pool = self.format["pool"]
        d = pool.get("num_spatial_dims", 3)
        spec = {
            "num_channels": 1,
            "crop_size": self.format["crop"] or pool.get("n", 64),
            "num_spatial_dims": d,
        }
        if self.format["kind"] != "crops":  # windows and pairs keep all fields, padded to the largest family
            spec["num_channels"] = max(get_pde(name).num_channels(d) for name in self.pde_names)
        if self.format["kind"] == "windows":
            spec["num_frames"] = self.format["window"]
        return spec

    def dataset(self, urls: list[str] | None = None) -> IterableDataset:
        """The webdataset pipeline yielding decoded sample dicts."""
        import webdataset as wds

        ds = wds.WebDataset(
            urls or self.urls,
            resampled=self.resampled,
            shardshuffle=False,
            nodesplitter=wds.split_by_node,
            workersplitter=wds.split_by_worker,
            empty_check=False,
        )
        return ds.map(decode_sample).batched(self.batch_size, collation_fn=self._finish, partial=False)

    def _finish(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = _collate(samples)
        if self.standardize:
            x = batch["input"]
            dims = tuple(range(1, x.ndim))
            batch["input"] = (x - x.mean(dim=dims, keepdim=True)) / x.std(dim=dims, keepdim=True).clamp_min(
                1e-6
            )
        return batch

    def train_dataloader(self) -> _ResumableLoader:
        """Batches of the training shards, from the position after the last trained batch on a resume."""
        loader = DataLoader(self.dataset(), batch_size=None, num_workers=self.num_workers)
        return _ResumableLoader(self, loader)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """A training batch counts as trained when the Trainer takes it for a step (validation ones do not)."""
        if self.trainer is not None and self.trainer.training:
            self._trained += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        """The stream's position after the last trained batch: ``{"epoch", "batch"}``."""
        return {"epoch": self._epoch, "batch": self._trained}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the training stream just after the last trained batch of a checkpoint."""
        if not state_dict:
            return  # a checkpoint written before shard streams had a state: the stream restarts
        if set(state_dict) != {"epoch", "batch"}:
            raise ValueError(
                f"the checkpoint's data state has keys {sorted(state_dict)}, expected ['batch', 'epoch'] of "
                "a data=shards run; it was written by another data module. Start a new run from its weights "
                "with init_from=<checkpoint> instead of resuming."
            )
        if self.resampled:
            log.warning(
                "data.resampled=true draws shards at random without a seed; the resumed run reads other "
                "batches than an uninterrupted one would (exact resume needs data.resampled=false)."
            )
        self._resume_at = (int(state_dict["epoch"]), int(state_dict["batch"]))

    def val_dataloader(self) -> DataLoader:
        """Batches of ``val_path``'s shards (or the training shards when none is given)."""
        urls = sorted(str(p) for p in Path(self.val_path).glob("*.tar")) if self.val_path else None
        return DataLoader(self.dataset(urls), batch_size=None, num_workers=0)


class _ResumableLoader:
    """The training DataLoader; each iteration is an epoch, and the first after a restore skips what was trained."""

    def __init__(self, module: ShardDataModule, loader: DataLoader) -> None:
        self.module = module
        self.loader = loader

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        module = self.module
        skip = 0
        if module._resume_at is not None:
            (module._epoch, skip), module._resume_at = module._resume_at, None
        elif module._num_iterations > 0:
            module._epoch += 1
        module._num_iterations += 1
        module._trained = skip
        batches = iter(self.loader)
        for index in range(skip):
            if next(batches, None) is None:  # the checkpoint was taken at the end of its epoch
                log.info(
                    "Resume: epoch %d ended after %d batches; starting the next one.", module._epoch, index
                )
                module._epoch, module._trained = module._epoch + 1, 0
                batches = iter(self.loader)
                break
        yield from batches
