"""LightningDataModule reading webdataset shards written by ``pfm-datagen write``.

It yields the batches the online DataModules yield for the same configuration: ``input`` and ``pde`` (plus
``target``, ``channel_mask`` for pairs and windows), standardized per sample for crops when asked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from datagen.shards import decode_sample

__all__ = ["ShardDataModule"]


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

    def train_dataloader(self) -> DataLoader:
        """Batches of the training shards."""
        return DataLoader(self.dataset(), batch_size=None, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        """Batches of ``val_path``'s shards (or the training shards when none is given)."""
        urls = sorted(str(p) for p in Path(self.val_path).glob("*.tar")) if self.val_path else None
        return DataLoader(self.dataset(urls), batch_size=None, num_workers=0)
