"""Exact resume for The Well and mixed field-window streams: state_dict() matches the last trained batch (the
Trainer's fetcher and DataLoader workers read ahead), across epochs and processes, and a pfm-train run resumed
from its step-k checkpoint ends with bitwise the weights of the uninterrupted run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import online_gray_scott, pfm_train
from recording import fit_recording
from well_files import make_well_dataset

from pfm.checkpoints import read_checkpoint
from pfm.data import MixedFieldDataModule, WellDataModule
from pfm.data.well import _EpochBatches

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def wells(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two datasets: ``a`` (8x6 grid) and ``b`` (8x8); 2 trajectories of 9 steps per split."""
    root = tmp_path_factory.mktemp("wells")
    make_well_dataset(root / "a", name="flow_a")
    make_well_dataset(root / "b", name="flow_b", grid=(8, 8))
    return {"a": root / "a", "b": root / "b"}


def _well(path: Path, **kwargs) -> WellDataModule:
    # 2 trajectories x 7 starts = 14 windows of 3 frames: 3 batches of 4 per epoch, strides 1 or 2
    base = {"num_frames": 2, "num_future": 1, "max_stride": 2, "batch_size": 4, "num_val_samples": 2}
    return WellDataModule(str(path), **(base | kwargs))


def _mixed(wells: dict[str, Path]) -> MixedFieldDataModule:
    online = online_gray_scott(batch_size=2, num_trajectories=1, num_val_batches=1, val_burn_in_steps=1)
    sources = {"a": _well(wells["a"], batch_size=2), "b": _well(wells["b"], batch_size=3), "online": online}
    return MixedFieldDataModule(sources, weights={"a": 1.0, "b": 1.0, "online": 1.0}, seed=3)


@pytest.mark.parametrize("num_workers", [0, 2], ids=["in-process", "2-workers"])
def test_well_state_matches_the_last_trained_batch(wells, tmp_path: Path, num_workers: int) -> None:
    k = 4  # past the first epoch's 3 batches
    reference = fit_recording(_well(wells["a"], num_workers=num_workers), k + 3, tmp_path).trained
    epochs = [reference[3 * e : 3 * e + 3] for e in range(2)]
    assert not all(torch.equal(x, y) for x, y in zip(*epochs, strict=True)), "every epoch repeats one order"
    datamodule = _well(wells["a"], num_workers=num_workers)
    model = fit_recording(datamodule, k, tmp_path)
    for got, want in zip(model.trained, reference, strict=False):
        assert torch.equal(got, want)
    state = datamodule.state_dict()
    assert state == {"epoch": 1, "batch": 1}, "the state counts batches read ahead"
    fresh = _well(wells["a"], num_workers=num_workers)
    fresh.load_state_dict(state)
    for i in range(k, k + 3):
        assert torch.equal(fresh.next_batch()["input"], reference[i]), f"batch {i} after restore differs"


def test_well_processes_read_disjoint_windows_every_epoch() -> None:
    for epoch in (0, 1):
        seen = []
        for rank in (0, 1):
            batches = _EpochBatches(14, 3, seed=0, rank=rank, world=2)
            batches.epoch = epoch
            seen.append([i for batch in batches for i, e in batch if e == epoch])
        assert len(seen[0]) == len(seen[1]) == 6 and not set(seen[0]) & set(seen[1])
    restarted = _EpochBatches(14, 3, seed=0, rank=1, world=2)
    restarted.epoch, restarted.start = 1, 1
    assert list(restarted) == list(batches)[1:], "a restart inside an epoch skips or repeats windows"


def test_well_too_few_windows_for_the_batch_is_named(wells) -> None:
    with pytest.raises(ValueError, match=r"holds 14 windows.*data\.batch_size=16"):
        _well(wells["a"], batch_size=16).setup()


def test_mixed_state_matches_the_last_trained_batch(wells, tmp_path: Path) -> None:
    k = 5
    reference_module = _mixed(wells)
    reference = fit_recording(reference_module, k + 4, tmp_path).trained
    drawn = {reference_module._draw(step) for step in range(k + 4)}
    assert drawn == {"a", "b", "online"}, f"the test should draw every source, drew {drawn}"
    datamodule = _mixed(wells)
    model = fit_recording(datamodule, k, tmp_path, limit_val_batches=1, val_check_interval=2)
    for got, want in zip(model.trained, reference, strict=False):
        assert torch.equal(got, want)
    state = datamodule.state_dict()
    assert state["step"] == k and set(state["sources"]) == {"a", "b", "online"}
    assert set(state["pools"]) == {"online/0"}
    fresh = _mixed(wells)
    fresh.setup()
    fresh.load_state_dict(state)
    for i in range(k, k + 4):
        assert torch.equal(fresh.next_batch()["input"], reference[i]), f"batch {i} after restore differs"


