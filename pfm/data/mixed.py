"""A run over several sources of field windows (online PDE families, Well datasets) with per-source weights.

Public names: ``MixedFieldDataModule``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from datagen.seeding import generator
from pfm.data.fields import remap_fields

__all__ = ["MixedFieldDataModule"]


class _MixedStream(IterableDataset):
    def __init__(self, module: MixedFieldDataModule) -> None:
        self.module = module

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield self.module.next_batch()


class MixedFieldDataModule(L.LightningDataModule):
    """Each training batch comes from one source, drawn with probability proportional to its weight.

    ``sources`` maps a name to a field-window DataModule (:class:`~pfm.data.fields.OnlineFieldDataModule`,
    :class:`~pfm.data.well.WellDataModule`, ...); ``weights`` maps names to positive weights (1 when left out).
    Drawing a whole batch from one source lets sources differ in grid and batch size; the draw at step k comes
    from ``(seed, k)``, so every process picks the same source at the same step. Batches are remapped onto the
    union of the sources' ``fields`` (absent ones zero and masked out, see :func:`~pfm.data.fields.remap_fields`)
    and ``source`` indexes ``pde_names``, the concatenation of the sources' own names. Validation concatenates
    every source's validation batches. All sources must share ``num_spatial_dims`` and ``num_frames``; ``grid``
    in ``spec`` is the first source's (a model with interpolated position embeddings takes the others).
    Resuming restarts the source draw at the resumed step but not the sources' own streams.
    """

    def __init__(
        self, sources: Mapping[str, Any], *, weights: Mapping[str, float] | None = None, seed: int = 0
    ) -> None:
        super().__init__()
        self.sources = {k: v for k, v in sources.items() if v is not None}
        if not self.sources:
            raise ValueError("data.sources is empty; give at least one source of field windows.")
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(self.sources))
        if unknown:
            raise ValueError(
                f"data.weights names {unknown}, which are not among data.sources {list(self.sources)}."
            )
        self.weights = torch.tensor([float(weights.get(k, 1.0)) for k in self.sources])
        if not bool((self.weights > 0).all()):
            raise ValueError(
                f"data.weights {dict(zip(self.sources, self.weights.tolist(), strict=True))} must all be > 0."
            )
        specs = {k: dict(v.spec) for k, v in self.sources.items()}
        for key in ("num_spatial_dims", "num_frames"):
            values = {k: s[key] for k, s in specs.items()}
            if len(set(values.values())) > 1:
                raise ValueError(f"data.sources disagree on {key}: {values}; every source must use the same.")
        self.fields = tuple(dict.fromkeys(f for s in specs.values() for f in s["fields"]))
        first = next(iter(specs.values()))
        self._spec = {**first, "fields": self.fields}
        self.offsets, offset = {}, 0
        for name, module in self.sources.items():
            self.offsets[name] = offset
            offset += len(getattr(module, "pde_names", [name]))
        self.seed = seed
        self.step = 0
        self._iterators: dict[str, Iterator] = {}
        self._epochs: dict[str, int] = {}
        self.generation_seconds = 0.0

    @property
    def pde_names(self) -> list[str]:
        """Every source's names, in the order of ``data.sources`` (the ``source`` index of each batch)."""
        return [n for k, m in self.sources.items() for n in getattr(m, "pde_names", [k])]

    @property
    def spec(self) -> dict[str, Any]:
        """Union of the sources' fields; spatial axes, grid (first source) and context frames."""
        return dict(self._spec)

    @property
    def pools(self) -> list:
        """The online sources' pools (for rejection counts in the throughput log)."""
        return [p for m in self.sources.values() for p in getattr(m, "pools", [])]

    def setup(self, stage: str | None = None) -> None:
        """Set up every source with this module's trainer (process layout, device)."""
        for module in self.sources.values():
            module.trainer = self.trainer
            module.setup(stage)

    def _remap(self, name: str, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        fields = self.sources[name].spec["fields"]
        x, mask = remap_fields(batch["input"], batch["field_mask"], fields, self.fields)
        return {**batch, "input": x, "field_mask": mask, "source": batch["source"] + self.offsets[name]}

    def _next_from(self, name: str) -> dict[str, torch.Tensor]:
        module = self.sources[name]
        if hasattr(module, "next_batch"):
            # an online source makes its batch here, in step with this module's own stream position
            return module.next_batch()
        if name not in self._iterators:
            self._iterators[name] = iter(self.sources[name].train_dataloader())
        try:
            return next(self._iterators[name])
        except StopIteration:  # a finite source (a Well split): start its next epoch
            self._epochs[name] = self._epochs.get(name, 0) + 1
            dataset = getattr(self.sources[name], "train_set", None)
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(self._epochs[name])
            self._iterators[name] = iter(self.sources[name].train_dataloader())
            return next(self._iterators[name])

    def next_batch(self) -> dict[str, torch.Tensor]:
        """The next training batch, from the source drawn for this step."""
        g = generator(self.seed, "mixed-source", self.step)
        index = int(torch.multinomial(self.weights, 1, generator=g))
        self.step += 1
        name = list(self.sources)[index]
        batch = self._next_from(name)
        self.generation_seconds = getattr(self.sources[name], "generation_seconds", 0.0)
        return self._remap(name, batch)

    def train_dataloader(self) -> DataLoader:
        """An endless loader of mixed batches."""
        return DataLoader(_MixedStream(self), batch_size=None, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        """Every source's validation batches, remapped onto the union of fields."""
        batches = [self._remap(k, b) for k, m in self.sources.items() for b in m.val_dataloader()]
        return DataLoader(batches, batch_size=None, num_workers=0)

    def state_dict(self) -> dict[str, Any]:
        """The step of the source draw."""
        return {"step": self.step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the step of the source draw."""
        self.step = int(state_dict.get("step", 0))
