"""Fine-tuning on a user's files: small 2D and 3D datasets made with `pfm data convert` and checked with
`pfm data check`, read by data=well as GPhyT windows (fields), Tadpole dynamics windows (channels first) and
Tadpole autoencoder crops (one component of one frame); the task picks the kind; data.max_trajectories; exact
resume; and every model family fine-tuned through pfm-train (slow)."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import pfm_train
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from recording import fit_recording

from pfm.build import CONF_DIR, build_task
from pfm.checkpoints import read_checkpoint
from pfm.cli import main as pfm_cli
from pfm.data import WellDataModule

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_TRAJ, NUM_STEPS, TRAIN = 4, 8, [0, 1]


def solver_output(folder: Path, grid: tuple[int, ...], seed: int = 0) -> dict[str, np.ndarray]:
    """A user's solver output: density (scalar) and velocity (vector) arrays, and the spec naming them."""
    rng = np.random.default_rng(seed)
    d = len(grid)
    arrays = {
        "density": rng.normal(1.0, 2.0, (NUM_TRAJ, NUM_STEPS, *grid)).astype(np.float32),
        "velocity": rng.normal(0.0, 0.5, (NUM_TRAJ, NUM_STEPS, *grid, d)).astype(np.float32),
    }
    folder.mkdir(parents=True)
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array)
    spec = {
        "dataset_name": f"toy{d}d",
        "spatial_dims": ["x", "y", "z"][:d],
        "dt": 0.5,
        "fields": {"density": "density.npy", "velocity": {"file": "velocity.npy", "order": 1}},
        "splits": {"train": TRAIN, "valid": [2], "test": [3]},
    }
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    return arrays


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, np.ndarray]]]:
    """``2d`` (16x8) and ``3d`` (16^3) datasets: 2 train, 1 valid, 1 test trajectories of 8 steps."""
    root = tmp_path_factory.mktemp("own_data")
    made = {}
    for key, grid in (("2d", (16, 8)), ("3d", (16, 16, 16))):
        arrays = solver_output(root / f"src{key}", grid)
        out = root / key
        assert pfm_cli(["data", "convert", str(root / f"src{key}" / "spec.yaml"), str(out)]) == 0
        assert pfm_cli(["data", "check", str(out)]) == 0
        made[key] = (out, arrays)
    return made


def _raw(arrays: dict[str, np.ndarray], traj: int, step: int | slice) -> np.ndarray:
    """Channels density, velocity_* of one trajectory: ``(*grid, 4)`` or ``(steps, *grid, 4)``."""
    return np.concatenate([arrays["density"][traj, step][..., None], arrays["velocity"][traj, step]], axis=-1)


def _boxes(field: np.ndarray, side: int) -> list[tuple[int, ...]]:
    """Every corner of a cube of ``side`` inside ``field`` (spatial axes first)."""
    return list(itertools.product(*(range(n - side + 1) for n in field.shape[:3])))


# ---------------------------------------------------------------------------------------------- the samples
def test_crops_are_single_channel_cubes_of_every_component(datasets) -> None:
    path, arrays = datasets["3d"]
    dm = WellDataModule(str(path), sample="crops", crop=8, batch_size=4)
    assert dm.spec == {"num_channels": 1, "crop_size": 8, "num_spatial_dims": 3}
    assert dm.pde_names == ["density", "vel_x", "vel_y", "vel_z"]
    data = dm.train_set
    assert len(data) == len(TRAIN) * NUM_STEPS * 4, "one item per trajectory, step and field component"
    mean, std = data.mean, data.std
    stats = yaml.safe_load((path / "stats.yaml").read_text())
    assert torch.allclose(mean, torch.tensor([stats["mean"]["density"], *stats["mean"]["velocity"]]))
    for item in (0, 5, 37, len(data) - 1):
        got = data[(item, 0)]
        _, traj, step, channel = data.index[item]
        assert got["input"].shape == (1, 8, 8, 8) and int(got["pde"]) == channel
        raw = _raw(arrays, TRAIN[traj], step)[..., channel]
        physical = got["input"][0] * std[channel] + mean[channel]
        hits = [
            c
            for c in _boxes(raw, 8)
            if np.allclose(raw[tuple(slice(a, a + 8) for a in c)], physical, atol=1e-5)
        ]
        assert len(hits) == 1, f"item {item}: the crop is not one box of trajectory {traj}, step {step}"
    # another epoch draws other boxes; the same epoch the same ones (resume and workers rely on it)
    assert torch.equal(data[(37, 0)]["input"], data[(37, 0)]["input"])
    assert not torch.equal(data[(37, 0)]["input"], data[(37, 1)]["input"])
    batch = dm.next_batch()
    assert batch["input"].shape == (4, 1, 8, 8, 8)
    val = next(iter(dm.val_dataloader()))
    assert val["input"].shape == (4, 1, 8, 8, 8)
    assert dm.val_dataloader().dataset.dataset.mean is not None  # stats normalisation in valid too
    assert torch.equal(dm.val_dataloader().dataset.dataset.mean, mean)


