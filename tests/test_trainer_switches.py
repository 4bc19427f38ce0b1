"""A Lightning user's habits: ``trainer.precision``, ``accelerator``, ``devices``, ``num_nodes`` are the same
switches as ``strategy.*`` (pfm.distributed.trainer_switches); ``trainer.strategy`` names the chosen strategy
file or fails naming ``strategy=<name>``. Configs are composed, nothing trains."""

from __future__ import annotations

import lightning as L
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pfm.build import CONF_DIR
from pfm.config_check import check_config
from pfm.distributed.trainer_switches import TRAINER_SWITCHES, merge_trainer_switches
from pfm.launch import compose_run

# one value per switch that differs from every strategy file's default; ddp takes several processes
VALUES = {"accelerator": "cpu", "devices": 2, "num_nodes": 2, "precision": "bf16-mixed"}


def _compose(overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=["experiment=demo", "logger=csv", *overrides])


def _merged(overrides: list[str]) -> DictConfig:
    cfg = _compose(overrides)
    merge_trainer_switches(cfg)
    return cfg


def test_every_switch_has_a_trainer_key() -> None:
    """conf/trainer/default.yaml declares each switch (else Hydra says "Key 'precision' is not in struct")."""
    trainer = OmegaConf.load(CONF_DIR / "trainer" / "default.yaml")
    for key in (*TRAINER_SWITCHES, "strategy"):
        assert key in trainer and trainer[key] is None, key


@pytest.mark.parametrize("key", TRAINER_SWITCHES)
def test_trainer_switch_is_the_strategy_switch(key: str) -> None:
    """trainer.<key>=v gives the same run config as strategy.<key>=v."""
    value = VALUES[key]
    by_trainer = _merged(["strategy=ddp", f"trainer.{key}={value}"])
    by_strategy = _merged(["strategy=ddp", f"strategy.{key}={value}"])
    assert by_trainer.strategy[key] == value
    assert key not in by_trainer.trainer
    assert OmegaConf.to_container(by_trainer) == OmegaConf.to_container(by_strategy)
    check_config(by_trainer)  # and the merged config passes pfm-train's checks


def test_precision_and_accelerator_reach_lightning() -> None:
    """The issue's commands: trainer.precision=bf16-mixed trainer.accelerator=cpu build a Trainer with both."""
    cfg = _merged(["trainer.precision=bf16-mixed", "trainer.accelerator=cpu"])
    setup = instantiate(cfg.strategy, _convert_="all")
    assert setup.trainer_kwargs["precision"] == "bf16-mixed" and setup.trainer_kwargs["accelerator"] == "cpu"
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False, **setup.trainer_kwargs)
    assert isinstance(trainer, L.Trainer)
    assert trainer.precision == "bf16-mixed"
    assert trainer.accelerator.__class__.__name__ == "CPUAccelerator"


def test_integer_precision_is_lightnings_string() -> None:
    """trainer.precision=16 (an int in YAML) is Lightning's "16", which strategy.precision (a str) takes."""
    cfg = _merged(["trainer.precision=16"])
    assert cfg.strategy.precision == "16"
    check_config(cfg)


def test_two_different_values_are_refused_naming_the_strategy_key() -> None:
    with pytest.raises(
        ValueError,
        match=r"trainer.precision=16-mixed and strategy.precision=bf16-mixed.*"
        r"strategy.precision=<value>",
    ):
        _merged(["strategy.precision=bf16-mixed", "trainer.precision=16-mixed"])
    with pytest.raises(ValueError, match=r"trainer.accelerator=gpu and strategy.accelerator=cpu"):
        _merged(["strategy.accelerator=cpu", "trainer.accelerator=gpu"])
    same = _merged(["strategy.precision=bf16-mixed", "trainer.precision=bf16-mixed"])  # no conflict
    assert same.strategy.precision == "bf16-mixed"


def test_trainer_strategy_names_the_chosen_file_or_fails_naming_the_group() -> None:
    assert _merged(["strategy=ddp", "trainer.strategy=ddp"]).strategy.name == "ddp"
    assert "strategy" not in _merged(["trainer.strategy=single"]).trainer
    with pytest.raises(
        ValueError, match=r"trainer.strategy='ddp'.*this run's is strategy=single.*strategy=ddp"
    ):
        _merged(["trainer.strategy=ddp"])
    with pytest.raises(ValueError, match=r"trainer.strategy='horovod'.*one of single, ddp"):
        _merged(["trainer.strategy=horovod"])


def test_check_config_judges_the_merged_config_without_changing_it() -> None:
    """config_check reads only: the conflict is reported, the caller's config is left as composed."""
    cfg = _compose(["strategy.devices=4", "trainer.devices=2", "strategy=ddp"])
    with pytest.raises(ValueError, match=r"trainer.devices=2 and strategy.devices=4"):
        check_config(cfg)
    assert cfg.trainer.devices == 2 and cfg.strategy.devices == 4


def test_pfm_launch_takes_the_trainer_switches() -> None:
    """pfm launch slurm composes as pfm-train: the printed config has them as strategy.*."""
    cfg = compose_run(["experiment=demo", "logger=csv", "trainer.precision=bf16-mixed"])
    assert cfg.strategy.precision == "bf16-mixed" and "precision" not in cfg.trainer
