"""A real 3-step run through the ``pfm-train`` entry point, its outputs, reloading its checkpoint, and
the clear errors for bad crops and config keys."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import CONF_DIR, TINY_RUN, pfm_train
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pfm.build import build_task
from pfm.callbacks import ExamplePlot
from pfm.evaluation.metrics import nrmse


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the demo experiment for 3 steps with a tiny grid; returns its run folder."""
    out = tmp_path_factory.mktemp("demo_run")
    result = pfm_train(["experiment=demo", *TINY_RUN], out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def test_run_writes_checkpoint_metrics_and_pictures(demo_run: Path) -> None:
    assert (demo_run / "checkpoints" / "last.ckpt").is_file()
    assert (demo_run / ".hydra" / "config.yaml").is_file()
    with open(demo_run / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 3, f"expected one logged loss per step, got {losses}"
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any(r.get("val/nrmse") for r in rows), "validation ran at the last step"
    assert any(r.get("perf/samples_per_s") for r in rows), "throughput is logged beside the loss"
    for picture in ("reconstruction.png", "loss_curve.png"):
        data = (demo_run / picture).read_bytes()
        assert data.startswith(b"\x89PNG"), picture
    assert list((demo_run / "wandb").glob("offline-run-*")), "wandb logs offline into the run folder"


def test_checkpoint_reloads_to_the_logged_validation_error(demo_run: Path) -> None:
    cfg = OmegaConf.load(demo_run / ".hydra" / "config.yaml")
    datamodule, task = build_task(cfg)
    checkpoint = torch.load(demo_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    task.load_state_dict(checkpoint["state_dict"])
    assert checkpoint["global_step"] == 3
    task.eval()
    datamodule.setup("validate")
    errors = []
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            errors.append(nrmse(task(batch["input"]), batch["input"], channel_dim=1).mean(1))
    reloaded = torch.cat(errors).mean().item()
    with open(demo_run / "csv" / "metrics.csv") as f:
        logged = [float(r["val/nrmse"]) for r in csv.DictReader(f) if r.get("val/nrmse")][-1]
    assert reloaded == pytest.approx(logged, rel=1e-4)


def test_crop_larger_than_grid_fails_before_training(tmp_path: Path, tiny_run: list[str]) -> None:
    result = pfm_train([*tiny_run, "data.n=16", "data.crop=32"], tmp_path)
    assert result.returncode != 0
    assert "data.crop=32" in result.stderr and "data.n=16" in result.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_crop_not_divisible_by_downsampling_fails_before_training(
    tmp_path: Path, tiny_run: list[str]
) -> None:
    result = pfm_train([*tiny_run, "data.crop=14"], tmp_path)
    assert result.returncode != 0
    assert "data.crop=14" in result.stderr and "downsampling factor 16" in result.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_unknown_key_on_the_command_line_is_named(tmp_path: Path) -> None:
    result = pfm_train(["trainer.max_stpes=3"], tmp_path)
    assert result.returncode != 0
    assert "max_stpes" in result.stderr


def test_missing_value_is_named(tmp_path: Path, tiny_run: list[str]) -> None:
    result = pfm_train([*tiny_run, "data.crop=???"], tmp_path)
    assert result.returncode != 0
    assert "data.crop" in result.stderr


@pytest.mark.parametrize("validate", [True, False])
def test_picture_reuses_the_validation_set(tmp_path: Path, one_thread: None, validate: bool) -> None:
    """reconstruction.png comes from the loader validation used: the online validation set (pools advanced
    for burn-in) is made once per run, not once more for the picture; without validation it is made then."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=demo", "model=conv_vae", *TINY_RUN[:5]])
    datamodule, task = build_task(cfg)
    calls = []
    make = datamodule.val_dataloader
    datamodule.val_dataloader = lambda: calls.append(1) or make()
    trainer = L.Trainer(
        max_steps=2,
        val_check_interval=2,
        limit_val_batches=None if validate else 0,
        num_sanity_val_steps=0,
        callbacks=[ExamplePlot(tmp_path)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(task, datamodule=datamodule)
    assert len(calls) == 1, f"the validation set was made {len(calls)} times"
    assert (tmp_path / "reconstruction.png").read_bytes().startswith(b"\x89PNG")