def test_windows_are_the_fields_channels_first_and_cropped_alike(datasets) -> None:
    path, _ = datasets["3d"]
    kw = {"num_frames": 2, "num_future": 1, "max_stride": 2, "batch_size": 2}
    fields = WellDataModule(str(path), sample="fields", **kw).train_set
    windows = WellDataModule(str(path), sample="windows", **kw)
    assert windows.spec["num_channels"] == 4 and windows.spec["crop_size"] == 16
    for item in (0, 7):
        a, b = fields[(item, 3)], windows.train_set[(item, 3)]
        assert b["input"].shape == (3, 4, 16, 16, 16)
        assert torch.equal(b["input"], a["input"].movedim(-1, 1)), "same window, same stride, channels first"
        assert torch.equal(b["dt"], a["dt"]) and "channel_mask" in b and "pde" in b
    cropped = WellDataModule(str(path), sample="windows", crop=8, **kw)
    assert cropped.spec["crop_size"] == 8
    got, whole = cropped.train_set[(7, 3)]["input"], windows.train_set[(7, 3)]["input"]
    assert got.shape == (3, 4, 8, 8, 8)
    field = whole.movedim(1, -1).movedim(0, -1).numpy()  # (x, y, z, channels, frames)
    hits = [
        c
        for c in _boxes(field, 8)
        if np.array_equal(field[tuple(slice(a, a + 8) for a in c)], got.movedim(1, -1).movedim(0, -1).numpy())
    ]
    assert len(hits) == 1, "one box, the same in every frame and channel"
    val = next(iter(cropped.val_dataloader()))
    assert val["input"].shape == (2, 1 + 4, 4, 8, 8, 8), (
        "validation: a rollout of num_val_future from the first"
    )


def test_max_trajectories_trains_on_the_first_n_and_leaves_validation(datasets) -> None:
    path, _ = datasets["3d"]
    full = WellDataModule(str(path), sample="crops", crop=8)
    one = WellDataModule(str(path), sample="crops", crop=8, max_trajectories=1)
    assert len(one.train_set) == len(full.train_set) // 2
    assert {traj for _, traj, _, _ in one.train_set.index} == {0}
    assert len(one.val_dataloader().dataset) == len(full.val_dataloader().dataset)
    windows = WellDataModule(str(path), sample="windows", max_trajectories=1, num_frames=2)
    assert {traj for _, traj, _ in windows.train_set.index} == {0}
    for bad in (0, 3):
        with pytest.raises(ValueError, match=rf"data.max_trajectories={bad}, but .* holds 2 trajectories"):
            WellDataModule(str(path), sample="fields", max_trajectories=bad)


def test_tadpole_samples_of_a_2d_dataset_are_refused_with_the_fix(datasets) -> None:
    path, _ = datasets["2d"]
    for sample in ("crops", "windows"):
        with pytest.raises(ValueError, match=r"serves Tadpole, a 3D model.*Fix: data.sample=fields"):
            WellDataModule(str(path), sample=sample)
    with pytest.raises(ValueError, match=r"data.crop=24 is larger than the grid"):
        WellDataModule(str(datasets["3d"][0]), sample="windows", crop=24)
    with pytest.raises(ValueError, match=r"data.sample='patches'"):
        WellDataModule(str(path), sample="patches")


