"""Every strategy config composes with every model family and builds on this hardware, or fails at start-up
listing the strategies that will work; the outside-the-model transforms keep the model's numerics."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import rounding_tolerance
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import open_dict

from pfm.build import CONF_DIR, build_model
from pfm.distributed import STRATEGIES, StrategySetup, available_strategies, build_strategy, find_blocks
from pfm.distributed.parallelize import prepare_model

STRATEGY_FILES = sorted(p.stem for p in (CONF_DIR / "strategy").glob("*.yaml"))
MODEL_FILES = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


def test_every_registered_strategy_has_a_config_and_back() -> None:
    assert set(STRATEGY_FILES) == set(STRATEGIES)


@pytest.mark.parametrize("model", MODEL_FILES)
@pytest.mark.parametrize("strategy", STRATEGY_FILES)
def test_strategy_composes_with_model_and_builds_or_says_what_works(strategy: str, model: str) -> None:
    cfg = _compose([f"strategy={strategy}", f"model={model}"])
    assert cfg.strategy.name == strategy
    if strategy in available_strategies(cfg.strategy.accelerator, cfg.strategy.devices):
        setup = instantiate(cfg.strategy, _convert_="all")
        assert isinstance(setup, StrategySetup)
        assert {"strategy", "accelerator", "devices", "precision"} <= set(setup.trainer_kwargs)
    else:
        with pytest.raises(Exception) as info:  # Hydra wraps the RuntimeError, keeping its message
            instantiate(cfg.strategy, _convert_="all")
        message = str(info.value)
        assert f"strategy={strategy} cannot run here" in message
        for name in available_strategies(cfg.strategy.accelerator, cfg.strategy.devices):
            assert name in message
    datamodule = instantiate(cfg.data)
    with torch.device("meta"):
        network = build_model(cfg.model, datamodule.spec)
    assert find_blocks(network), f"{model}: no blocks to checkpoint, compile or shard"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only failure")
def test_offload_on_cpu_fails_listing_what_works() -> None:
    with pytest.raises(RuntimeError) as info:
        build_strategy("deepspeed_zero3_offload", accelerator="cpu")
    message = str(info.value)
    assert "no GPU" in message
    for name in ("single", "ddp", "fsdp", "deepspeed_zero3"):
        assert name in message


def test_bad_names_are_named() -> None:
    with pytest.raises(ValueError, match="no_such"):
        build_strategy("no_such")
    with pytest.raises(RuntimeError, match="single runs one process"):
        build_strategy("single", devices=2, accelerator="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU defaults")
def test_cpu_defaults_to_fp32() -> None:
    assert build_strategy("ddp").trainer_kwargs["precision"] == "32-true"


def _network():
    from pfm.models import ConvVAE

    torch.manual_seed(0)
    return ConvVAE(width=8, latent_channels=4, num_stages=2)


@pytest.mark.parametrize("compile", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_checkpointing_and_compile_keep_outputs_gradients_and_names(compile: bool) -> None:
    # float64: inductor fuses and reorders sums (and contracts multiply-adds); only rounding may differ
    plain = _network().double()
    wrapped = prepare_model(copy.deepcopy(plain), activation_checkpointing=True, compile=compile)
    assert list(plain.state_dict()) == list(wrapped.state_dict()), "parameter names must not change"
    x = torch.randn(2, 1, 8, 8, 8, dtype=torch.float64)
    for net in (plain, wrapped):
        net.zero_grad()
        net(x).pow(2).mean().backward()
    # forward: per conv layer a 3^3 x channels sum; a gradient runs back through them and sums over voxels
    layers = [m for m in plain.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    forward = sum(m.weight[0].numel() for m in layers)
    expected = plain(x)
    torch.testing.assert_close(wrapped(x), expected, **rounding_tolerance(expected, terms=forward))
    # a gradient that cancels to zero (a bias before a normalisation) sums terms of the network's gradient size
    scale = max(float(p.grad.abs().max()) for p in plain.parameters())
    for (name, p), q in zip(plain.named_parameters(), wrapped.parameters(), strict=True):
        tolerance = rounding_tolerance(p.grad, terms=2 * forward + x.numel(), scale=scale)
        torch.testing.assert_close(q.grad, p.grad, **tolerance, msg=name)


def test_zero3_buffers_are_bounded_and_stage3_options_reach_the_config() -> None:
    pytest.importorskip("deepspeed")
    from pfm.distributed.catalog import ZERO3_BUFFERS, ZERO3_CONFIG

    options = {"reduce_bucket_size": 1000, "stage3_param_persistence_threshold": 7}
    setup = build_strategy("deepspeed_zero3", accelerator="cpu", options=options)
    zero = setup.trainer_kwargs["strategy"].config["zero_optimization"]
    assert zero["reduce_bucket_size"] == 1000  # an option overrides pfm's bound
    assert zero["sub_group_size"] == ZERO3_BUFFERS["sub_group_size"]
    assert zero["stage3_prefetch_bucket_size"] == ZERO3_CONFIG["stage3_prefetch_bucket_size"]
    assert zero["stage3_param_persistence_threshold"] == 7
    assert options == {"reduce_bucket_size": 1000, "stage3_param_persistence_threshold": 7}, "not mutated"


def test_cpu_mmap_threshold_out_of_range_names_the_key() -> None:
    from pfm.distributed import set_cpu_mmap_threshold

    with pytest.raises(ValueError, match="cpu_mmap_threshold_mib=64"):
        set_cpu_mmap_threshold(64)
