"""GPhyT training: next-frame loss, multi-step training through the integrator, rollout metrics that stop at the
first non-finite value, the gphyt_fields fine-tuning head, and end-to-end runs of the experiments."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import pfm_train
from torch import nn

from pfm.heads import gphyt_fields
from pfm.heads.lora import LoRALinear
from pfm.models import GPhyT
from pfm.tasks import NextFrameTask
from pfm.tasks.next_frame import field_errors

FIELDS = ("vorticity", "vel_x", "vel_y")


def tiny_gphyt(fields=FIELDS, **kwargs) -> GPhyT:
    torch.manual_seed(0)
    args = dict(
        size=None,
        hidden_dim=32,
        mlp_dim=64,
        num_heads=2,
        num_layers=2,
        fields=fields,
        num_frames=3,
        grid=(8, 8),
        patch_size=(1, 4, 4),
        num_spatial_dims=2,
    )
    return GPhyT(**{**args, **kwargs})


def task_for(model: nn.Module, fields=FIELDS, **kwargs) -> NextFrameTask:
    opt = lambda params: torch.optim.SGD(params, lr=0.1)  # noqa: E731
    return NextFrameTask(model, opt, fields=fields, num_frames=3, error_curve=False, **kwargs)


def window_batch(num_future: int = 2, batch: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3 + num_future, 8, 8, 3, generator=g).cumsum(1) * 0.1
    return {
        "input": x,
        "field_mask": torch.ones(batch, 3, dtype=torch.bool),
        "source": torch.zeros(batch, dtype=torch.long),
    }


def test_field_errors_match_their_definitions() -> None:
    target = torch.randn(2, 8, 8, 3) * 5 + 2
    vrmse, _ = field_errors(target.mean(dim=(1, 2), keepdim=True).expand_as(target), target)
    torch.testing.assert_close(vrmse, torch.ones(2, 3))
    _, nrmse = field_errors(torch.zeros_like(target), target)
    torch.testing.assert_close(nrmse, torch.ones(2, 3))
    v, n = field_errors(target, target)
    assert v.abs().max() == 0 and n.abs().max() == 0


def test_loss_is_normalised_per_field() -> None:
    task = task_for(tiny_gphyt())
    batch = window_batch()
    loss = task.training_step(batch, 0)
    scaled = dict(batch)
    scaled["input"] = batch["input"] * torch.tensor([1.0, 1e3, 1e-2]) + torch.tensor([0.0, 50.0, -3.0])
    # every field counts the same whatever its scale: the loss does not move
    torch.testing.assert_close(task.training_step(scaled, 0), loss, rtol=2e-4, atol=1e-6)
    # and it is the field-normalised MSE of the prediction
    x = batch["input"]
    mean = x[:, :3].mean(dim=(1, 2, 3), keepdim=True)
    std = x[:, :3].std(dim=(1, 2, 3), keepdim=True, unbiased=False)
    pred = task.model((x[:, :3] - mean) / std, fields=list(FIELDS)) * std + mean
    expected = ((pred - x[:, 3:4]) / std).pow(2).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-6)


def test_samples_with_other_fields_are_masked_not_zero_filled() -> None:
    task = task_for(tiny_gphyt())
    batch = window_batch(num_future=1)
    batch["field_mask"][2:, 0] = False  # the last two samples have only velocity
    batch["input"][2:, ..., 0] = 0.0
    predicted, finite = task.rollout(batch["input"][:, :3], batch["field_mask"], 1)
    assert finite.tolist() == [1, 1, 1, 1]
    alone = task_for(task.model, fields=("vel_x", "vel_y"))
    velocity_only, _ = alone.rollout(batch["input"][2:, :3, ..., 1:], torch.ones(2, 2, dtype=torch.bool), 1)
    torch.testing.assert_close(predicted[2:, ..., 1:], velocity_only)
    assert predicted[2:, ..., 0].abs().max() == 0
    # zero-filling instead would give another answer (the model adds its absent-field embedding)
    zero_filled, _ = task.rollout(batch["input"][2:, :3], torch.ones(2, 3, dtype=torch.bool), 1)
    assert not torch.allclose(zero_filled[..., 1:], velocity_only)


@pytest.mark.parametrize("integrator", ["euler", "heun", "rk4"])
def test_multistep_training_goes_through_the_integrator(integrator: str) -> None:
    model = tiny_gphyt()
    task = task_for(model, integrator=integrator, num_train_steps=2)
    batch = window_batch(num_future=2)
    x = batch["input"]
    mean = x[:, :3].mean(dim=(1, 2, 3), keepdim=True)
    std = x[:, :3].std(dim=(1, 2, 3), keepdim=True, unbiased=False)
    w = (x[:, :3] - mean) / std
    first = model.step(w, fields=list(FIELDS), integrator=integrator)
    second = model.step(torch.cat((w[:, 1:], first), 1), fields=list(FIELDS), integrator=integrator)
    pred = torch.cat((first, second), 1) * std + mean
    expected = ((pred - x[:, 3:5]) / std).pow(2).mean()
    loss = task.training_step(batch, 0)
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-6)
    loss.backward()
    assert model.blocks[0].mlp.fc1.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="num_future >= 3"):
        task_for(model, num_train_steps=3).training_step(batch, 0)


class _BlowsUp(nn.Module):
    """A stand-in field model whose third prediction is NaN: x_{n+1} = 1.1 x_n, then NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.fields, self.num_frames = FIELDS, 3
        self.scale = nn.Parameter(torch.tensor(1.1))
        self.calls = 0

    def forward(self, x: torch.Tensor, fields=None) -> torch.Tensor:
        self.calls += 1
        out = x[:, -1:] * self.scale
        return out * float("nan") if self.calls >= 3 else out