def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides)


@pytest.mark.parametrize(
    ("experiment", "kind", "extra"),
    [
        ("demo", "crops", ["data.crop=16"]),
        ("tadpole_finetune", "windows", ["head.latent_depth=1", "data.num_frames=1"]),
        ("gphyt_demo", "fields", ["model.patch_size=[1,8,8,8]"]),
    ],
)
def test_the_task_chooses_what_data_well_serves(
    datasets, experiment: str, kind: str, extra: list[str]
) -> None:
    """`experiment=<any> data=well data.path=DIR` as typed: data.sample=null becomes what the task reads."""
    path, _ = datasets["3d"]
    overrides = [f"experiment={experiment}", "data=well", f"data.path={path}", "data.batch_size=1", *extra]
    datamodule, task = build_task(_compose(overrides))
    assert datamodule.sample == kind == type(task).data_sample
    batch = datamodule.next_batch()
    with torch.no_grad():
        loss = task.training_step(batch, 0)
    assert torch.isfinite(loss)


def test_an_explicit_sample_stands_and_a_task_without_one_is_named(datasets) -> None:
    path, _ = datasets["3d"]
    cfg = _compose(["experiment=demo", "data=well", f"data.path={path}", "data.sample=crops", "data.crop=16"])
    assert build_task(cfg)[0].sample == "crops"
    with pytest.raises(ValueError, match=r"data.sample=null.*FlowMatchingTask.*Fix: data.sample=fields"):
        build_task(_compose(["experiment=platito_demo", "data=well", f"data.path={path}"]))


@pytest.mark.parametrize("sample", ["crops", "windows"])
def test_crop_and_window_streams_resume_at_the_last_trained_batch(
    datasets, tmp_path: Path, sample: str
) -> None:
    path, _ = datasets["3d"]

    def module() -> WellDataModule:
        # windows: 2 trajectories x 6 starts = 12 in batches of 5 (2 per epoch); crops: 64 in batches of 24
        size = 5 if sample == "windows" else 24
        return WellDataModule(
            str(path), sample=sample, crop=8, num_frames=2, batch_size=size, num_val_samples=2
        )

    k = 3  # past the first epoch
    reference = fit_recording(module(), k + 2, tmp_path).trained
    datamodule = module()
    fit_recording(datamodule, k, tmp_path)
    fresh = module()
    fresh.load_state_dict(datamodule.state_dict())
    for i in range(k, k + 2):
        assert torch.equal(fresh.next_batch()["input"], reference[i]), f"batch {i} after restore differs"


