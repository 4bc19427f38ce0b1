"""2 CPU processes (gloo) follow the same loss trajectory and reach the same weights as 1 process with the
same global batch, for every multi-process strategy. ``data.num_data_shards=2`` in both, so the data is the
same; ``task.sample_latent=false`` so no per-rank noise enters the loss."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import pfm_train

from pfm.checkpoints.export import training_state_dict

STEPS = 4
RUN = [
    "data.n=16",
    "data.crop=16",
    "data.batch_size=4",
    "data.num_data_shards=2",
    "data.num_trajectories=2",
    "data.num_val_batches=1",
    f"trainer.max_steps={STEPS}",
    f"trainer.val_check_interval={STEPS}",
    "+trainer.limit_val_batches=0",
    "+trainer.num_sanity_val_steps=0",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    f"checkpoint_every_n_steps={STEPS}",
    "plots=false",
    "logger=csv",
    "task.sample_latent=false",
]
STRATEGIES = ["ddp", "fsdp", "deepspeed_zero1", "deepspeed_zero2", "deepspeed_zero3"]


def _pfm_train(args: list[str], out: Path) -> subprocess.CompletedProcess:
    result = pfm_train([*RUN, *args], out, full_error=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def _losses(out: Path) -> list[float]:
    with open(out / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss_global")]
    return [float(r["train/loss_global"]) for r in sorted(rows, key=lambda r: int(r["step"]))]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in training_state_dict(out / "checkpoints" / "last.ckpt").items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[float], dict[str, torch.Tensor]]:
    """One process, global batch 4 split into 2 data shards."""
    out = tmp_path_factory.mktemp("single")
    _pfm_train(["strategy=single"], out)
    losses = _losses(out)
    assert len(losses) == STEPS
    return losses, _weights(out)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_two_processes_match_one(strategy: str, reference, tmp_path: Path) -> None:
    ref_losses, ref_weights = reference
    _pfm_train([f"strategy={strategy}", "strategy.devices=2"], tmp_path)
    losses = _losses(tmp_path)
    assert losses == pytest.approx(ref_losses, rel=1e-4, abs=1e-6), f"{strategy}: {losses} vs {ref_losses}"
    weights = _weights(tmp_path)
    assert set(weights) == set(ref_weights)
    # Adam divides each gradient element by its own running scale, so an element whose gradient sits at
    # rounding level (the 2-process all-reduce sums in another order) can move by up to one step, lr, either
    # way. Measured (ddp, 4 steps, lr 1e-4): at most 5.9e-5. A wrong update is many steps off, or shows in
    # the losses, which must agree to 1e-4.
    lr = 1e-4  # conf/task/autoencoder.yaml
    for name, value in ref_weights.items():
        torch.testing.assert_close(weights[name], value, rtol=1e-4, atol=lr, msg=f"{strategy}: {name}")
    # the loss moved: the comparison is not between two untrained models
    assert ref_losses[-1] != ref_losses[0]
