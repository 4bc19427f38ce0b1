"""data=shards over several processes: every process takes the same number of batches per epoch, so DDP never
waits forever in a collective; shard counts that cannot feed every process fail at setup; resume stays exact.

The fast tests place a module in a run of two processes by giving it a Trainer's rank and world size; the slow
ones run pfm-train with two gloo processes on three shards of unequal size.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import DIFFUSION
from torch.utils.data import DataLoader

from datagen import FamilySpec
from datagen.shards import write_shards
from pfm.checkpoints import read_checkpoint
from pfm.data import ShardDataModule
from pfm.data import shards as shard_module

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass
class _Process:
    """What the module reads of its Trainer: this process's rank in a run of ``world_size`` processes."""

    global_rank: int
    world_size: int
    training: bool = True
    max_steps: int = 100
    limit_val_batches: float = 1.0


def _write(path: Path, num_samples: int, samples_per_shard: int, crop: int = 8) -> list[str]:
    paths = write_shards(
        [FamilySpec(**DIFFUSION)],
        path,
        num_samples=num_samples,
        samples_per_shard=samples_per_shard,
        crop=crop,
        batch=2,
        pool_kwargs={"n": 16, "num_trajectories": 2, "seed": 5},
    )
    return [str(p) for p in paths]


def _module(path: Path, rank: int, world: int, **kwargs) -> ShardDataModule:
    dm = ShardDataModule(str(path), batch_size=2, **kwargs)
    dm.trainer = _Process(rank, world)
    return dm


def _epoch(dm: ShardDataModule) -> list[torch.Tensor]:
    """One epoch of training batches, each taken for a step as the Trainer takes it."""
    return [dm.on_before_batch_transfer(batch, 0)["input"] for batch in dm.train_dataloader()]


def _read(dm: ShardDataModule, urls: list[str]) -> list[torch.Tensor]:
    """Every full batch of ``urls`` read in one process, in order."""
    return [b["input"] for b in DataLoader(dm.dataset(urls), batch_size=None)]


def test_plan_counts_full_batches_per_process_and_worker() -> None:
    plan = shard_module.plan_epoch([4, 4, 2], world_size=2, num_workers=0, batch_size=2)
    # rank 0 reads shards 0 and 2 (6 samples, 3 batches), rank 1 shard 1 (2 batches); both take 2
    assert plan.num_batches_by_rank == (3, 2) and plan.num_batches == 2
    assert plan.num_dropped == 2  # 10 samples, 2 processes x 2 batches x 2 samples trained
    # workers batch their own shards: rank 0's workers read [4, 4] and [2], rank 1's [4] and [2]
    plan = shard_module.plan_epoch([4, 4, 2, 2, 4], world_size=2, num_workers=2, batch_size=2)
    assert plan.num_batches_by_rank == (5, 3) and plan.num_dropped == 16 - 2 * 3 * 2
    # a worker's partial batch is dropped on its own: 3 + 3 samples give 2 batches, not 3
    assert shard_module.plan_epoch([3, 3], world_size=1, num_workers=2, batch_size=2).num_batches == 2
    equal = shard_module.plan_epoch([4] * 4, world_size=2, num_workers=2, batch_size=2)
    assert equal.num_batches == 4 and equal.num_dropped == 0


def test_two_processes_take_equal_epochs_of_their_own_shards(tmp_path: Path, caplog) -> None:
    urls = _write(tmp_path, num_samples=10, samples_per_shard=4)  # shards of 4, 4 and 2 samples
    with caplog.at_level(logging.WARNING, logger="pfm.data.shards"):
        ranks = [_module(tmp_path, rank, 2) for rank in range(2)]
        for dm in ranks:
            dm.setup("fit")
    assert "leaves out 2 of 10 samples" in caplog.text and "multiple of 2" in caplog.text
    assert caplog.text.count("leaves out") == 2, "once for training, once for validation, by rank 0 only"
    reference = ranks[0]
    own = [_read(reference, [urls[0], urls[2]]), _read(reference, [urls[1]])]
    assert [len(batches) for batches in own] == [3, 2]  # what each process could read unchecked
    for epoch in range(2):
        got = [_epoch(dm) for dm in ranks]
        assert [len(batches) for batches in got] == [2, 2], f"epoch {epoch}: unequal numbers of steps"
        for rank, batches in enumerate(got):
            assert all(torch.equal(a, b) for a, b in zip(batches, own[rank], strict=False)), (rank, epoch)
        assert not torch.equal(got[0][0], got[1][0])  # the processes read different shards
        assert [dm.state_dict() for dm in ranks] == [{"epoch": epoch, "batch": 2}] * 2
    # validation: the same rule, without workers, whatever the training stream does
    val = [list(dm.val_dataloader()) for dm in ranks]
    assert [len(v) for v in val] == [len(dm.val_dataloader()) for dm in ranks] == [2, 2]