def test_mixed_refuses_a_state_of_other_sources(wells) -> None:
    dm = _mixed(wells)
    with pytest.raises(ValueError, match=r"holds sources \['a'\]; this run has \['a', 'b', 'online'\]"):
        dm.load_state_dict({"step": 0, "sources": {"a": {}}, "pools": {}})
    with pytest.raises(ValueError, match=r"holds no source streams.*init_from"):
        dm.load_state_dict({"step": 4})
    with pytest.raises(ValueError, match=r"no 'epoch'/'batch'.*init_from"):
        _well(wells["a"]).load_state_dict({})


# ------------------------------------------------------------------------------------------ end to end
TINY_GPHYT = [
    "model=gphyt_s",
    "task=next_frame",
    "strategy=single",
    "logger=csv",
    "model.size=null",
    "+model.hidden_dim=32",
    "+model.mlp_dim=64",
    "+model.num_heads=2",
    "+model.num_layers=1",
    "+model.patch_size=[1,2,2]",
    "trainer.max_steps=10",
    "trainer.val_check_interval=5",
    "trainer.enable_progress_bar=false",
    "checkpoint_every_n_steps=3",
    "checkpoint_keep_last=null",
    "plots=false",
]


def _well_run(wells: dict[str, Path]) -> list[str]:
    # 14 windows in batches of 2: 7 steps an epoch, so the run and its resume cross an epoch
    return [
        "data=well",
        f"data.path={wells['a']}",
        "data.num_frames=2",
        "data.num_val_future=2",
        "data.max_stride=2",
        "data.batch_size=2",
        "data.num_workers=1",
        "data.num_val_samples=2",
    ]


def _mixed_run(wells: dict[str, Path]) -> list[str]:
    # the config's two online sources (small) and two Well sources
    online = [
        f"data.sources.{name}.{key}"
        for name in ("fluids", "reaction")
        for key in ("n=16", "num_frames=2", "num_val_future=2", "batch_size=2", "num_trajectories=1")
    ]
    online += [f"data.sources.{name}.num_val_batches=1" for name in ("fluids", "reaction")]
    # fluids: Burgers alone; reaction: Gray-Scott; both on a box small enough for 16 points
    online += [
        f"data.sources.fluids.pdes.{name}=null"
        for name in ("navier_stokes_vorticity", "kolmogorov_flow_vorticity", "navier_stokes_velocity")
    ]
    online += ["data.sources.fluids.pdes.kolmogorov_flow_velocity=null"]
    online += [f"data.sources.{name}.length=0.5" for name in ("fluids", "reaction")]
    well = []
    for name in ("a", "b"):
        well += [
            f"+data@data.sources.{name}=well",
            f"data.sources.{name}.path={wells[name]}",
            f"data.sources.{name}.num_frames=2",
            f"data.sources.{name}.num_val_future=2",
            f"data.sources.{name}.batch_size=2",
            f"data.sources.{name}.num_workers=0",
            f"data.sources.{name}.num_val_samples=2",
        ]
    return ["data=mixed", *online, *well, "+data.weights.a=2", "+data.weights.b=2"]


def _weights(run: Path, name: str = "last.ckpt") -> dict[str, torch.Tensor]:
    return dict(read_checkpoint(run / "checkpoints" / name)["state_dict"])


@pytest.mark.slow
@pytest.mark.parametrize("data", ["well", "mixed"])
def test_pfm_train_resumed_at_step_k_ends_bitwise_equal(wells, tmp_path: Path, data: str) -> None:
    """Interrupted at step 6 (its checkpoint, taken while the fetcher held step 7's batch), resumed: same weights."""
    args = [*TINY_GPHYT, *(_well_run(wells) if data == "well" else _mixed_run(wells))]
    reference = tmp_path / "uninterrupted"
    result = pfm_train(args, reference, full_error=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    interrupted = tmp_path / "interrupted"
    (interrupted / "checkpoints").mkdir(parents=True)
    shutil.copy2(reference / "checkpoints" / "step0000006.ckpt", interrupted / "checkpoints")
    result = pfm_train([*args, "resume=auto"], interrupted, full_error=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Resuming from" in result.stdout + result.stderr
    resumed, want = _weights(interrupted), _weights(reference)
    assert read_checkpoint(interrupted / "checkpoints" / "last.ckpt")["global_step"] == 10
    assert resumed.keys() == want.keys()
    for name, value in want.items():
        assert torch.equal(resumed[name], value), f"{name} differs after resuming {data} at step 6"
    # the steps after resume trained on the same batches: the losses logged after step 6 agree too
    assert _losses_after(interrupted, 6) == _losses_after(reference, 6)


def _losses_after(run: Path, step: int) -> list[str]:
    import csv

    with open(run / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return [r["train/loss"] for r in rows if r.get("train/loss") and int(r["step"]) >= step]
