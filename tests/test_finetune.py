"""Fine-tuning controls (finetune.freeze, finetune.param_groups): the optimizer's groups and learning rates,
frozen parameters that get no gradient and do not move, and clear errors for patterns that match nothing."""

from __future__ import annotations

import fnmatch

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from pfm.build import CONF_DIR, build_task

pytestmark = pytest.mark.usefixtures("one_thread")

# Tadpole-S under the dynamics head on 16^3 windows of 3 channels: the smallest real fine-tuning setup
SMALL = ["experiment=tadpole_finetune", "data.n=16", "head.latent_depth=1", "trainer.max_steps=10"]


def _compose(overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides)


def _optimizer(task) -> torch.optim.Optimizer:
    config = task.configure_optimizers()
    return config["optimizer"] if isinstance(config, dict) else config


def test_param_groups_set_learning_rates_inside_the_optimizer() -> None:
    cfg = _compose(
        [
            *SMALL,
            "task.optimizer.lr=1e-4",
            "finetune.param_groups=[{pattern: 'latent_transformer.*', lr: 1e-2},"
            " {pattern: '*lora_*', lr: 3e-3, weight_decay: 0.1}]",
        ]
    )
    _, task = build_task(cfg)
    optimizer = _optimizer(task)
    groups = optimizer.param_groups
    assert len(groups) == 3, [g.get("initial_lr") for g in groups]
    # LambdaLR keeps each group's own peak as initial_lr (and scales all of them by the same factor)
    assert [g["initial_lr"] for g in groups] == [1e-2, 3e-3, 1e-4]
    assert [g["weight_decay"] for g in groups] == [0.0, 0.1, 0.0]
    latent, lora, rest = (set(g["param_names"]) for g in groups)
    assert latent and all(n.startswith("latent_transformer.") for n in latent)
    assert lora and all("lora_" in n for n in lora)
    assert "skip_scales" in rest and not any(n.startswith("latent_transformer.") for n in rest)
    trainable = {n for n, p in task.model.named_parameters() if p.requires_grad}
    assert latent | lora | rest == trainable, "every trainable parameter is in exactly one group"
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    # the schedule scales every group by the same factor: the ratio of the peaks is kept
    lrs = [g["lr"] for g in groups]
    assert lrs[0] / lrs[2] == pytest.approx(100.0)


def test_frozen_parameters_get_no_gradient_and_do_not_change() -> None:
    torch.manual_seed(0)
    pattern = "latent_transformer.blocks.0.*"
    cfg = _compose([*SMALL, f"finetune.freeze=['{pattern}']", "task.optimizer.lr=1e-2"])
    _, task = build_task(cfg)
    named = dict(task.model.named_parameters())
    frozen = {n for n in named if fnmatch.fnmatchcase(n, pattern)}
    assert frozen and not any(named[n].requires_grad for n in frozen)
    before = {n: p.detach().clone() for n, p in named.items()}
    optimizer = _optimizer(task)
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not any(id(named[n]) in in_optimizer for n in frozen)
    for _ in range(2):
        optimizer.zero_grad()
        loss = task.training_step({"input": torch.randn(1, 2, 3, 16, 16, 16)}, 0)
        loss.backward()
        assert all(named[n].grad is None for n in frozen)
        optimizer.step()
    assert all(torch.equal(named[n], before[n]) for n in frozen)
    moved = {n for n in named if not torch.equal(named[n], before[n])}
    assert moved and not moved & frozen
    assert any("lora_" in n for n in moved) and any(n.startswith("latent_transformer.") for n in moved)
    # the head's own choice stays: the autoencoder's base weights frozen, its LoRA factors trained
    base = [p for n, p in named.items() if n.startswith("autoencoder.") and "lora_" not in n]
    assert base and not any(p.requires_grad for p in base)


@pytest.mark.parametrize(
    ("override", "words"),
    [
        (
            "finetune.freeze=['encodr.*']",
            ["finetune.freeze", "'encodr.*'", "matches no parameter", "latent_transformer.*"],
        ),
        (
            "finetune.param_groups=[{pattern: 'head.*', lr: 1e-3}]",
            ["finetune.param_groups[0]", "'head.*'", "matches no parameter", "autoencoder.*"],
        ),
        (
            "finetune.param_groups=[{pattern: 'autoencoder.encoder.*.weight', lr: 1e-3}]",
            ["'autoencoder.encoder.*.weight'", "only frozen parameters"],
        ),
        (
            "finetune.param_groups=[{pattern: 'latent_*', lr: 1e-3}, {pattern: 'latent_transformer.*', lr: 1e-2}]",
            ["finetune.param_groups[1]", "earlier group"],
        ),
        ("finetune.param_groups=[{lr: 1e-3}]", ["finetune.param_groups[0]", "'pattern'"]),
    ],
    ids=["freeze-typo", "group-no-match", "group-only-frozen", "group-shadowed", "group-without-pattern"],
)
def test_a_pattern_that_matches_nothing_is_named(override: str, words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        build_task(_compose([*SMALL, override]))
    message = str(info.value)
    for word in words:
        assert word in message, message
    assert "Fix:" in message
