"""Tasks beyond the demo: dynamics fine-tuning with rollouts, the adversarial autoencoder, pretrained
weights, and a short pretrain -> fine-tune chain through ``pfm-train``."""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import pfm_train
from safetensors.torch import save_file

from pfm.checkpoints.pretrained import load_weights
from pfm.data import OnlineCropDataModule
from pfm.heads import TadpoleDynamics
from pfm.models import ConvVAE, PatchDiscriminator3d, TadpoleAutoencoder
from pfm.tasks import AutoencoderTask, DynamicsTask

ADAM = functools.partial(torch.optim.Adam, lr=1e-3)


def test_dynamics_task_starts_as_the_autoencoder_and_rolls_out() -> None:
    torch.manual_seed(0)
    autoencoder = TadpoleAutoencoder("S", crop_size=16)
    x = torch.randn(1, 2, 16, 16, 16) * 3 + 1
    dims = (2, 3, 4)
    mean, std = x.mean(dims, keepdim=True), x.std(dims, keepdim=True)
    expected = autoencoder((x - mean) / std) * std + mean
    task = DynamicsTask(TadpoleDynamics(autoencoder, num_channels=2, lora_rank=4), ADAM)
    with torch.no_grad():
        torch.testing.assert_close(task(x), expected, rtol=1e-4, atol=1e-4)
        assert task.rollout(x, 3).shape == (1, 3, 2, 16, 16, 16)
    window = torch.randn(1, 3, 2, 16, 16, 16)
    loss = task.training_step({"input": window}, 0)
    loss.backward()
    assert torch.isfinite(loss)
    trainable = {n for n, p in task.named_parameters() if p.requires_grad}
    assert all("lora_" in n or "latent_transformer" in n or "skip_scales" in n for n in trainable)
    name, rows = task.example_panels({"input": window})
    assert name == "rollout.png" and rows["rollout"].shape == rows["truth"].shape == (2, 16, 16)


def test_dynamics_task_rejects_single_frames() -> None:
    task = DynamicsTask(ConvVAE(), ADAM)
    with pytest.raises(ValueError, match="time >= 2"):
        task.training_step({"input": torch.randn(2, 1, 16, 16, 16)}, 0)


def test_adversarial_autoencoder_updates_model_and_discriminator(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = OnlineCropDataModule(
        {"diffusion": {"name": "diffusion", "dt": 0.01, "coefficients": {"diffusivity": [0.001, 0.005]}}},
        n=16,
        crop=16,
        batch_size=2,
        num_trajectories=2,
        num_val_batches=1,
    )
    task = AutoencoderTask(ConvVAE(), ADAM, discriminator=PatchDiscriminator3d(width=4, num_layers=2))
    before_d = [p.detach().clone() for p in task.discriminator.parameters()]
    before_g = [p.detach().clone() for p in task.model.parameters()]
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(task, datamodule=data)
    assert any(not torch.equal(a, b) for a, b in zip(before_d, task.discriminator.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(before_g, task.model.parameters(), strict=True))
    assert torch.isfinite(trainer.callback_metrics["train/d_loss"])


def test_official_tadpole_files_load_and_mismatches_are_named(tmp_path: Path) -> None:
    source = TadpoleAutoencoder("S", crop_size=16)
    save_file(
        {k: v.contiguous() for k, v in source.encoder.state_dict().items()},
        tmp_path / "tadpole_s_encoder.safetensors",
    )
    save_file(
        {k: v.contiguous() for k, v in source.decoder.state_dict().items()},
        tmp_path / "tadpole_s_decoder.safetensors",
    )
    target = load_weights(TadpoleAutoencoder("S", crop_size=16), tmp_path)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))
    with pytest.raises(ValueError, match="shape mismatch"):
        with torch.device("meta"):
            wrong = TadpoleAutoencoder("B", crop_size=16)
        load_weights(wrong, tmp_path)
    with pytest.raises(FileNotFoundError, match="init_from"):
        load_weights(target, tmp_path / "missing.ckpt")


@pytest.mark.slow
def test_tadpole_pretrain_then_finetune_through_pfm_train(tmp_path: Path) -> None:
    common = [
        "logger=csv",
        "data.batch_size=1",
        "data.num_trajectories=1",
        "data.num_val_batches=1",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "checkpoint_every_n_steps=2",
    ]
    pre = tmp_path / "pretrain"
    result = pfm_train(["experiment=tadpole_pretrain", "data.n=32", "data.crop=16", *common], pre)
    assert result.returncode == 0, result.stderr[-3000:]
    fine = tmp_path / "finetune"
    result = pfm_train(
        [
            "experiment=tadpole_finetune",
            f"init_from={pre / 'checkpoints' / 'last.ckpt'}",
            "data.n=32",
            "data.window=3",
            *common,
        ],
        fine,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(fine / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("val/nrmse_step2") for r in rows), "rollout nRMSE is logged per step"
    assert "num_trainable_parameters" in (fine / "csv" / "hparams.yaml").read_text()
    assert (fine / "rollout.png").read_bytes().startswith(b"\x89PNG")