# ------------------------------------------------------------------------------------ through pfm-train
TINY = [
    "strategy=single",
    "logger=csv",
    "data.batch_size=1",
    "data.num_workers=0",
    "data.num_val_samples=1",
    "trainer.enable_progress_bar=false",
]
FAMILIES = {
    # Tadpole's autoencoder on single-channel 16^3 crops of every component (the demo's task and model)
    "tadpole-autoencoder-3d": ("3d", ["experiment=demo", "data.crop=16"]),
    # Tadpole's dynamics head on 4-channel windows of whole 16^3 fields
    "tadpole-dynamics-3d": (
        "3d",
        ["experiment=tadpole_finetune", "head.latent_depth=1", "data.num_frames=1", "data.num_val_future=2"],
    ),
    "gphyt-2d": ("2d", ["experiment=gphyt_demo", "data.num_frames=2", "data.num_val_future=2"]),
    "gphyt-3d": (
        "3d",
        ["experiment=gphyt_demo", "model.patch_size=[1,8,8,8]", "data.num_frames=2", "data.num_val_future=2"],
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_fine_tunes_on_converted_files(datasets, tmp_path: Path, family: str) -> None:
    key, overrides = FAMILIES[family]
    path, _ = datasets[key]
    args = [*overrides, "data=well", f"data.path={path}", *TINY, "trainer.max_steps=2"]
    args += ["trainer.val_check_interval=2", "checkpoint_every_n_steps=2"]
    result = pfm_train(args, tmp_path, full_error=True)
    assert result.returncode == 0, result.stderr[-4000:]
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 2
    metrics = (tmp_path / "csv" / "metrics.csv").read_text()
    assert "val/" in metrics and "nan" not in metrics.lower()
    assert list(tmp_path.glob("*.png")), "the example pictures are drawn from the Well batches too"
    if family.startswith("tadpole-autoencoder"):
        return  # an autoencoder has nothing to roll out; pfm evaluate refuses it
    # the user's journey ends with a score: the fine-tuned checkpoint on the converted test split
    scores = tmp_path / "scores"
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert pfm_cli(["evaluate", str(ckpt), "--out", str(scores), "--windows", "1,2-3"]) == 0
    record = json.loads((scores / "metrics.json").read_text())
    assert record["data"]["kind"] == "well" and record["data"]["split"] == "test"
    assert record["num_trajectories"] == 1 and record["units"] == "physical"
    scored = {
        (r["model"], r["field"]) for r in record["rows"] if r["metric"] == "vrmse" and r["window"] == "1"
    }
    for model in ("model", "persistence", "mean"):
        assert {(model, f) for f in ("density", "all")} <= scored, (model, sorted(scored))
    assert (scores / "metrics.md").is_file() and (scores / "error_vs_step.png").is_file()


@pytest.mark.slow
def test_a_resumed_fine_tuning_run_on_crops_ends_bitwise_equal(datasets, tmp_path: Path) -> None:
    """Tadpole's autoencoder on the 3D crops, with param groups and a frozen module: interrupted at step 3,
    resumed; weights, optimizer groups and the losses after the resume equal the uninterrupted run's."""
    path, _ = datasets["3d"]
    args = [
        "experiment=demo",
        "task.optimizer.lr=3e-4",  # the rest's group takes the task's lr, checked below
        "data=well",
        f"data.path={path}",
        "data.crop=16",
        *TINY,
        "data.batch_size=2",
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        "trainer.log_every_n_steps=1",
        "checkpoint_every_n_steps=3",
        "checkpoint_keep_last=null",
        "plots=false",
        "finetune.param_groups=[{pattern: 'decoder.*', lr: 1e-3}]",
        "finetune.freeze=['encoder.*.norm*']",
    ]
    reference = tmp_path / "uninterrupted"
    result = pfm_train(args, reference, full_error=True)
    assert result.returncode == 0, result.stderr[-4000:]
    interrupted = tmp_path / "interrupted"
    (interrupted / "checkpoints").mkdir(parents=True)
    shutil.copy2(reference / "checkpoints" / "step0000003.ckpt", interrupted / "checkpoints")
    result = pfm_train([*args, "resume=auto"], interrupted, full_error=True)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Resuming from" in result.stdout + result.stderr
    want = read_checkpoint(reference / "checkpoints" / "last.ckpt")
    got = read_checkpoint(interrupted / "checkpoints" / "last.ckpt")
    assert got["global_step"] == want["global_step"] == 6
    assert got["state_dict"].keys() == want["state_dict"].keys()
    for name, value in want["state_dict"].items():
        assert torch.equal(got["state_dict"][name], value), f"{name} differs after resuming at step 3"
    groups = [
        {k: v for k, v in g.items() if k != "params"} for g in got["optimizer_states"][0]["param_groups"]
    ]
    assert [g["initial_lr"] for g in groups] == [1e-3, 3e-4], (
        "the decoder's group, then the rest at task's lr"
    )
    assert not any("norm" in n and n.startswith("encoder.") for g in groups for n in g["param_names"])
    assert _losses_after(interrupted, 3) == _losses_after(reference, 3)


def _losses_after(run: Path, step: int) -> list[str]:
    import csv

    with open(run / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return [r["train/loss"] for r in rows if r.get("train/loss") and int(r["step"]) >= step]
