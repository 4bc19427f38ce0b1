"""The files of a dataset in The Well's layout as the training reader sees them: one split folder's HDF5 files
(their layouts, the trajectories used, per-process file handles), ``stats.yaml`` and the channel names.

The layout's names, checks and reads are :mod:`pfm.wellfmt.layout`'s; the datasets built on these files are in
:mod:`pfm.data.well_dataset`, the DataModule in :mod:`pfm.data.well` (whose docstring describes the format).

Public names: ``DEFAULT_RENAME``, ``SplitFiles``, ``split_folder_files``, ``read_stats``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
import torch
import yaml
from torch.utils.data import Dataset

from pfm.wellfmt.layout import WellFile, split_files

__all__ = ["DEFAULT_RENAME", "SplitFiles", "read_stats", "split_folder_files"]

#: The Well's channel names that GPhyT spells differently.
DEFAULT_RENAME: dict[str, str] = {"velocity_x": "vel_x", "velocity_y": "vel_y", "velocity_z": "vel_z"}


def split_folder_files(folder: Path) -> list[Path]:
    """The HDF5 files of a split folder, sorted; a clear error when there are none."""
    files = split_files(folder) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(
            f"No *.h5 or *.hdf5 files in {folder}; data.path must be a Well dataset folder holding "
            "data/train, data/valid and data/test (`pfm data check DIR` lists what is wrong)."
        )
    return files


def read_stats(path: Path) -> Mapping[str, Any]:
    """``stats.yaml`` as a mapping; a truncated, empty or foreign file fails naming it and the fix."""
    fix = "Fix: write it again with `pfm data stats <dataset>`, or set data.normalization=sample."
    try:
        stats = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid YAML ({err}); a truncated copy? {fix}") from err
    if not isinstance(stats, Mapping):
        raise ValueError(
            f"{path} holds {type(stats).__name__}, not a mapping with 'mean' and 'std' per field. {fix}"
        )
    return stats


class SplitFiles(Dataset):
    """One split folder's HDF5 files: layouts, the trajectories used, stats and per-process file handles."""

    def __init__(
        self,
        folder: str | Path,
        *,
        normalization: Literal["stats", "sample", "none"] = "stats",
        stats: Mapping[str, Any] | None = None,
        rename: Mapping[str, str] | None = None,
        max_trajectories: int | None = None,
        source: int = 0,
        seed: int = 0,
    ) -> None:
        folder = Path(folder)
        files = split_folder_files(folder)
        if normalization not in ("stats", "sample", "none"):
            raise ValueError(f"data.normalization={normalization!r}; expected 'stats', 'sample' or 'none'.")
        self.layouts = [WellFile(p) for p in files]
        first = self.layouts[0]
        for lay in self.layouts[1:]:
            if (lay.grid, lay.channels) != (first.grid, first.channels):
                raise ValueError(
                    f"{lay.path} holds grid {lay.grid} and channels {lay.channels}, but {first.path} holds "
                    f"{first.grid} and {first.channels}; one split folder must hold one dataset."
                )
        # (file, trajectory) pairs in file order; max_trajectories keeps the first N (few-shot training)
        self.trajectories = [
            (i, t) for i, lay in enumerate(self.layouts) for t in range(lay.num_trajectories)
        ]
        if max_trajectories is not None:
            if not 1 <= max_trajectories <= len(self.trajectories):
                raise ValueError(
                    f"data.max_trajectories={max_trajectories}, but {folder} holds {len(self.trajectories)} "
                    f"trajectories; choose 1 to {len(self.trajectories)}, or null for all."
                )
            self.trajectories = self.trajectories[:max_trajectories]
        self.normalization = normalization
        rename = {**DEFAULT_RENAME, **(rename or {})}
        self.channels = [rename.get(c, c) for c in first.channels]
        self.source = source
        self.seed = seed
        self.epoch = 0
        self.mean = self.std = None
        if normalization == "stats":
            self.mean, self.std = self._stats(stats, first)
        self._files: dict[int, Any] = {}
        self._pid: int | None = None

    @staticmethod
    def _stats(stats: Mapping[str, Any] | None, layout: WellFile) -> tuple[torch.Tensor, torch.Tensor]:
        if stats is None or "mean" not in stats or "std" not in stats:
            raise ValueError(
                "data.normalization=stats needs stats.yaml beside data/ with 'mean' and 'std' per field; "
                "add it, or set data.normalization=sample."
            )
        means, stds = [], []
        for info in layout.fields:
            field, names = info.name, info.channels
            if field not in stats["mean"] or field not in stats["std"]:
                raise ValueError(
                    f"stats.yaml has no mean/std for field {field!r}; it lists {list(stats['mean'])}."
                )
            mean = np.asarray(stats["mean"][field], dtype=np.float32).reshape(-1)
            std = np.asarray(stats["std"][field], dtype=np.float32).reshape(-1)
            means += list(np.broadcast_to(mean, (len(names),)))
            stds += list(np.broadcast_to(std, (len(names),)))
        # as in The Well, a near-constant field is not blown up by a tiny std
        return torch.tensor(means), torch.tensor(stds).clamp_min(1e-4)

    def set_epoch(self, epoch: int) -> None:
        """Draw different strides (and crops) in the next epoch."""
        self.epoch = epoch

    def _file(self, i: int):
        # each worker process opens its own handles (h5py handles do not survive fork) and keeps them open
        if self._pid != os.getpid():
            self._files, self._pid = {}, os.getpid()
        if i not in self._files:
            self._files[i] = h5py.File(self.layouts[i].path, "r")
        return self._files[i]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_files"], state["_pid"] = {}, None
        return state

    def close(self) -> None:
        """Close the open files of this process."""
        for f in self._files.values():
            f.close()
        self._files = {}

    @staticmethod
    def _corner(rng: np.random.Generator, grid: tuple[int, ...], crop: int | None) -> tuple[slice, ...]:
        """A random cube of side ``crop`` inside ``grid`` (the whole grid when ``crop`` is None)."""
        if crop is None:
            return tuple(slice(0, n) for n in grid)
        starts = [int(rng.integers(0, n - crop + 1)) for n in grid]
        return tuple(slice(a, a + crop) for a in starts)