@pytest.mark.parametrize("rank", [0, 1])
def test_workers_in_two_processes_take_equal_epochs(tmp_path: Path, rank: int) -> None:
    _write(tmp_path, num_samples=14, samples_per_shard=4)  # 4, 4, 4, 2: rank 0 reads 4 batches, rank 1 3
    dm = _module(tmp_path, rank, 2, num_workers=2)
    assert dm.epoch_plan().num_batches_by_rank == (4, 3)
    assert len(_epoch(dm)) == 3


@pytest.mark.parametrize(
    ("num_shards", "world", "workers", "expected"),
    [
        (1, 2, 0, ["1 shard(s) for 2 process(es) x 1", "1 of them would get none", "at least 2 shards"]),
        (3, 2, 2, ["3 shard(s) for 2 process(es) x 2", "at least 4 shards", "lower data.num_workers"]),
    ],
)
def test_too_few_shards_fail_at_setup_naming_counts_and_fix(
    tmp_path: Path, num_shards: int, world: int, workers: int, expected: list[str]
) -> None:
    _write(tmp_path, num_samples=4 * num_shards, samples_per_shard=4)
    dm = _module(tmp_path, 0, world, num_workers=workers)
    with pytest.raises(ValueError, match="pfm-datagen write") as error:
        dm.setup("fit")
    for text in [f"data.path={tmp_path}", "--samples-per-shard", *expected]:
        assert text in str(error.value), str(error.value)


def test_no_full_batch_and_too_few_validation_shards_fail_at_setup(tmp_path: Path) -> None:
    _write(tmp_path / "train", num_samples=10, samples_per_shard=4)
    dm = ShardDataModule(str(tmp_path / "train"), batch_size=5)
    dm.trainer = _Process(0, 2)
    with pytest.raises(ValueError, match=r"batch_size=5, process 1's shards \(4 samples") as error:
        dm.setup("fit")  # rank 0 reads shards 0 and 2 (6 samples: 1 batch of 5), rank 1 shard 1 (4: none)
    assert "Lower data.batch_size" in str(error.value)
    _write(tmp_path / "val", num_samples=4, samples_per_shard=4)
    dm = _module(tmp_path / "train", 1, 2, val_path=str(tmp_path / "val"))
    with pytest.raises(ValueError, match=r"data\.val_path=.*holds 1 shard"):
        dm.setup("fit")
    dm.trainer.limit_val_batches = 0  # no validation: nothing to check
    dm.setup("fit")


def test_format_json_records_counts_and_old_folders_are_counted(tmp_path: Path) -> None:
    urls = _write(tmp_path, num_samples=10, samples_per_shard=4)
    fmt = json.loads((tmp_path / "format.json").read_text())
    assert fmt["num_samples_per_shard"] == {
        "shard-000000.tar": 4,
        "shard-000001.tar": 4,
        "shard-000002.tar": 2,
    }
    assert [shard_module.count_shard_samples(u) for u in urls] == [4, 4, 2]
    recorded = _module(tmp_path, 0, 2).epoch_plan()
    del fmt["num_samples_per_shard"]  # as written before the counts were recorded
    (tmp_path / "format.json").write_text(json.dumps(fmt))
    assert _module(tmp_path, 0, 2).epoch_plan() == recorded


@pytest.mark.parametrize("stop", [1, 2, 3])  # mid-epoch, at the end of epoch 0, in epoch 1
def test_rank_one_resumes_its_stream_after_k_batches(tmp_path: Path, stop: int) -> None:
    _write(tmp_path, num_samples=10, samples_per_shard=4)
    whole = _module(tmp_path, 1, 2)
    reference = [b for _ in range(3) for b in _epoch(whole)]  # rank 1: 2 batches per epoch
    first, seen = _module(tmp_path, 1, 2), []
    while len(seen) < stop:
        for batch in first.train_dataloader():
            seen.append(first.on_before_batch_transfer(batch, 0)["input"])
            if len(seen) == stop:
                break
    second = _module(tmp_path, 1, 2)
    second.load_state_dict(first.state_dict())
    resumed = [b for _ in range(3) for b in _epoch(second)][: len(reference) - stop]
    for index, (got, want) in enumerate(zip(resumed, reference[stop:], strict=True)):
        assert torch.equal(got, want), f"batch {stop + index} differs after resuming at {stop}"


