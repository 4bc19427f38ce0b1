"""``pfm export`` of a ZeRO-3 checkpoint (2 CPU processes) and of a single-process one: the exported model
gives the same outputs as the task restored from the checkpoint."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from conftest import pfm_train
from omegaconf import OmegaConf

from pfm.build import build_task, load_exported
from pfm.checkpoints import read_checkpoint
from pfm.checkpoints.export import training_state_dict
from pfm.cli import main as pfm_cli

RUN = [
    "data.n=16",
    "data.crop=16",
    "data.batch_size=4",
    "data.num_pools=2",
    "data.num_trajectories=2",
    "data.num_val_batches=1",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "checkpoint_every_n_steps=2",
    "plots=false",
    "logger=csv",
]


def _train(out: Path, *args: str) -> Path:
    result = pfm_train([*RUN, *args], out, full_error=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return out / "checkpoints" / "step0000002.ckpt"


def _check_round_trip(checkpoint: Path, run_dir: Path, out: Path) -> None:
    assert pfm_cli(["export", str(checkpoint), "--out", str(out)]) == 0
    for line in (out / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    card = (out / "README.md").read_text()
    assert "steps: 2" in card and "diffusion" in card

    model = load_exported(out)
    _, task = build_task(OmegaConf.load(run_dir / ".hydra" / "config.yaml"))
    task.load_state_dict(training_state_dict(checkpoint))
    task.eval()
    x = torch.randn(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x), task(x), rtol=0, atol=0)


@pytest.mark.slow
def test_zero3_checkpoint_exports_and_reloads_to_the_same_outputs(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    checkpoint = _train(run_dir, "strategy=deepspeed_zero3", "strategy.devices=2")
    assert checkpoint.is_dir(), "ZeRO-3 writes a folder of per-rank shards"
    _check_round_trip(checkpoint, run_dir, tmp_path / "export")


def test_single_process_checkpoint_round_trip(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # pinned: the test checks the recorded target, and the default model (now Tadpole-S) may change
    checkpoint = _train(run_dir, "strategy=single", "model=conv_vae")
    assert read_checkpoint(checkpoint)["pfm"]["model"]["_target_"] == "pfm.models.ConvVAE"
    _check_round_trip(checkpoint, run_dir, tmp_path / "export")


def test_export_of_a_missing_checkpoint_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.ckpt"):
        pfm_cli(["export", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "x")])