def test_rollout_stops_cleanly_at_the_first_non_finite_value() -> None:
    logged: dict[str, float] = {}
    task = task_for(_BlowsUp(), normalize="none")
    task.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    batch = window_batch(num_future=5)
    task.validation_step(batch, 0)
    assert logged["val/rollout_steps"] == 2.0
    assert "val/nrmse_step2" in logged and "val/nrmse_step3" not in logged
    assert all(torch.isfinite(torch.tensor(v)) for v in logged.values())
    task.model.calls = 0
    predicted, finite = task.rollout(batch["input"][:, :3], batch["field_mask"], 5, stop_non_finite=True)
    assert finite.tolist() == [2, 2, 2, 2] and torch.isnan(predicted[:, 2:]).all()
    torch.testing.assert_close(predicted[:, 1], batch["input"][:, 2] * 1.1**2)


def test_validation_logs_per_field_and_source() -> None:
    logged: dict[str, float] = {}
    task = task_for(tiny_gphyt(), pde_names=["ns", "kolmogorov"])
    task.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    batch = window_batch(num_future=3)
    batch["source"] = torch.tensor([0, 0, 1, 1])
    batch["field_mask"][2:, 0] = False
    task.validation_step(batch, 0)
    for key in (
        "val/nrmse",
        "val/vrmse",
        "val/nrmse/vorticity",
        "val/vrmse/vel_y",
        "val/nrmse/ns",
        "val/vrmse/kolmogorov",
        "val/rollout_nrmse/kolmogorov",
        "val/nrmse_step3",
        "val/persistence_nrmse_step3",
    ):
        assert key in logged, key
    assert logged["val/rollout_steps"] == 3.0


def test_3d_windows_train_and_plot_a_mid_plane() -> None:
    model = tiny_gphyt(
        fields=("vel_x", "vel_y", "vel_z"), grid=(8, 8, 8), patch_size=(1, 4, 4, 4), num_spatial_dims=3
    )
    task = task_for(model, fields=("vel_x", "vel_y", "vel_z"))
    batch = {
        "input": torch.randn(2, 5, 8, 8, 8, 3).cumsum(1),
        "field_mask": torch.ones(2, 3, dtype=torch.bool),
        "source": torch.zeros(2, dtype=torch.long),
    }
    assert torch.isfinite(task.training_step(batch, 0))
    name, rows = task.example_panels(batch)
    assert name == "rollout.png"
    assert [tuple(v.shape) for v in rows.values()] == [(2, 8, 8), (2, 8, 8)]
    truth = next(iter(rows.values()))
    torch.testing.assert_close(truth, batch["input"][0, 3:, :, :, 4, 0])