def test_resampled_trains_endlessly_but_validates_once(tmp_path: Path) -> None:
    _write(tmp_path, num_samples=6, samples_per_shard=2)
    dm = _module(tmp_path, 1, 2, resampled=True)
    dm.setup("fit")
    stream = iter(dm.train_dataloader())
    for _ in range(8):  # more than the 3 batches written: every process can always take a step
        assert next(stream)["input"].shape == (2, 1, 8, 8, 8)
    assert len(list(dm.val_dataloader())) == 1  # rank 1 validates on shard 1 once, not forever
    dm.trainer.max_steps = -1
    with pytest.raises(ValueError, match=r"set trainer\.max_steps"):
        dm.setup("fit")


# --- pfm-train with two gloo processes ---------------------------------------------------------------------

DDP = ["strategy=ddp", "strategy.devices=2", "model=conv_vae", "data=shards", "data.batch_size=2"]
DDP += ["trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "checkpoint_every_n_steps=1"]
DDP += ["checkpoint_keep_last=null", "plots=false", "logger=csv"]


def _pfm_train_ddp(args: list[str], out: Path, timeout: float = 150) -> subprocess.CompletedProcess:
    """pfm-train in its own process group, killed whole (every rank) if it has not ended after ``timeout`` s."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1"}
    cmd = [sys.executable, "-m", "pfm.train", *args, f"hydra.run.dir={out}"]
    with subprocess.Popen(
        cmd,
        cwd=out,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # rank 1 is Lightning's child in the same group
            stdout, stderr = proc.communicate()
            pytest.fail(
                f"2-process pfm-train still running after {timeout} s (a rank stuck in a collective)\n"
                f"{stderr[-3000:]}"
            )
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


@pytest.mark.slow
def test_pfm_train_ddp_epochs_on_three_unequal_shards_end(tmp_path: Path) -> None:
    """Two epochs by max_epochs on shards of 4, 4, 2 samples: both processes stop after the same 4 steps."""
    _write(tmp_path / "shards", num_samples=10, samples_per_shard=4, crop=16)
    args = [*DDP, f"data.path={tmp_path / 'shards'}", "trainer.max_steps=50", "+trainer.max_epochs=2"]
    args += ["trainer.val_check_interval=2"]  # validation on every process's 2 rank-equal batches
    result = _pfm_train_ddp(args, tmp_path / "run")
    assert result.returncode == 0, result.stderr[-4000:]
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert "leaves out 2 of 10 samples" in (tmp_path / "run" / "train.log").read_text()


@pytest.mark.slow
def test_pfm_train_ddp_on_shards_resumed_mid_epoch_ends_bitwise_equal(tmp_path: Path) -> None:
    """Resumed at step 3 (epoch 1, batch 1 of 2 on both processes): the weights of the uninterrupted run."""
    _write(tmp_path / "shards", num_samples=10, samples_per_shard=4, crop=16)
    args = [*DDP, f"data.path={tmp_path / 'shards'}", "trainer.max_steps=5", "trainer.val_check_interval=4"]
    args += ["+trainer.limit_val_batches=1"]
    reference = tmp_path / "uninterrupted"
    result = _pfm_train_ddp(args, reference)
    assert result.returncode == 0, result.stderr[-4000:]
    interrupted = tmp_path / "interrupted"
    (interrupted / "checkpoints").mkdir(parents=True)
    shutil.copy(reference / "checkpoints" / "step0000003.ckpt", interrupted / "checkpoints")
    result = _pfm_train_ddp([*args, "resume=auto"], interrupted)
    assert result.returncode == 0, result.stderr[-4000:]
    want = read_checkpoint(reference / "checkpoints" / "last.ckpt")
    got = read_checkpoint(interrupted / "checkpoints" / "last.ckpt")
    assert got["global_step"] == want["global_step"] == 5
    for key, value in want["state_dict"].items():
        assert torch.equal(got["state_dict"][key], value), f"{key} differs after resuming at step 3"


@pytest.mark.slow
def test_pfm_train_ddp_resampled_validates_once_and_ends(tmp_path: Path) -> None:
    """data.resampled=true on 2 processes: endless training draws, but validation reads its shards once.

    Before, validation drew from the endless resampled stream too, and the first validation never ended.
    """
    _write(tmp_path / "shards", num_samples=10, samples_per_shard=4, crop=16)
    args = [*DDP, f"data.path={tmp_path / 'shards'}", "data.resampled=true", "trainer.max_steps=4"]
    args += ["trainer.val_check_interval=2"]  # no limit_val_batches: the loader itself must end
    result = _pfm_train_ddp(args, tmp_path / "run")
    assert result.returncode == 0, result.stderr[-4000:]
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert "last validation: val/nrmse=" in (tmp_path / "run" / "train.log").read_text()
