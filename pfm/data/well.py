"""The Well's HDF5 datasets, 2D or 3D, as GPhyT field windows, Tadpole dynamics windows or Tadpole crops.

``WellDataModule(sample=...)``: ``fields`` (see :mod:`pfm.data.fields` for the batch layout), ``windows``
(channels first, as :class:`pfm.data.OnlineWindowDataModule`) or ``crops`` (single-channel cubes of one frame
of one field component, as :class:`pfm.data.OnlineCropDataModule`).

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
  ``dim_varying`` (a field that does not vary along an axis is broadcast along it). A vector field ``velocity``
  becomes channels ``velocity_x``, ``velocity_y``, ... and a tensor field ``stress`` channels ``stress_xx``,
  ``stress_xy``, ... (The Well's own channel names); ``rename`` maps
  them to pfm's names (on top of ``DEFAULT_RENAME``: ``velocity_x -> vel_x`` etc., as GPhyT names them).

Fields that do not vary in time are constant inputs in The Well; a next-frame model has nothing to predict for
them, so they are left out. ``stats.yaml`` holds ``mean`` and ``std`` (and ``rms``, ``*_delta``) per field,
a number for scalars and one per component for vectors and tensors.

Normalisation (``normalization``): ``stats`` standardises each channel with ``stats.yaml``'s mean and std, the
same in every split; ``sample`` standardises each window per channel with the mean and std of its context
frames (as the official GPhyT does; a Tadpole window by its first frame, a crop by itself); ``none`` keeps raw
values.

Why not the ``the_well`` package: it installs cleanly, but its ``WellDataset`` opens the HDF5 file again for
every item and draws the time stride from NumPy's global random state (not reproducible per worker or on
resume), and it returns its own dict layout. Here each worker opens each file once and keeps it open, every
read is one h5py hyperslab per field (``[trajectory, t0:t1:stride, box]``), so only the window (and crop) is
read, and strides and crop positions come from ``(seed, index, epoch)``.

The split folders' files and ``stats.yaml`` are read by :mod:`pfm.data.well_files`, the windows and crops cut
by :mod:`pfm.data.well_dataset`; this module holds the DataModule and its training stream.

Public names: ``WellDataModule``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from datagen.seeding import generator
from pfm.data.layout import process_rank
from pfm.data.stream_state import TrainedBatchStream
from pfm.data.well_dataset import WellCropDataset, WellDataset
from pfm.data.well_files import read_stats, split_folder_files
from pfm.wellfmt.layout import WellFile

__all__ = ["WellDataModule"]


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
    """A dataset in The Well's layout, 2D or 3D: ``data=well data.path=<dataset folder>``.

    ``sample`` says what a batch holds (None: fields; ``data.sample=null`` in conf/data/well.yaml means what
    the task reads, which :func:`pfm.build.build_task` fills in):

    - ``fields`` (GPhyT, next_frame): windows ``(B, num_frames + num_future, *grid, C)``, channels last;
    - ``windows`` (Tadpole dynamics): ``(B, num_frames + num_future, C, *grid)`` channels first, every field
      component a channel; validation windows hold ``1 + num_val_future`` frames (a rollout from the first);
    - ``crops`` (Tadpole autoencoder): single-channel crops ``(B, 1, crop, crop, crop)`` of one frame of one
      field component, every component of every field in turn; validation errors per component.

    ``crop``: side of the random cube cut from each window or frame (the same in every frame of a window),
    drawn per item and epoch; None: whole fields (``crops`` then takes the largest cube that fits).
    Training reads ``data/train`` with random strides in ``[min_stride, max_stride]``; ``max_trajectories``
    keeps its first N trajectories (few-shot curves; validation is unaffected). Validation reads
    ``data/valid`` at ``min_stride``, ``num_val_samples`` items evenly spread over the split (all when None).
    ``normalization=stats`` standardises each channel with ``stats.yaml`` (the same in every split).
    ``batch_size`` is per process. ``name`` (default: the files' ``dataset_name``) is the source name in
    metrics.

    The training stream is endless: epoch after epoch, each a permutation of the items seeded by
    ``(seed, epoch)``, split over processes (every ``world``-th item). Its position is ``(epoch, batch)``;
    :meth:`state_dict` gives the position just after the last trained batch (batches read ahead by the
    Trainer's fetcher or by workers do not count, see :mod:`pfm.data.stream_state`), so a resumed run trains
    on the same items with the same strides and crops as an uninterrupted one.
    """

    def __init__(
        self,
        path: str,
        *,
        sample: Literal["fields", "windows", "crops"] | None = None,
        num_frames: int = 4,
        num_future: int = 1,
        num_val_future: int = 4,
        min_stride: int = 1,
        max_stride: int = 1,
        crop: int | None = None,
        max_trajectories: int | None = None,
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
        sample = sample or "fields"  # a Well source of data=mixed, or the module built directly
        if sample not in ("fields", "windows", "crops"):
            raise ValueError(
                f"data.sample={sample!r}; expected fields (GPhyT windows), windows (Tadpole dynamics) or "
                "crops (Tadpole autoencoder)."
            )
        stats_path = self.path / "stats.yaml"
        self.stats = read_stats(stats_path) if stats_path.is_file() else None
        self.sample = sample
        self.num_frames, self.num_future, self.num_val_future = num_frames, num_future, num_val_future
        self.batch_size, self.num_workers, self.num_val_samples = batch_size, num_workers, num_val_samples
        self.seed = seed
        files = {
            "normalization": normalization,
            "stats": self.stats,
            "rename": dict(rename) if rename is not None else None,
            "seed": seed,
        }
        if sample == "crops":
            grid = WellFile(split_folder_files(train)[0]).grid
            self.crop = crop if crop is not None else min(grid)
            self._val_args: dict[str, Any] = {**files, "crop": self.crop}
            self.train_set: WellDataset | WellCropDataset = WellCropDataset(
                train, max_trajectories=max_trajectories, **self._val_args
            )
        else:
            self.crop = crop
            # a window's context: the GPhyT frames the model sees, or the one state a rollout starts from
            context = num_frames if sample == "fields" else 1
            windows = {"min_stride": min_stride, "num_context": context, "sample": sample, "crop": crop}
            self._val_args = {**files, **windows}
            self.train_set = WellDataset(
                train,
                length=num_frames + num_future,
                max_stride=max_stride,
                max_trajectories=max_trajectories,
                **self._val_args,
            )
        layout = self.train_set.layouts[0]
        if sample != "fields" and layout.num_spatial_dims != 3:
            raise ValueError(
                f"data.sample={sample} serves Tadpole, a 3D model; {layout.path} holds "
                f"{layout.num_spatial_dims}D fields. Fix: data.sample=fields with a GPhyT model "
                "(model=gphyt_s task=next_frame), which reads 1D, 2D and 3D datasets."
            )
        if crop is not None and crop > min(layout.grid):
            raise ValueError(
                f"data.crop={crop} is larger than the grid {layout.grid} of {layout.path}; choose at most "
                f"{min(layout.grid)}, or data.crop=null for whole fields."
            )
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
        """Names of the ``pde``/``source`` indices: the dataset's name, or its field components for crops."""
        return list(self.fields) if self.sample == "crops" else [self.name]

    @property
    def spec(self) -> dict[str, Any]:
        """What the model takes from the data: fields, channels, spatial axes, grid or crop, frames."""
        grid = tuple(self.grid) if self.crop is None else (self.crop,) * self.num_spatial_dims
        if self.sample == "crops":
            return {"num_channels": 1, "crop_size": self.crop, "num_spatial_dims": self.num_spatial_dims}
        if self.sample == "windows":
            return {
                "fields": self.fields,
                "num_channels": len(self.fields),
                "num_frames": self.num_frames + self.num_future,
                # Tadpole tiles an axis longer than its crop into crops of this side
                "crop_size": min(grid),
                "num_spatial_dims": self.num_spatial_dims,
            }
        return {
            "fields": self.fields,
            "num_spatial_dims": self.num_spatial_dims,
            "grid": grid,
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
                f"{self.path}/data/train holds {len(self.train_set)} {self._items}; {world} process(es) with "
                f"data.batch_size={self.batch_size} need at least {world * self.batch_size}. Lower "
                "data.batch_size (it is per process), data.num_frames, or raise data.max_trajectories."
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

    @property
    def _items(self) -> str:
        return "crops (frames x field components)" if self.sample == "crops" else "windows"

    def val_dataloader(self) -> DataLoader:
        """Items of ``data/valid``: windows at ``min_stride`` with ``num_val_future`` future frames, or crops."""
        folder = self.path / "data" / "valid"
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{self.path} has no data/valid folder; The Well's layout has one per split."
            )
        val: WellDataset | WellCropDataset
        if self.sample == "crops":
            val = WellCropDataset(folder, **self._val_args)
        else:
            first = self.num_frames if self.sample == "fields" else 1
            val = WellDataset(folder, length=first + self.num_val_future, max_stride=1, **self._val_args)
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