# ------------------------------------------------------------------------------------------------- head
def test_head_adds_fields_freezes_the_body_and_keeps_old_outputs() -> None:
    model = tiny_gphyt()
    x = torch.randn(2, 3, 8, 8, 3)
    before = model(x, fields=list(FIELDS)).detach()
    base_weight = model.blocks[0].mlp.fc1.weight
    model = gphyt_fields(model, fields=("vorticity", "species_u", "species_v"), lora_rank=4)
    assert model.fields == (*FIELDS, "species_u", "species_v")
    torch.testing.assert_close(model(x, fields=list(FIELDS)), before)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "something must train"
    assert all(
        n.startswith(("tokenizer.", "detokenizer.", "absent_embedding")) or "lora_" in n for n in trainable
    )
    assert not base_weight.requires_grad and model.blocks[0].mlp.fc1.weight is base_weight
    lora = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    # every Linear of the body, the last block's qkv included (its query-only path calls the module)
    assert {f"blocks.{i}.attn.{n}" for i in range(len(model.blocks)) for n in ("qkv", "proj")} <= set(lora)
    assert "blocks.1.mlp.fc2" in lora and len(lora) == 4 * len(model.blocks)
    # a few steps on the new fields move the LoRA factors and new channels, never the frozen body
    task = task_for(model, fields=("vorticity", "species_u", "species_v"))
    opt = task.configure_optimizers()
    frozen = base_weight.detach().clone()
    lora_b = model.blocks[0].mlp.fc1.lora_B.detach().clone()
    last_qkv_b = model.blocks[-1].attn.qkv.lora_B.detach().clone()
    for _ in range(2):
        opt.zero_grad()
        task.training_step(window_batch(), 0).backward()
        opt.step()
    assert torch.equal(base_weight, frozen)
    assert not torch.equal(model.blocks[0].mlp.fc1.lora_B, lora_b)
    assert not torch.equal(model.blocks[-1].attn.qkv.lora_B, last_qkv_b)  # the last block's qkv LoRA trains


def test_head_full_finetuning_and_errors() -> None:
    model = gphyt_fields(tiny_gphyt(), fields=("vel_x", "pressure"), freeze_base=False)
    assert all(p.requires_grad for p in model.parameters())
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert model.fields[-1] == "pressure"
    with pytest.raises(TypeError, match="GPhyT"):
        gphyt_fields(nn.Linear(2, 2), fields=("a",))


# --------------------------------------------------------------------------------------------- end to end
def _metrics(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


DEMO_TINY = [
    "experiment=gphyt_demo",
    "trainer.max_steps=3",
    "trainer.val_check_interval=3",
    "checkpoint_every_n_steps=3",
    "trainer.enable_progress_bar=false",
    "data.num_val_batches=1",
    "data.val_burn_in_steps=2",
    "data.batch_size=2",
    "data.num_trajectories=1",
    "data.num_val_future=3",
    "model.num_layers=1",
]


@pytest.mark.slow
def test_demo_then_finetune_on_new_fields_end_to_end(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    result = pfm_train(DEMO_TINY, demo)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (demo / "checkpoints" / "last.ckpt").exists()
    assert (demo / "rollout.png").stat().st_size > 0 and (demo / "rollout_error.png").stat().st_size > 0
    rows = _metrics(demo / "csv" / "metrics.csv")
    assert any(r.get("val/nrmse_step3") for r in rows) and any(r.get("val/rollout_steps") for r in rows)

    tune = tmp_path / "finetune"
    result = pfm_train(
        [
            "experiment=gphyt_finetune",
            f"init_from={demo / 'checkpoints' / 'last.ckpt'}",
            "model.size=null",
            "+model.hidden_dim=128",
            "+model.mlp_dim=512",
            "+model.num_heads=4",
            "+model.num_layers=1",
            "model.patch_size=[1,8,8]",
            "head.model_spec.fields=[vorticity,vel_x,vel_y]",
            "head.model_spec.grid=[32,32]",
            "head.lora_rank=2",
            "data.n=32",
            "data.batch_size=2",
            "data.num_trajectories=1",
            "data.num_val_batches=1",
            "data.val_burn_in_steps=2",
            "data.num_val_future=2",
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            "checkpoint_every_n_steps=2",
            "trainer.enable_progress_bar=false",
            "logger=csv",
        ],
        tune,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert "new fields ['species_u', 'species_v']" in out and "parameters trainable" in out
    rows = _metrics(tune / "csv" / "metrics.csv")
    assert any(r.get("val/nrmse/species_v") for r in rows)
    # the export rebuilds the fine-tuned model (pretrained vocabulary + new fields, LoRA) and loads it strictly
    from pfm.build import load_exported
    from pfm.checkpoints.export import export_checkpoint

    model = load_exported(export_checkpoint(tune / "checkpoints" / "last.ckpt", tmp_path / "export"))
    assert model.fields == ("vorticity", "vel_x", "vel_y", "species_u", "species_v")
    assert any(isinstance(m, LoRALinear) for m in model.modules())
