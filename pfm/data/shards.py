"""LightningDataModule reading webdataset shards written by ``pfm-datagen write``.

It yields the batches the online DataModules yield for the same configuration: ``input`` and ``pde`` (plus
``target``, ``channel_mask`` for pairs and windows), standardized per sample for crops when asked.

Processes: without ``resampled`` an epoch reads every shard once; shard ``i`` goes to process
``i % world_size`` and then to its dataloader worker ``(i // world_size) % num_workers``. Shards may hold
different numbers of samples (the last one of a write usually does), so processes could read different
numbers of full batches, and under DDP one would wait forever in a collective the others never join. So every
process takes the same number of batches per epoch, the fewest any process can read (:func:`plan_epoch`;
per-shard sample counts from ``format.json``, or counted once from the tar headers of shards written before
the writer recorded them), and the rest of the epoch is left out (logged once, with how to avoid it).
Validation follows the same rule. A process that would get no shard at all fails at setup, naming the counts
and the fix. A ``resampled`` stream is endless in every process, so each takes a step whenever the others
do; the run must then be bounded by ``trainer.max_steps``.

Resume: without ``resampled`` every epoch reads the shards in the same order, so the stream's position is
(epoch, batches read in it), the same on every process; ``state_dict()`` holds it as of the last *trained*
batch, kept by :class:`~pfm.data.stream_state.TrainedBatchStream` as for every other data module (a batch
counts when the Trainer takes it for a step, so batches read ahead by the fetcher or by workers do not). A
resumed run reads and drops the batches of the current epoch it already trained, then goes on: the same
batches in the same order as an uninterrupted run, at the cost of re-reading at most one epoch.
A ``resampled`` stream draws shards with webdataset's unseeded sampler and is not resumed exactly (a warning
says so).
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset
from webdataset.tariterators import base_plus_ext

from datagen import get_pde
from datagen.shards import decode_sample
from pfm.data.layout import process_rank
from pfm.data.stream_state import TrainedBatchStream

__all__ = ["EpochPlan", "ShardDataModule", "count_shard_samples", "plan_epoch", "read_format"]

log = logging.getLogger(__name__)

# webdataset skips these members (its tar_file_iterator's skip_meta): they belong to no sample
_META = re.compile(r"__[^/]*__($|/)")


def read_format(folder: str | Path) -> dict[str, Any]:
    """``folder/format.json`` (written by ``pfm-datagen write``); an empty, truncated or foreign one fails naming it."""
    path = Path(folder) / "format.json"
    fix = f"Fix: write the shards again with `pfm-datagen write --out {folder}`."
    try:
        fmt = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); a truncated or empty copy? {fix}") from err
    if not isinstance(fmt, dict) or fmt.get("kind") not in ("crops", "windows", "pairs"):
        kind = fmt.get("kind") if isinstance(fmt, dict) else None
        raise ValueError(
            f"{path} has kind={kind!r}; expected a pfm-datagen format.json with kind crops, windows or pairs. {fix}"
        )
    return fmt


def _check_tar_size(path: Path) -> None:
    # a tar file is whole 512-byte blocks; any other size is a truncated copy or download (a stat, no read)
    size = path.stat().st_size
    if size == 0 or size % 512:
        raise ValueError(
            f"{path} has {size} bytes, not a whole number of 512-byte tar blocks: it is truncated or empty. "
            "Fix: copy or write it again (`pfm-datagen write`), or remove it from the folder."
        )


def count_shard_samples(path: str | Path) -> int:
    """Samples in one tar shard, grouped by key as webdataset groups them; reads the headers only."""
    count, last = 0, None
    with tarfile.open(path, "r:") as tar:  # "r:" seeks past each member's data instead of reading it
        for member in tar:
            if not member.isreg() or _META.match(member.name):
                continue
            key, _ = base_plus_ext(member.name)
            if key is not None and key != last:
                count, last = count + 1, key
    return count


@dataclass(frozen=True)
class EpochPlan:
    """How one epoch of shards divides over the processes: the full batches each reads, and what all take."""

    num_batches_by_rank: tuple[int, ...]
    num_samples: int
    batch_size: int

    @property
    def num_batches(self) -> int:
        """Batches every process takes per epoch: the fewest any process can read."""
        return min(self.num_batches_by_rank)

    @property
    def num_dropped(self) -> int:
        """Samples per epoch no process trains on: partial batches and the surplus of the larger processes."""
        return self.num_samples - len(self.num_batches_by_rank) * self.num_batches * self.batch_size


def plan_epoch(counts: Sequence[int], *, world_size: int, num_workers: int, batch_size: int) -> EpochPlan:
    """The epoch of shards of ``counts`` samples over ``world_size`` processes of ``num_workers`` workers.

    Shard ``i`` goes to process ``i % world_size`` (webdataset's split by node), and within it to worker
    ``(i // world_size) % num_workers`` (its split by worker); each worker batches its own samples and drops
    its last partial batch.
    """
    readers = max(num_workers, 1)
    by_rank = []
    for rank in range(world_size):
        mine = list(counts[rank::world_size])
        by_rank.append(sum(sum(mine[worker::readers]) // batch_size for worker in range(readers)))
    return EpochPlan(tuple(by_rank), int(sum(counts)), batch_size)


def _collate(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    keys = [k for k in samples[0] if k != "meta" and not k.startswith("__")]  # webdataset adds __key__
    out = {k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in keys}
    return out


class ShardDataModule(TrainedBatchStream, L.LightningDataModule):
    """Batches from the tar shards in ``path`` (a directory with ``format.json``).

    Shards are split over processes (ranks) and dataloader workers, and every process takes the same number
    of batches per epoch (see the module docstring). ``resampled`` draws shards with replacement forever (an
    endless stream); otherwise each epoch reads every shard once, in order. ``batch_size`` is per process.
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
        self.format = read_format(self.path)
        self.urls = sorted(str(p) for p in self.path.glob("*.tar"))
        if not self.urls:
            raise ValueError(f"No .tar shards in {self.path}; write some with `pfm-datagen write`.")
        for url in self.urls:
            _check_tar_size(Path(url))
        self.batch_size = batch_size
        self.resampled = resampled
        self.num_workers = num_workers
        self.standardize = standardize and self.format["kind"] == "crops"
        self.val_path = val_path
        self._epoch, self._batch = 0, 0  # the training stream's position: epoch, batches read in it
        self._num_iterations = 0  # epochs begun by the training loader
        self._resume_at: tuple[int, int] | None = None  # where the next epoch begins (a restored position)
        self._batches: Iterator[dict[str, torch.Tensor]] | None = None  # the current epoch's batches
        self._counts: dict[str, list[int]] = {}  # per-shard sample counts by split, read once
        self._logged: set[str] = set()

    @property
    def pde_names(self) -> list[str]:
        """Family names in the order used by the ``pde`` index of each batch."""
        return list(self.format["pde_names"])

    @property
    def spec(self) -> dict[str, int]:
        """Shapes that models take from the data."""
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

    def dataset(self, urls: list[str] | None = None, *, resampled: bool | None = None) -> IterableDataset:
        """The webdataset pipeline yielding batches of ``urls`` (default: every training shard).

        ``urls`` are read as given (no split over processes: pass this process's share); dataloader workers
        split them. ``resampled`` (default: the module's) draws from them with replacement, endlessly.
        """
        ds = wds.WebDataset(
            self.urls if urls is None else urls,
            resampled=self.resampled if resampled is None else resampled,
            shardshuffle=False,
            nodesplitter=None,  # shards are dealt to processes by this module, as plan_epoch counts them
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

    # --- how the shards divide over processes ---------------------------------------------------------------
    def _split_urls(self, split: str) -> list[str]:
        if split == "val" and self.val_path:
            return sorted(str(p) for p in Path(self.val_path).glob("*.tar"))
        return self.urls

    def _where(self, split: str) -> str:
        if split == "val":
            if self.val_path:
                return f"data.val_path={self.val_path}"
            return "the training shards (data.val_path=null)"
        return f"data.path={self.path}"

    def _shard_counts(self, split: str) -> list[int]:
        """Samples in each shard of ``split``: from ``format.json`` where recorded, else counted once."""
        if split not in self._counts:
            folder = Path(self.val_path) if split == "val" and self.val_path else self.path
            recorded: Mapping[str, int] = {}
            if (folder / "format.json").is_file():
                recorded = read_format(folder).get("num_samples_per_shard") or {}
            self._counts[split] = [
                int(recorded[Path(u).name]) if Path(u).name in recorded else count_shard_samples(u)
                for u in self._split_urls(split)
            ]
        return self._counts[split]

    def epoch_plan(self, split: str = "train") -> EpochPlan:
        """The epoch of ``split`` ("train" or "val") over this run's processes; fails if one gets nothing.

        Validation reads without workers. Raises ``ValueError`` when a process (or a worker of one) gets no
        shard, or a process's shards hold no full batch.
        """
        rank, world = process_rank(self.trainer)
        urls = self._split_urls(split)
        num_workers = self.num_workers if split == "train" else 0
        readers = max(num_workers, 1)
        where = self._where(split)
        if not urls:
            raise ValueError(f"No .tar shards in {where}; write some with `pfm-datagen write`.")
        counts = self._shard_counts(split)
        total = sum(counts)
        if len(urls) < world * readers:
            per_shard = max(self.batch_size, total // (world * readers) // self.batch_size * self.batch_size)
            raise ValueError(
                f"{where} holds {len(urls)} shard(s) for {world} process(es) x {readers} dataloader "
                f"worker(s); each reads whole shards, so {world * readers - len(urls)} of them would get none "
                "and the processes would take different numbers of steps (under DDP the others would wait "
                f"forever). Write at least {world * readers} shards, e.g. `pfm-datagen write ... --samples "
                f"{total} --samples-per-shard {per_shard}`"
                + (", or lower data.num_workers." if readers > 1 else ".")
            )
        plan = plan_epoch(counts, world_size=world, num_workers=num_workers, batch_size=self.batch_size)
        if plan.num_batches == 0:
            poorest = plan.num_batches_by_rank.index(0)
            raise ValueError(
                f"{where}: with data.batch_size={self.batch_size}, process {poorest}'s shards "
                f"({sum(counts[poorest::world])} samples over {readers} reader(s)) hold no full batch, so no "
                f"process can take a step (full batches per process: {list(plan.num_batches_by_rank)}). "
                "Lower data.batch_size or write more samples (`pfm-datagen write --samples ...`)."
            )
        if plan.num_dropped and rank == 0 and split not in self._logged:
            self._logged.add(split)
            log.warning(
                "data=shards: each epoch of %s gives every one of the %d process(es) %d batches of %d and "
                "leaves out %d of %d samples (full batches the processes can read: %s; all take the fewest, "
                "so that they take the same number of steps). To use every sample, write shards of equal "
                "size, a multiple of data.batch_size, in a number that is a multiple of %d (processes x "
                "dataloader workers).",
                where,
                world,
                plan.num_batches,
                self.batch_size,
                plan.num_dropped,
                plan.num_samples,
                list(plan.num_batches_by_rank),
                world * readers,
            )
        return plan

    def setup(self, stage: str | None = None) -> None:
        """Check, before any step, that every process gets shards and full batches (training, validation)."""
        if self.resampled:
            if getattr(self.trainer, "max_steps", None) == -1:
                raise ValueError(
                    "data.resampled=true is an endless stream: its one epoch never ends, so the run needs a "
                    "step limit; set trainer.max_steps (or data.resampled=false for epochs of the shards)."
                )
        elif stage in (None, "fit"):
            self.epoch_plan("train")
        if stage in (None, "fit", "validate") and getattr(self.trainer, "limit_val_batches", 1) != 0:
            self.epoch_plan("val")

    # --- loaders --------------------------------------------------------------------------------------------
    def train_dataloader(self) -> _ResumableLoader:
        """Batches of this process's training shards; on a resume, from just after the last trained batch.

        Every process yields the same number of batches per epoch (none for ``resampled``: endless).
        """
        if self.resampled:  # every process draws from every shard, with its own unseeded sampler
            loader = DataLoader(self.dataset(), batch_size=None, num_workers=self.num_workers)
            return _ResumableLoader(self, loader, num_batches=None)
        plan = self.epoch_plan("train")
        rank, world = process_rank(self.trainer)
        mine = self.urls[rank::world]
        loader = DataLoader(self.dataset(mine), batch_size=None, num_workers=self.num_workers)
        return _ResumableLoader(self, loader, num_batches=plan.num_batches)

    # --- the stream's position (kept by TrainedBatchStream) -------------------------------------------------
    def _capture_position(self) -> tuple[int, int]:
        return self._epoch, self._batch

    def _restore_position(self, position: tuple[int, int]) -> None:
        # the training loader's next epoch begins there
        self._resume_at = (int(position[0]), int(position[1]))

    def _produce(self) -> dict[str, torch.Tensor]:
        """The next batch of the current epoch (``StopIteration`` when it has no more)."""
        assert self._batches is not None, "batches are read by iterating train_dataloader()"
        batch = next(self._batches)
        self._batch += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        """The position after the last trained batch: ``{"epoch", "batch"}``, the same in every process."""
        epoch, batch = self.trained_position()
        return {"epoch": epoch, "batch": batch}

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
        self._forget_positions()
        self._restore_position((state_dict["epoch"], state_dict["batch"]))

    def val_dataloader(self) -> _EpochLoader:
        """Batches of this process's share of ``val_path``'s shards (or of the training shards without one).

        Read once, never resampled, the same number of batches on every process.
        """
        plan = self.epoch_plan("val")
        rank, world = process_rank(self.trainer)
        urls = self._split_urls("val")[rank::world]
        loader = DataLoader(self.dataset(urls, resampled=False), batch_size=None, num_workers=0)
        return _EpochLoader(loader, plan.num_batches)


class _EpochLoader:
    """The first ``num_batches`` batches of a loader, each time it is iterated."""

    def __init__(self, loader: DataLoader, num_batches: int) -> None:
        self.loader = loader
        self.num_batches = num_batches

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return itertools.islice(iter(self.loader), self.num_batches)


class _ResumableLoader:
    """The training DataLoader; each iteration is an epoch, and the first after a restore skips what was trained.

    An epoch ends after ``num_batches`` batches (the rank-equal count; ``None``: when the loader ends). No
    ``__len__``: Lightning treats the stream as one of unknown length, as before.
    """

    def __init__(self, module: ShardDataModule, loader: DataLoader, num_batches: int | None = None) -> None:
        self.module = module
        self.loader = loader
        self.num_batches = num_batches

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        module = self.module
        skip = 0
        if module._resume_at is not None:
            (module._epoch, skip), module._resume_at = module._resume_at, None
        elif module._num_iterations > 0:
            module._epoch += 1
        module._num_iterations += 1
        module._forget_positions()  # a new epoch: every batch of the last one was trained
        module._batch = skip
        if self.num_batches is not None and skip >= self.num_batches:
            # saved at the end of its epoch: Lightning still iterates once to finish that epoch (an empty
            # rest, in every process alike), then starts the next with a new iteration
            return
        batches = iter(self.loader)
        for index in range(skip):
            if next(batches, None) is None:  # fewer batches than saved: the shards changed since
                log.info(
                    "Resume: epoch %d ended after %d batches; starting the next one.", module._epoch, index
                )
                module._epoch, module._batch = module._epoch + 1, 0
                batches = iter(self.loader)
                break
        module._batches = batches
        try:
            # every process stops after the same count, so none waits in a collective the others never join
            while self.num_batches is None or module._batch < self.num_batches:
                try:
                    batch = module.make_batch()
                except StopIteration:
                    return
                yield batch
        finally:
            if module._batches is batches:
                module._batches = None
