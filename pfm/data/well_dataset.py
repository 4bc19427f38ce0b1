"""The Well's datasets: windows of frames (GPhyT fields or Tadpole dynamics) and single-channel crops (Tadpole's
autoencoder) from one split folder, with strides and crops drawn from ``(seed, index, epoch)``.

The files are :mod:`pfm.data.well_files`'s; the DataModule streaming them is :mod:`pfm.data.well`.

Public names: ``WellDataset``, ``WellCropDataset``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from datagen.seeding import derive_seed
from pfm.data.well_files import SplitFiles

__all__ = ["WellCropDataset", "WellDataset"]


class WellDataset(SplitFiles):
    """Windows of ``length`` frames, ``stride`` steps apart, from one split folder of a Well dataset.

    Item ``i`` is a ``(file, trajectory, start)`` triple; its stride is drawn uniformly from
    ``[min_stride, max_stride]`` (as far as the trajectory allows) with a seed derived from
    ``(seed, i, epoch)``, and so is its spatial crop (``crop``: a cube of that side, the same in every frame;
    None: whole fields).
    ``sample="fields"`` (GPhyT): dicts with ``input`` ``(length, *grid, channels)`` float32, ``field_mask``
    ``(channels,)``, ``source``, ``dt`` and ``stride`` (scalars). ``sample="windows"`` (Tadpole dynamics):
    ``input`` ``(length, channels, *grid)``, ``channel_mask`` ``(channels,)``, ``pde``, ``dt``, ``stride``.
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        length: int,
        min_stride: int = 1,
        max_stride: int = 1,
        num_context: int = 1,
        sample: Literal["fields", "windows"] = "fields",
        crop: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(folder, **kwargs)
        self.length, self.min_stride, self.max_stride = length, min_stride, max_stride
        self.num_context = num_context
        self.sample, self.crop = sample, crop
        self.index: list[tuple[int, int, int]] = []
        for i, traj in self.trajectories:
            lay = self.layouts[i]
            last_start = lay.num_steps - 1 - (length - 1) * min_stride
            if last_start < 0:
                raise ValueError(
                    f"{lay.path} has {lay.num_steps} steps per trajectory; a window of {length} frames at "
                    f"stride {min_stride} needs {(length - 1) * min_stride + 1}. Lower data.num_frames, "
                    "data.num_future/num_val_future or data.min_stride."
                )
            self.index += [(i, traj, s) for s in range(last_start + 1)]

    def __len__(self) -> int:
        """Number of (file, trajectory, start) windows."""
        return len(self.index)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        """One window (see the class docstring); ``item`` may be ``(index, epoch)`` to name the stride's epoch.

        The training stream passes the epoch with the index, so that workers kept alive across epochs (which
        hold their own copy of this dataset) draw the strides of the right epoch.
        """
        item, epoch = item if isinstance(item, tuple) else (item, self.epoch)
        i, traj, start = self.index[item]
        lay = self.layouts[i]
        room = (lay.num_steps - 1 - start) // max(self.length - 1, 1)
        high = max(self.min_stride, min(self.max_stride, room))
        g = np.random.default_rng(derive_seed(self.seed, item, epoch, "well-stride"))
        stride = int(g.integers(self.min_stride, high + 1))
        steps = slice(start, start + (self.length - 1) * stride + 1, stride)
        region = self._corner(g, lay.grid, self.crop)  # drawn after the stride: uncropped windows unchanged
        x = torch.from_numpy(lay.read(self._file(i), traj, steps, region))  # one hyperslab read per field
        if self.normalization == "stats":
            x = (x - self.mean) / self.std
        elif self.normalization == "sample":
            context = x[: self.num_context].reshape(-1, x.shape[-1])
            x = (x - context.mean(0)) / context.std(0).clamp_min(1e-6)
        mask = torch.ones(x.shape[-1], dtype=torch.bool)
        dt = torch.tensor(lay.time_step * stride, dtype=torch.float32)
        if self.sample == "windows":
            x = x.movedim(-1, 1).contiguous()  # (length, channels, *grid)
            return {
                "input": x,
                "channel_mask": mask,
                "pde": torch.tensor(self.source),
                "dt": dt,
                "stride": torch.tensor(stride),
            }
        return {
            "input": x,
            "field_mask": mask,
            "source": torch.tensor(self.source),
            "dt": dt,
            "stride": torch.tensor(stride),
        }


class WellCropDataset(SplitFiles):
    """Single-channel random crops of every field component (Tadpole's autoencoder), one frame each.

    Item ``i`` is a ``(file, trajectory, step, channel)``; the crop, a cube of side ``crop`` inside the grid,
    is drawn with a seed derived from ``(seed, i, epoch)`` and read as one hyperslab. Items are dicts with
    ``input`` ``(1, crop, crop, crop)`` float32 and ``pde`` (the channel's index: validation errors are
    reported per field component).
    """

    def __init__(self, folder: str | Path, *, crop: int, **kwargs: Any) -> None:
        super().__init__(folder, **kwargs)
        lay = self.layouts[0]
        if crop < 1 or crop > min(lay.grid):
            raise ValueError(
                f"data.crop={crop} does not fit the grid {lay.grid} of {lay.path}; choose a crop side from 1 "
                f"to {min(lay.grid)} (Tadpole needs a multiple of 16)."
            )
        self.crop = crop
        # (field entry, component) per channel: a vector field's components are separate channels
        self.components = [(k, c) for k, info in enumerate(lay.fields) for c in range(len(info.channels))]
        self.index = [
            (i, traj, step, channel)
            for i, traj in self.trajectories
            for step in range(self.layouts[i].num_steps)
            for channel in range(len(self.components))
        ]

    def __len__(self) -> int:
        """Number of (file, trajectory, step, channel) frames."""
        return len(self.index)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        """One crop; ``item`` may be ``(index, epoch)`` to name the epoch its position is drawn for."""
        item, epoch = item if isinstance(item, tuple) else (item, self.epoch)
        i, traj, step, channel = self.index[item]
        lay = self.layouts[i]
        entry, component = self.components[channel]
        g = np.random.default_rng(derive_seed(self.seed, item, epoch, "well-crop"))
        region = self._corner(g, lay.grid, self.crop)
        data = lay.read(self._file(i), traj, slice(step, step + 1), region, (entry, component))
        x = torch.from_numpy(data).reshape(1, *data.shape[1:-1])  # (1, crop, crop, crop)
        if self.normalization == "stats":
            x = (x - self.mean[channel]) / self.std[channel]
        elif self.normalization == "sample":
            x = (x - x.mean()) / x.std().clamp_min(1e-6)
        return {"input": x, "pde": torch.tensor(channel)}
