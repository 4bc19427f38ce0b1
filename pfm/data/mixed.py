"""A run over several sources of field windows (online PDE families, Well datasets) with per-source weights.

Public names: ``MixedFieldDataModule``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from datagen.seeding import generator
from pfm.data.fields import remap_fields
from pfm.data.stream_state import PoolStream, TrainedBatchStream, merge_pool_states

__all__ = ["MixedFieldDataModule"]


class MixedFieldDataModule(TrainedBatchStream, L.LightningDataModule):
    """Each training batch comes from one source, drawn with probability proportional to its weight.

    ``sources`` maps a name to a field-window DataModule (:class:`~pfm.data.fields.OnlineFieldDataModule`,
    :class:`~pfm.data.well.WellDataModule`, ...); ``weights`` maps names to positive weights (1 when left out).
    Drawing a whole batch from one source lets sources differ in grid and batch size; the draw at step k comes
    from ``(seed, k)``, so every process picks the same source at the same step. Batches are remapped onto the
    union of the sources' ``fields`` (absent ones zero and masked out, see :func:`~pfm.data.fields.remap_fields`)
    and ``source`` indexes ``pde_names``, the concatenation of the sources' own names. Validation concatenates
    every source's validation batches. All sources must share ``num_spatial_dims`` and ``num_frames``; ``grid``
    in ``spec`` is the first source's (a model with interpolated position embeddings takes the others).

    Exact resume: each source is itself a :class:`~pfm.data.stream_state.TrainedBatchStream`; this module
    makes its batches with the source's ``make_batch()`` and, when the Trainer trains a batch, counts it as
    trained in the source that made it (the source drawn at that step). :meth:`state_dict` is the draw's step
    and every source's state, all just after the last trained batch.
    """

    def __init__(
        self, sources: Mapping[str, Any], *, weights: Mapping[str, float] | None = None, seed: int = 0
    ) -> None:
        super().__init__()
        self.sources = {k: v for k, v in sources.items() if v is not None}
        if not self.sources:
            raise ValueError("data.sources is empty; give at least one source of field windows.")
        for name, module in self.sources.items():
            if not isinstance(module, TrainedBatchStream) or "/" in name:
                raise ValueError(
                    f"data.sources.{name} is a {type(module).__name__}; expected a field-window DataModule "
                    "with a resumable stream (OnlineFieldDataModule, WellDataModule) under a name without '/'."
                )
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
        self.step = 0  # the step of the next source draw
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

    def teardown(self, stage: str | None = None) -> None:
        """Tear every source down (prefetch threads, readers, open files)."""
        for module in self.sources.values():
            module.teardown(stage)

    def _remap(self, name: str, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        fields = self.sources[name].spec["fields"]
        x, mask = remap_fields(batch["input"], batch["field_mask"], fields, self.fields)
        return {**batch, "input": x, "field_mask": mask, "source": batch["source"] + self.offsets[name]}

    def _draw(self, step: int) -> str:
        """The source of the batch made at ``step`` (the same in every process)."""
        g = generator(self.seed, "mixed-source", step)
        return list(self.sources)[int(torch.multinomial(self.weights, 1, generator=g))]

    def _capture_position(self) -> int:
        return self.step

    def _restore_position(self, position: int) -> None:
        # every source goes back to just after its own last trained batch, which is where this step left it
        self.step = position
        for module in self.sources.values():
            module.rewind()

    def _produce(self) -> dict[str, torch.Tensor]:
        """The next training batch, from the source drawn for this step."""
        name = self._draw(self.step)
        self.step += 1
        batch = self.sources[name].make_batch()
        self.generation_seconds = getattr(self.sources[name], "generation_seconds", 0.0)
        return self._remap(name, batch)

    def mark_trained(self) -> None:
        """Count the oldest untrained batch as trained, here and in the source that made it."""
        positions, made, trained = self._stream_counts()
        if made > trained:
            self.sources[self._draw(positions[trained])].mark_trained()
        super().mark_trained()

    def val_dataloader(self) -> DataLoader:
        """Every source's validation batches, remapped onto the union of fields."""
        batches = [self._remap(k, b) for k, m in self.sources.items() for b in m.val_dataloader()]
        return DataLoader(batches, batch_size=None, num_workers=0)

    def state_dict(self) -> dict[str, Any]:
        """The draw's step and every source's state just after the last trained batch.

        Pool states of online sources sit under ``pools`` keyed ``<source>/<pool index>``, so that every
        process's pools merge into one checkpoint state (:meth:`merge_process_states`) as they do for online modules.
        """
        state: dict[str, Any] = {"step": self.trained_position(), "sources": {}, "pools": {}}
        for name, module in self.sources.items():
            source_state = dict(module.state_dict())
            for index, pool_state in source_state.pop("pools", {}).items():
                state["pools"][f"{name}/{index}"] = pool_state
            state["sources"][name] = source_state
        return state

    def merge_process_states(self, states: list[dict[str, Any]]) -> dict[str, Any]:
        """Rank 0's state with every process's pools (see :func:`~pfm.data.stream_state.merge_pool_states`)."""
        return merge_pool_states(states)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the draw's step and every source's stream."""
        saved = state_dict.get("sources")
        if saved is None:
            raise ValueError(
                f"The checkpoint's mixed data state {sorted(state_dict)} holds no source streams (written before "
                "pfm saved them), so it cannot resume exactly; start from its weights with init_from=<ckpt>."
            )
        if set(saved) != set(self.sources):
            raise ValueError(
                f"The checkpoint's mixed data state holds sources {sorted(saved)}; this run has "
                f"{sorted(self.sources)}. Resume with the same data.sources."
            )
        self._forget_positions()
        self.step = int(state_dict["step"])
        for name, module in self.sources.items():
            source_state = dict(saved[name])
            if isinstance(module, PoolStream):
                pools = {}
                for key, pool_state in state_dict.get("pools", {}).items():
                    source, index = str(key).rsplit("/", 1)
                    if source == name:
                        pools[int(index)] = pool_state
                source_state["pools"] = pools
            module.load_state_dict(source_state)
