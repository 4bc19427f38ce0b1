"""The Well's HDF5 datasets as field windows (see :mod:`pfm.data.fields` for the batch layout).

A dataset folder holds ``data/train``, ``data/valid`` and ``data/test``, each a folder of ``*.h5``/``*.hdf5``
files, and ``stats.yaml`` beside ``data/``. The layout's names, checks and reads live in
:mod:`pfm.wellfmt.layout` (``pfm data check`` runs the same checks). In every file (The Well's
``docs/data_format.md``):

- root attributes ``dataset_name``, ``n_spatial_dims``, ``n_trajectories``, ``grid_type``;
- ``dimensions``: attribute ``spatial_dims`` (e.g. ``['x', 'y']``), one coordinate dataset per spatial axis and
  ``time`` ``(steps,)`` (or ``(trajectories, steps)`` when ``sample_varying``);
- ``boundary_conditions``: one group per boundary with attribute ``bc_type`` (periodic/wall/open);
- ``t0_fields``, ``t1_fields``, ``t2_fields``: attribute ``field_names``; each field a dataset
  ``(trajectories, steps, *spatial[, D[, D]])`` with attributes ``sample_varying``, ``time_varying`` and
  ``dim_varying`` (a field that does not vary along an axis is broadcast along it). A vector field ``velocity`` becomes channels ``velocity_x``, ``velocity_y``, ... and a tensor
  field ``stress`` channels ``stress_xx``, ``stress_xy``, ... (The Well's own channel names); ``rename`` maps
  them to pfm's names (on top of ``DEFAULT_RENAME``: ``velocity_x -> vel_x`` etc., as GPhyT names them).

Fields that do not vary in time are constant inputs in The Well; a next-frame model has nothing to predict for
them, so they are left out. ``stats.yaml`` holds ``mean`` and ``std`` (and ``rms``, ``*_delta``) per field,
a number for scalars and one per component for vectors and tensors.

Normalisation (``normalization``): ``stats`` standardises each channel with ``stats.yaml``'s mean and std, the
same in every split; ``sample`` standardises each window per channel with the mean and std of its context
frames (as the official GPhyT does); ``none`` keeps raw values.

Why not the ``the_well`` package: it installs cleanly, but its ``WellDataset`` opens the HDF5 file again for
every item and draws the time stride from NumPy's global random state (not reproducible per worker or on
resume), and it returns its own dict layout. Here each worker opens each file once and keeps it open, every
read is one h5py hyperslab per field (``[trajectory, t0:t1:stride]``), so only the window is read, and strides
come from ``(seed, index, epoch)``.

Public names: ``WellDataModule``, ``WellDataset``, ``DEFAULT_RENAME``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from datagen.seeding import derive_seed, generator
from pfm.data.layout import process_rank
from pfm.data.stream_state import TrainedBatchStream
from pfm.wellfmt.layout import WellFile

__all__ = ["DEFAULT_RENAME", "WellDataModule", "WellDataset"]

#: The Well's channel names that GPhyT spells differently.
DEFAULT_RENAME: dict[str, str] = {"velocity_x": "vel_x", "velocity_y": "vel_y", "velocity_z": "vel_z"}


class WellDataset(Dataset):
    """Windows of ``length`` frames, ``stride`` steps apart, from one split folder of a Well dataset.

    Item ``i`` is a ``(file, trajectory, start)`` triple; its stride is drawn uniformly from
    ``[min_stride, max_stride]`` (as far as the trajectory allows) with a seed derived from ``(seed, i, epoch)``.
    Items are dicts with ``input`` ``(length, *grid, channels)`` float32, ``field_mask`` ``(channels,)``,
    ``source``, ``dt`` and ``stride`` (scalars).
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        length: int,
        min_stride: int = 1,
        max_stride: int = 1,
        num_context: int = 1,
        normalization: Literal["stats", "sample", "none"] = "stats",
        stats: Mapping[str, Any] | None = None,
        rename: Mapping[str, str] | None = None,
        source: int = 0,
        seed: int = 0,
    ) -> None:
        folder = Path(folder)
        files = sorted([*folder.glob("*.h5"), *folder.glob("*.hdf5")])
        if not files:
            raise FileNotFoundError(
                f"No *.h5 or *.hdf5 files in {folder}; data.path must be a Well dataset folder holding "
                "data/train, data/valid and data/test."
            )
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
        self.length, self.min_stride, self.max_stride = length, min_stride, max_stride
        self.num_context = num_context
        self.normalization = normalization
        rename = {**DEFAULT_RENAME, **(rename or {})}
        self.channels = [rename.get(c, c) for c in first.channels]
        self.source = source
        self.seed = seed
        self.epoch = 0
        self.index: list[tuple[int, int, int]] = []
        for i, lay in enumerate(self.layouts):
            last_start = lay.num_steps - 1 - (length - 1) * min_stride
            if last_start < 0:
                raise ValueError(
                    f"{lay.path} has {lay.num_steps} steps per trajectory; a window of {length} frames at "
                    f"stride {min_stride} needs {(length - 1) * min_stride + 1}. Lower data.num_frames, "
                    "data.num_future/num_val_future or data.min_stride."
                )
            self.index += [(i, t, s) for t in range(lay.num_trajectories) for s in range(last_start + 1)]
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

    def __len__(self) -> int:
        """Number of (file, trajectory, start) windows."""
        return len(self.index)

    def set_epoch(self, epoch: int) -> None:
        """Draw different strides in the next epoch."""
        self.epoch = epoch

    def _file(self, i: int):
        import h5py

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
        x = torch.from_numpy(lay.read(self._file(i), traj, steps))  # one hyperslab read per field
        if self.normalization == "stats":
            x = (x - self.mean) / self.std
        elif self.normalization == "sample":
            context = x[: self.num_context].reshape(-1, x.shape[-1])
            x = (x - context.mean(0)) / context.std(0).clamp_min(1e-6)
        return {
            "input": x,
            "field_mask": torch.ones(x.shape[-1], dtype=torch.bool),
            "source": torch.tensor(self.source),
            "dt": torch.tensor(lay.time_step * stride, dtype=torch.float32),
            "stride": torch.tensor(stride),
        }

    def close(self) -> None:
        """Close the open files of this process."""
        for f in self._files.values():
            f.close()
        self._files = {}


