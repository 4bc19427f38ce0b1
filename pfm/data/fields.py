"""Windows of named fields for models that address channels by name (GPhyT), from the online PDE pools.

Every DataModule here (and :mod:`pfm.data.well`, :mod:`pfm.data.mixed`) yields *field windows*:

- ``input`` ``(batch, num_frames + num_future, *spatial, num_fields)``, channels last: ``num_frames`` context
  frames, then the frames to predict;
- ``field_mask`` ``(batch, num_fields)`` bool: which of the module's ``fields`` each sample has (absent ones are
  zero in ``input``);
- ``source`` ``(batch,)``: index of each sample's source (PDE family or dataset) in ``pde_names``;
- ``dt`` ``(batch,)`` physical time between frames and ``stride`` ``(batch,)`` the number of solver frames
  between them (drawn per sample in ``[min_stride, max_stride]`` while training).

Its ``spec`` gives the model ``fields`` (names), ``num_spatial_dims``, ``grid`` (spatial sides) and
``num_frames``. Field names come from ``datagen.fields``.

Public names: ``OnlineFieldDataModule``, ``remap_fields``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from datagen import PDEPool
from datagen.fields import field_names
from datagen.seeding import generator
from pfm.data.online import OnlineWindowDataModule

__all__ = ["OnlineFieldDataModule", "remap_fields"]


def remap_fields(x: torch.Tensor, mask: torch.Tensor, fields: Sequence[str], to: Sequence[str]) -> tuple:
    """Put the channels of ``x`` ``(B, ..., len(fields))`` (mask ``(B, len(fields))``) at their places in ``to``.

    Returns ``(x', mask')`` with ``len(to)`` channels; channels of ``to`` that ``fields`` lacks are zero and
    masked out. Every name of ``fields`` must be in ``to``.
    """
    missing = [f for f in fields if f not in to]
    if missing:
        raise ValueError(f"Fields {missing} are not among the target fields {list(to)}.")
    if list(fields) == list(to):
        return x, mask
    index = torch.tensor([list(to).index(f) for f in fields], device=x.device)
    out = x.new_zeros((*x.shape[:-1], len(to)))
    out[..., index] = x
    out_mask = mask.new_zeros((mask.shape[0], len(to)))
    out_mask[:, index] = mask
    return out, out_mask


class OnlineFieldDataModule(OnlineWindowDataModule):
    """Field windows (see the module docstring) of 2D or 3D PDE families from the on-device pools.

    The union of the families' field names, in order of first appearance, is ``fields``. Each sample's frames
    are ``stride`` pool frames apart, ``stride`` drawn per sample uniformly in ``[min_stride, max_stride]``
    from the pool's ``(seed, pool_index, step)`` stream; validation uses ``min_stride`` and ``num_val_future``
    future frames, so that it can roll out that many steps. The pools' periodic augmentations (rolls, flips,
    axis permutations with vector components following) apply while training. Fields keep their physical scale
    (the task normalises).
    """

    def __init__(
        self,
        pdes: Any,
        *,
        num_frames: int = 4,
        num_future: int = 1,
        num_val_future: int = 4,
        min_stride: int = 1,
        max_stride: int = 1,
        **kwargs: Any,
    ) -> None:
        if num_frames < 1 or num_future < 1 or num_val_future < 1:
            raise ValueError(
                f"data.num_frames={num_frames}, data.num_future={num_future}, "
                f"data.num_val_future={num_val_future}; each must be >= 1."
            )
        if not 1 <= min_stride <= max_stride:
            raise ValueError(
                f"data.min_stride={min_stride}, data.max_stride={max_stride}; expected 1 <= min <= max."
            )
        span = (num_frames + max(num_future, num_val_future) - 1) * max_stride + 1
        kwargs.pop("window", None)
        super().__init__(pdes, window=span, **kwargs)
        self.num_frames = num_frames
        self.num_future = num_future
        self.num_val_future = num_val_future
        self.min_stride = min_stride
        self.max_stride = max_stride
        self.span = span
        d = self.pool_kwargs["num_spatial_dims"]
        self.family_fields = [field_names(f.name, d) for f in self.families]
        self.fields = tuple(dict.fromkeys(name for names in self.family_fields for name in names))

    @property
    def spec(self) -> dict[str, Any]:
        """What the model takes from the data: field names, spatial axes, grid and context frames."""
        d = self.pool_kwargs["num_spatial_dims"]
        side = self.window_crop or self.pool_kwargs["n"]
        return {
            "fields": self.fields,
            "num_spatial_dims": d,
            "grid": (side,) * d,
            "num_frames": self.num_frames,
        }

    def sample(self, pool: PDEPool, batch: int, *, augment: bool) -> dict[str, torch.Tensor]:
        """One pool's slice of training field windows, strides drawn per sample."""
        return self._windows(pool, batch, augment=augment, validating=False)

    def _windows(
        self, pool: PDEPool, batch: int, *, augment: bool, validating: bool
    ) -> dict[str, torch.Tensor]:
        windows = pool.sample_windows(batch, self.span, crop=self.window_crop, augment=augment)
        length = self.num_frames + (self.num_val_future if validating else self.num_future)
        if validating:
            stride = torch.full((batch,), self.min_stride, device=pool.device)
        else:
            g = generator(pool.seed, pool.pool_index, pool.step, "stride", device=pool.device)
            stride = torch.randint(
                self.min_stride, self.max_stride + 1, (batch,), generator=g, device=pool.device
            )
        # the newest frame is the last target; earlier frames every `stride` pool frames back from it
        offsets = torch.arange(length - 1, -1, -1, device=pool.device)
        index = self.span - 1 - stride[:, None] * offsets[None, :]  # (batch, length)
        frames = windows["input"][torch.arange(batch, device=pool.device)[:, None], index]
        # (batch, length, channels, *grid) -> channels last
        frames = frames.movedim(2, -1)
        out = frames.new_zeros((*frames.shape[:-1], len(self.fields)))
        mask = torch.zeros((batch, len(self.fields)), dtype=torch.bool, device=pool.device)
        for i, family in enumerate(windows["pde"].tolist()):
            names = self.family_fields[family]
            index_to = [self.fields.index(name) for name in names]
            out[i, ..., index_to] = frames[i, ..., : len(names)]
            mask[i, index_to] = True
        return {
            "input": out.contiguous(),
            "field_mask": mask,
            "source": windows["pde"],
            "dt": windows["dt"] * stride,
            "stride": stride,
        }

    def finish(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Field windows keep their physical scale."""
        return batch

    def validation_sample(self, pool: PDEPool, batch: int) -> dict[str, torch.Tensor]:
        """One pool's slice of validation windows: ``num_val_future`` future frames at ``min_stride``."""
        return self._windows(pool, batch, augment=False, validating=True)
