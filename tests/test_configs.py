"""Every option of every config group composes, resolves and builds; bad choices and keys fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue

from pfm.build import CONF_DIR, build_model

GROUPS = ["model", "data", "head", "task", "strategy", "trainer", "logger", "experiment"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = "/tmp/pfm-compose-test"
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


CASES = [(g, o) for g in GROUPS for o in _options(g)]


def test_every_group_has_options() -> None:
    missing = [g for g in GROUPS if g != "experiment" and not _options(g)]
    assert not missing, f"config groups without options: {missing}"
    assert "demo" in _options("experiment")


@pytest.mark.parametrize(("group", "option"), CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_option_composes_and_builds(group: str, option: str) -> None:
    cfg = _compose([f"{group}={option}"])
    missing = OmegaConf.missing_keys(cfg)
    # An option may leave a value for the user to fill (data=shards needs data.path); nothing else may. An
    # experiment on files (foundation_gphyt_finetune: data=well) leaves its data.path to the user too.
    user = (f"{group}.", "data.path") if group == "experiment" else (f"{group}.",)
    assert all(key.startswith(user) for key in missing), f"unexpected missing values: {missing}"
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert set(GROUPS[:-1]) <= set(resolved), "every group is present after composition"
    if missing:
        return
    datamodule = instantiate(cfg.data)
    with torch.device("meta"):  # shapes and wiring only; no memory for large models
        model = build_model(cfg.model, datamodule.spec)
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("pde_file", sorted((CONF_DIR / "data" / "pde").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_pde_config_composes_into_the_online_data(pde_file: Path) -> None:
    name = pde_file.stem
    in_defaults = name in _compose([]).data.pdes
    cfg = _compose([] if in_defaults else [f"+data/pde@data.pdes.{name}={name}"])
    datamodule = instantiate(cfg.data)
    assert name in datamodule.pde_names


def test_unknown_choice_lists_the_valid_options() -> None:
    with pytest.raises(MissingConfigException) as info:
        _compose(["model=no_such_model"])
    message = str(info.value)
    assert "no_such_model" in message
    for option in _options("model"):
        assert option in message


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigCompositionException) as info:
        _compose(["trainer.no_such_key=1"])
    assert "no_such_key" in str(info.value)


def test_missing_key_is_named() -> None:
    cfg = _compose(["data.crop=???"])
    with pytest.raises(MissingMandatoryValue) as info:
        instantiate(cfg.data)
    assert "crop" in str(info.value)


def _reads_files(option: str) -> bool:
    """A data option that reads a dataset from disk: it leaves ``path`` for the user (``path: ???``)."""
    node = OmegaConf.load(CONF_DIR / "data" / f"{option}.yaml")
    return OmegaConf.is_missing(node, "path")  # False when there is no path at all


FILE_DATA = [o for o in _options("data") if _reads_files(o)]
EXPERIMENT_DATA = [(e, d) for e in _options("experiment") for d in FILE_DATA]


def test_file_based_data_choices_exist() -> None:
    assert {"well", "shards", "mdcath"} <= set(FILE_DATA), FILE_DATA


@pytest.mark.parametrize(
    ("experiment", "data"), EXPERIMENT_DATA, ids=[f"{e}-{d}" for e, d in EXPERIMENT_DATA]
)
def test_experiment_composes_with_any_file_data(experiment: str, data: str, tmp_path: Path) -> None:
    """`experiment=<any> data=<file-based> data.path=DIR` works as typed: the experiment's data settings
    travel with its own data choice, so the new choice replaces them whole, and the config check passes."""
    from pfm.config_check import config_problems

    cfg = _compose([f"experiment={experiment}", f"data={data}", f"data.path={tmp_path}"])
    alone = _compose([f"data={data}", f"data.path={tmp_path}"])
    assert OmegaConf.to_container(cfg.data) == OmegaConf.to_container(alone.data)
    assert config_problems(cfg) == []


def test_a_typed_key_the_new_data_does_not_take_still_fails(tmp_path: Path) -> None:
    """What the user typed is kept: a key for the online data, given with data=well, is named with the fix."""
    from pfm.config_check import config_problems

    cfg = _compose(["experiment=gphyt_demo", "data=well", f"data.path={tmp_path}", "+data.n=32"])
    problems = config_problems(cfg)
    assert len(problems) == 1 and "data.n=32" in problems[0] and "~data.n" in problems[0], problems


def test_a_run_checks_its_config_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """pfm.train.run checks every section once: build_task, after run's check, checks only init_from."""
    import pfm.build
    import pfm.train

    checked: list[str] = []

    def record(cfg, keys=None) -> None:
        checked.extend(keys)

    class Built(Exception):
        pass

    def stop(*args, **kwargs):
        raise Built

    monkeypatch.setattr(pfm.train, "check_config", record)
    monkeypatch.setattr(pfm.build, "check_config", record)
    monkeypatch.setattr(pfm.train, "resolve_resume", stop)  # the first thing after build_task
    cfg = _compose(["experiment=demo", "data.n=16", "data.crop=16", "data.batch_size=2"])
    with pytest.raises(Built):
        pfm.train.run(cfg, tmp_path)
    assert sorted(checked) == sorted(str(key) for key in cfg), "every key once, init_from included"