class _EpochBatches(Sampler):
    """This process's batches of one epoch, from batch ``start`` on, as lists of ``(item, epoch)`` pairs.

    The epoch's order is a permutation of every window seeded by ``(seed, epoch)``, the same in every process;
    process ``rank`` of ``world`` takes every ``world``-th window of it (the tail that does not split evenly is
    dropped, as is a last partial batch). Set ``epoch`` and ``start`` before iterating.
    """

    def __init__(self, num_items: int, batch_size: int, *, seed: int, rank: int, world: int) -> None:
        self.num_items, self.batch_size, self.seed, self.rank, self.world = (
            num_items,
            batch_size,
            seed,
            rank,
            world,
        )
        self.num_batches = num_items // world // batch_size
        self.epoch = 0
        self.start = 0

    def __len__(self) -> int:
        """Batches left in this epoch from ``start``."""
        return max(self.num_batches - self.start, 0)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = torch.randperm(self.num_items, generator=generator(self.seed, self.epoch, "well-order"))
        mine = order[: self.num_items // self.world * self.world][self.rank :: self.world].tolist()
        size, epoch = self.batch_size, self.epoch
        return iter(
            [
                [(i, epoch) for i in mine[b * size : (b + 1) * size]]
                for b in range(self.start, self.num_batches)
            ]
        )


class WellDataModule(TrainedBatchStream, L.LightningDataModule):
    """Field windows from a dataset in The Well's layout: ``data=well data.path=<dataset folder>``.

    Training reads ``data/train`` with random strides in ``[min_stride, max_stride]`` and ``num_future`` target
    frames; validation reads ``data/valid`` at ``min_stride`` with ``num_val_future`` frames (rollouts), using
    ``num_val_samples`` windows evenly spread over the split (all when None). ``batch_size`` is per process.
    ``name`` (default: the files' ``dataset_name``) is the source name in metrics.

    The training stream is endless: epoch after epoch, each a permutation of the windows seeded by
    ``(seed, epoch)``, split over processes (every ``world``-th window). Its position is ``(epoch, batch)``;
    :meth:`state_dict` gives the position just after the last trained batch (batches read ahead by the
    Trainer's fetcher or by workers do not count, see :mod:`pfm.data.stream_state`), so a resumed run trains
    on the same windows with the same strides as an uninterrupted one.
    """

    def __init__(
        self,
        path: str,
        *,
        num_frames: int = 4,
        num_future: int = 1,
        num_val_future: int = 4,
        min_stride: int = 1,
        max_stride: int = 1,
        normalization: Literal["stats", "sample", "none"] = "stats",
        rename: Mapping[str, str] | None = None,
        name: str | None = None,
        batch_size: int = 4,
        num_workers: int = 0,
        num_val_samples: int | None = 16,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.path = Path(path).expanduser()
        train = self.path / "data" / "train"
        if not train.is_dir():
            raise FileNotFoundError(
                f"data.path={path!r} has no data/train folder; expected The Well's layout "
                "<dataset>/data/{train,valid,test}/*.hdf5 with <dataset>/stats.yaml."
            )
        stats_path = self.path / "stats.yaml"
        self.stats = yaml.safe_load(stats_path.read_text()) if stats_path.is_file() else None
        self.num_frames, self.num_future, self.num_val_future = num_frames, num_future, num_val_future
        self.batch_size, self.num_workers, self.num_val_samples = batch_size, num_workers, num_val_samples
        self.seed = seed
        common = {
            "min_stride": min_stride,
            "num_context": num_frames,
            "normalization": normalization,
            "stats": self.stats,
            "rename": dict(rename) if rename is not None else None,
            "seed": seed,
        }
        self.train_set = WellDataset(train, length=num_frames + num_future, max_stride=max_stride, **common)
        self._val_args = common
        layout = self.train_set.layouts[0]
        self.name = name or layout.dataset_name
        self.fields = tuple(self.train_set.channels)
        self.num_spatial_dims = layout.num_spatial_dims
        self.grid = layout.grid
        self.boundary_conditions = layout.boundary_conditions
        self._epoch, self._batch = 0, 0  # the training stream's position: the next batch to read
        self._batches: _EpochBatches | None = None
        self._loader: DataLoader | None = None
        self._iterator: Iterator | None = None
        self.generation_seconds = 0.0

    @property
    def pde_names(self) -> list[str]:
        """The one source of this module (the dataset's name)."""
        return [self.name]

    @property
    def spec(self) -> dict[str, Any]:
        """What the model takes from the data: field names, spatial axes, grid and context frames."""
        return {
            "fields": self.fields,
            "num_spatial_dims": self.num_spatial_dims,
            "grid": tuple(self.grid),
            "num_frames": self.num_frames,
        }

    def setup(self, stage: str | None = None) -> None:
        """Split the training windows over this run's processes (the Trainer's rank and world size)."""
        rank, world = process_rank(self.trainer)
        if (
            self._loader is not None
            and self._batches is not None
            and (self._batches.rank, self._batches.world) == (rank, world)
        ):
            return
        batches = _EpochBatches(len(self.train_set), self.batch_size, seed=self.seed, rank=rank, world=world)
        if batches.num_batches < 1:
            raise ValueError(
                f"{self.path}/data/train holds {len(self.train_set)} windows; {world} process(es) with "
                f"data.batch_size={self.batch_size} need at least {world * self.batch_size}. Lower "
                "data.batch_size (it is per process) or data.num_frames."
            )
        self._close_loader()
        self._batches = batches
        self._loader = DataLoader(
            self.train_set,
            batch_sampler=batches,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _capture_position(self) -> tuple[int, int]:
        return self._epoch, self._batch

    def _restore_position(self, position: tuple[int, int]) -> None:
        self._epoch, self._batch = int(position[0]), int(position[1])
        self._iterator = None  # the next read starts a loader pass at that position

    def _produce(self) -> dict[str, torch.Tensor]:
        """The next batch of the endless stream, reading from the position ``(epoch, batch)``."""
        start = time.perf_counter()
        if self._loader is None:
            self.setup()
        assert self._batches is not None and self._loader is not None
        while True:
            if self._iterator is None:
                self.train_set.set_epoch(self._epoch)
                self._batches.epoch, self._batches.start = self._epoch, self._batch
                self._iterator = iter(self._loader)
            try:
                batch = next(self._iterator)
                break
            except StopIteration:
                self._epoch, self._batch, self._iterator = self._epoch + 1, 0, None
        self._batch += 1
        self.generation_seconds = time.perf_counter() - start
        return batch

    def val_dataloader(self) -> DataLoader:
        """Windows of ``data/valid`` at ``min_stride``, ``num_val_future`` future frames."""
        folder = self.path / "data" / "valid"
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{self.path} has no data/valid folder; The Well's layout has one per split."
            )
        val = WellDataset(
            folder, length=self.num_frames + self.num_val_future, max_stride=1, **self._val_args
        )
        if val.channels != list(self.fields):
            raise ValueError(
                f"data/valid holds channels {val.channels}; data/train holds {list(self.fields)}."
            )
        dataset: Dataset = val
        if self.num_val_samples is not None and self.num_val_samples < len(val):
            picks = np.linspace(0, len(val) - 1, self.num_val_samples).round().astype(int).tolist()
            dataset = Subset(val, picks)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=0)

    def _close_loader(self) -> None:
        # dropping the loader and its iterator stops persistent workers
        self._iterator = self._loader = None

    def teardown(self, stage: str | None = None) -> None:
        """Stop the training readers and close this process's open files."""
        self._close_loader()
        self.train_set.close()

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "batch"}``: the training stream's position just after the last trained batch."""
        epoch, batch = self.trained_position()
        return {"epoch": epoch, "batch": batch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the training stream at the saved position."""
        if "epoch" not in state_dict or "batch" not in state_dict:
            raise ValueError(
                f"The checkpoint's Well data state {sorted(state_dict)} has no 'epoch'/'batch' (written by an "
                "older pfm, which did not resume the Well stream); resume with resume=null and init_from=<ckpt>."
            )
        self._forget_positions()
        self._restore_position((state_dict["epoch"], state_dict["batch"]))
