"""2 CPU processes (gloo) follow the same loss trajectory and reach the same weights as 1 process with the
same global batch, for every multi-process strategy. ``data.num_pools=2`` in both, so the data is the
same; ``task.sample_latent=false`` so no per-rank noise enters the loss.

The optimizer is SGD with momentum (its state is sharded like Adam's): its update is linear in the gradient,
so the 1- and 2-process weights differ by the gradient's rounding only (a batch mean split over processes sums
in another order), which ``conftest.rounding_tolerance`` bounds. Adam would divide each element by its own
running scale and turn a gradient at rounding level into a whole step of either sign, on any CPU; float64
(which keeps such gradients far below Adam's epsilon) is not an option: DeepSpeed has no 64-true precision
and the online data pool does not run under it."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import pfm_train, rounding_tolerance

from pfm.checkpoints.export import training_state_dict

STEPS = 4
LR, MOMENTUM = 0.05, 0.9
BATCH, CROP = 4, 16
RUN = [
    "data.n=16",
    "data.crop=16",
    "data.batch_size=4",
    "data.num_pools=2",
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
    "task.optimizer._target_=torch.optim.SGD",
    f"task.optimizer.lr={LR}",
    f"+task.optimizer.momentum={MOMENTUM}",
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
    """One process, global batch 4 split into 2 pools."""
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
    # a loss is a mean over the batch's voxels: rounding of that sum, of the network's and of the weights'
    loss_tolerance = rounding_tolerance(torch.tensor(ref_losses), terms=2 * BATCH * CROP**3)["atol"]
    assert losses == pytest.approx(ref_losses, rel=0, abs=loss_tolerance), (
        f"{strategy}: {losses} vs {ref_losses}"
    )
    weights = _weights(tmp_path)
    assert set(weights) == set(ref_weights)
    # A gradient element sums over the batch's voxels and back through the network (terms below); clipped to
    # norm 1 (trainer.gradient_clip_val), each element is at most 1 in size. SGD with momentum adds step s's
    # gradient, times lr and momentum powers, into every later step: at most STEPS(STEPS + 1)/2 lr-sized
    # copies of one gradient's rounding; the weights' own update rounding adds STEPS terms of their size.
    gradient = rounding_tolerance(torch.ones(1), terms=2 * BATCH * CROP**3)["atol"]
    for name, value in ref_weights.items():
        atol = LR * STEPS * (STEPS + 1) / 2 * gradient + rounding_tolerance(value, terms=STEPS)["atol"]
        torch.testing.assert_close(weights[name], value, rtol=0, atol=atol, msg=f"{strategy}: {name}")
    # the loss moved: the comparison is not between two untrained models
    assert ref_losses[-1] != ref_losses[0]
