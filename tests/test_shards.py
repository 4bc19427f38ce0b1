"""Shard round trip with real tar files: the shard DataModule yields what the online stream yields."""

from __future__ import annotations

import json
import tarfile

import pytest
import torch
from conftest import DIFFUSION, pfm_train

from datagen import FamilySpec
from datagen.shards import write_shards
from pfm.checkpoints import read_checkpoint
from pfm.data import OnlineCropDataModule, ShardDataModule

# small FFTs and models on a shared 2-core machine: one torch thread (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


def test_round_trip_matches_online_stream(tmp_path) -> None:
    paths = write_shards(
        [FamilySpec(**DIFFUSION)],
        tmp_path,
        num_samples=12,
        samples_per_shard=5,
        crop=8,
        batch=4,
        pool_kwargs={"n": 16, "num_trajectories": 2, "seed": 3},
    )
    assert [p.name for p in paths] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporaries
    with tarfile.open(paths[0]) as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile(next(n for n in names if n.endswith(".json"))).read())
    assert {"pde", "coefficients", "seed", "time", "dt", "grid", "code_version"} <= set(meta)
    assert meta["pde"] == "diffusion" and 5e-4 <= meta["coefficients"]["diffusivity"] <= 5e-3
    shards = list(ShardDataModule(str(tmp_path), batch_size=4).train_dataloader())
    online = OnlineCropDataModule([DIFFUSION], n=16, crop=8, batch_size=4, num_trajectories=2, seed=3)
    online.setup()
    assert len(shards) == 3
    for batch in shards:
        expected = online.next_batch()
        assert torch.equal(batch["input"], expected["input"]) and torch.equal(batch["pde"], expected["pde"])


def test_pairs_round_trip_and_resampled_stream(tmp_path) -> None:
    spec = FamilySpec("burgers", dt=0.002, coefficients={"diffusivity": 0.05})
    write_shards(
        [spec],
        tmp_path,
        num_samples=4,
        samples_per_shard=2,
        kind="pairs",
        lag=2,
        crop=None,
        batch=2,
        pool_kwargs={"n": 16, "num_trajectories": 2},
    )
    dm = ShardDataModule(str(tmp_path), batch_size=2, resampled=True)
    assert dm.spec["num_channels"] == 3 and dm.pde_names == ["burgers"]
    stream = iter(dm.train_dataloader())
    for _ in range(5):  # more batches than written: resampled streams never end
        batch = next(stream)
        assert batch["input"].shape == batch["target"].shape == (2, 3, 16, 16, 16)


def test_missing_directory_says_how_to_make_it(tmp_path) -> None:
    with pytest.raises(ValueError, match="pfm-datagen write"):
        ShardDataModule(str(tmp_path / "nothing"))


def _write_crops(path, num_samples: int = 10) -> None:
    write_shards(
        [FamilySpec(**DIFFUSION)],
        path,
        num_samples=num_samples,
        samples_per_shard=4,
        crop=16,
        batch=2,
        pool_kwargs={"n": 16, "num_trajectories": 2, "seed": 3},
    )


def _trained_inputs(dm: ShardDataModule, steps: int, *, start: int = 0) -> list[torch.Tensor]:
    """Feed ``steps`` batches through the module's loader the way the Trainer does (taken, then trained)."""

    class _Trainer:
        training = True

    dm.trainer = _Trainer()
    seen = []
    while len(seen) < steps:
        for batch in dm.train_dataloader():
            seen.append(dm.on_before_batch_transfer(batch, 0)["input"])
            if len(seen) == steps:
                break
    return seen


@pytest.mark.parametrize("stop", [3, 5, 7])  # mid-epoch, at the end of epoch 0 (5 batches), in epoch 1
def test_state_after_k_batches_resumes_the_same_stream(tmp_path, stop: int) -> None:
    _write_crops(tmp_path)
    reference = _trained_inputs(ShardDataModule(str(tmp_path), batch_size=2), 12)
    first = ShardDataModule(str(tmp_path), batch_size=2)
    assert all(torch.equal(a, b) for a, b in zip(_trained_inputs(first, stop), reference, strict=False))
    state = first.state_dict()
    # a batch ends the epoch it belongs to: after batch 5 the state is (epoch 0, 5 trained), not (1, 0)
    assert state == {"epoch": (stop - 1) // 5, "batch": stop - 5 * ((stop - 1) // 5)}
    second = ShardDataModule(str(tmp_path), batch_size=2)
    second.load_state_dict(state)
    resumed = _trained_inputs(second, 12 - stop)
    for index, (got, want) in enumerate(zip(resumed, reference[stop:], strict=True)):
        assert torch.equal(got, want), f"batch {stop + index} differs after resuming at {stop}"


def test_state_of_another_module_is_refused(tmp_path) -> None:
    _write_crops(tmp_path, num_samples=4)
    with pytest.raises(ValueError, match="init_from"):
        ShardDataModule(str(tmp_path), batch_size=2).load_state_dict({"pools": {}})


@pytest.mark.slow
@pytest.mark.parametrize("step", [5, 7])
def test_pfm_train_on_shards_resumed_ends_bitwise_equal(tmp_path, step: int) -> None:
    """pfm-train with data=shards interrupted after step 5 (an epoch end) or 7, resumed: the same weights."""
    _write_crops(tmp_path / "shards")
    args = ["model=conv_vae", "data=shards", f"data.path={tmp_path / 'shards'}", "data.batch_size=2"]
    args += ["trainer.max_steps=9", "trainer.val_check_interval=4", "+trainer.limit_val_batches=1"]
    args += ["trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "checkpoint_every_n_steps=1"]
    args += ["checkpoint_keep_last=null", "plots=false", "logger=csv"]
    reference = tmp_path / "uninterrupted"
    result = pfm_train(args, reference, full_error=True)
    assert result.returncode == 0, result.stderr[-4000:]
    interrupted = tmp_path / "interrupted"
    (interrupted / "checkpoints").mkdir(parents=True)
    name = f"step{step:07d}.ckpt"
    (interrupted / "checkpoints" / name).write_bytes((reference / "checkpoints" / name).read_bytes())
    result = pfm_train([*args, "resume=auto"], interrupted, full_error=True)
    assert result.returncode == 0, result.stderr[-4000:]
    # the closing line counts the steps of this fit only, not those before the resume
    assert f"Trained {9 - step} steps in " in (interrupted / "train.log").read_text()
    want = read_checkpoint(reference / "checkpoints" / "last.ckpt")
    got = read_checkpoint(interrupted / "checkpoints" / "last.ckpt")
    assert got["global_step"] == want["global_step"] == 9
    for key, value in want["state_dict"].items():
        assert torch.equal(got["state_dict"][key], value), f"{key} differs after resuming at step {step}"
