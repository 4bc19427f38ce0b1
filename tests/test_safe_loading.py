"""pfm.unpickle: foreign checkpoints are unpickled without running their code."""

from __future__ import annotations

import builtins
import os
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from pfm.unpickle import (
    Placeholder,
    load_state_dict,
    refused_globals,
    safe_load,
)


class RunsShell:
    """Unpickling this calls os.system, which creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class RunsExec:
    """Unpickling this calls exec, which creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


class AuthorsHparams:
    """Stands for an author's own class kept in Lightning's hyper_parameters (pickled by NEWOBJ + BUILD)."""

    def __init__(self) -> None:
        self.width = 64
        self.layers = [1, 2]


class AuthorsDict(dict):
    """A dict subclass, pickled with SETITEMS on the object (like Lightning's AttributeDict)."""


def _weights() -> OrderedDict[str, torch.Tensor]:
    return OrderedDict(
        [
            ("encoder.weight", torch.randn(4, 3)),
            ("encoder.bias", torch.randn(4).to(torch.bfloat16)),
            ("scale", torch.nn.Parameter(torch.ones(2))),
            ("steps", torch.tensor(7)),
        ]
    )


def test_fixture_is_live(tmp_path):
    # The payload really runs under plain pickle loading: otherwise "marker absent" below would prove nothing.
    marker = tmp_path / "ran"
    torch.save({"x": RunsShell(marker)}, tmp_path / "evil.ckpt")
    torch.load(tmp_path / "evil.ckpt", weights_only=False)
    assert marker.exists()


def test_tensors_load_and_pickled_code_in_hyper_parameters_does_not_run(tmp_path):
    marker = tmp_path / "ran"
    weights = _weights()
    hparams = AuthorsDict(cfg=AuthorsHparams(), hook=RunsShell(marker), other=RunsExec(marker))
    torch.save(
        {
            "state_dict": weights,
            "hyper_parameters": hparams,
            "epoch": 3,
            "shape": torch.Size([2, 3]),
        },
        tmp_path / "model.ckpt",
    )
    ckpt = safe_load(tmp_path / "model.ckpt")
    assert not marker.exists()
    assert ckpt["epoch"] == 3 and ckpt["shape"] == torch.Size([2, 3])
    hp = ckpt["hyper_parameters"]
    assert isinstance(hp, Placeholder) and hp.global_name.endswith("AuthorsDict")
    assert isinstance(hp.items["cfg"], Placeholder) and hp.items["cfg"].state == {
        "width": 64,
        "layers": [1, 2],
    }
    assert hp.items["hook"].global_name == "os.system"
    assert hp.items["hook"].args == (f"touch {marker}",)
    assert hp.items["other"].global_name == "builtins.exec"
    assert "os.system" in refused_globals(ckpt)

    state = load_state_dict(tmp_path / "model.ckpt")
    assert list(state) == list(weights)
    for name, value in weights.items():
        assert state[name].dtype == value.dtype
        torch.testing.assert_close(state[name], value.detach())
    assert not marker.exists()


def test_untyped_storages_and_numpy_load(tmp_path):
    import numpy as np

    storage = torch.UntypedStorage(8)
    torch.save(
        {"storage": storage, "array": np.arange(3.0), "rng": np.random.get_state()},
        tmp_path / "s.pt",
    )
    loaded = safe_load(tmp_path / "s.pt")
    assert loaded["storage"].nbytes() == 8  # torch.load gives it back as a TypedStorage of uint8, as here
    np.testing.assert_array_equal(loaded["array"], np.arange(3.0))
    assert loaded["rng"][0] == "MT19937" and refused_globals(loaded) == []


def test_flat_tensor_dict_at_top_level(tmp_path):
    weights = _weights()
    torch.save(weights, tmp_path / "gphyt-S.pth")
    state = load_state_dict(tmp_path / "gphyt-S.pth")
    assert set(state) == set(weights)
    torch.testing.assert_close(state["encoder.weight"], weights["encoder.weight"])


def test_legacy_non_zip_format(tmp_path):
    marker = tmp_path / "ran"
    obj = {"state_dict": {"w": torch.arange(4.0)}, "extra": RunsShell(marker)}
    torch.save(obj, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    torch.testing.assert_close(load_state_dict(tmp_path / "old.pt")["w"], torch.arange(4.0))
    assert not marker.exists()


def test_other_key(tmp_path):
    torch.save({"model": {"a": torch.zeros(1)}, "optimizer": {}}, tmp_path / "x.pt")
    assert set(load_state_dict(tmp_path / "x.pt", key="model")) == {"a"}
    with pytest.raises(ValueError, match=r"no 'state_dict' entry.*'model'.*key="):
        load_state_dict(tmp_path / "x.pt")


def test_state_dict_that_needs_code_is_refused_by_name(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"state_dict": RunsShell(marker)}, tmp_path / "evil.ckpt")
    with pytest.raises(ValueError, match=r"evil\.ckpt.*os\.system.*refused"):
        load_state_dict(tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_code_among_the_tensors_is_refused(tmp_path):
    marker = tmp_path / "ran"
    torch.save(
        {"state_dict": {"w": torch.ones(2), "payload": RunsExec(marker)}},
        tmp_path / "evil.ckpt",
    )
    with pytest.raises(ValueError, match=r"evil\.ckpt.*'payload'.*builtins\.exec"):
        load_state_dict(tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_top_level_payload_is_refused(tmp_path):
    marker = tmp_path / "ran"
    torch.save(RunsShell(marker), tmp_path / "evil.pth")
    with pytest.raises(ValueError, match=r"evil\.pth.*os\.system"):
        load_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        safe_load(tmp_path / "nope.ckpt")
    torch.save({"w": torch.ones(1000)}, tmp_path / "whole.ckpt")
    data = (tmp_path / "whole.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.ckpt.*sha256"):
        safe_load(tmp_path / "cut.ckpt")


# --- the three ways a foreign file enters pfm: init_from, pfm export, load_pretrained -------------------------

_SPEC = {"num_channels": 1, "crop_size": 16, "num_spatial_dims": 3}


def _pfm_checkpoint(path: Path, marker: Path, *, poison_weights: bool) -> torch.nn.Module:
    """A checkpoint shaped like pfm-train's (ConvVAE under ``model.``, a ``pfm`` run description) that also
    carries payloads which run code when unpickled with weights_only=False."""
    from pfm.build import build_model, model_config

    model = build_model(model_config("conv_vae"), _SPEC)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    if poison_weights:
        state["model.encoder.extra"] = RunsShell(marker)
    torch.save(
        {
            "state_dict": state,
            "global_step": 3,
            "pfm": {
                "model": {
                    "_target_": "pfm.models.ConvVAE",
                    "width": 16,
                    "latent_channels": 8,
                    "num_stages": 2,
                },
                "head": None,
                "data_spec": _SPEC,
                "config": {"seed": 0},
            },
            "hyper_parameters": AuthorsDict(hook=RunsShell(marker)),
            "callbacks": {"x": RunsExec(marker)},
        },
        path,
    )
    return model


def test_init_from_runs_no_pickled_code(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from pfm.build import CONF_DIR, build_task

    marker = tmp_path / "ran"
    source = _pfm_checkpoint(tmp_path / "good.ckpt", marker, poison_weights=False)
    _pfm_checkpoint(tmp_path / "bad.ckpt", marker, poison_weights=True)
    overrides = [
        "experiment=demo",
        "model=conv_vae",
        "data.n=16",
        "data.crop=16",
        "data.num_trajectories=2",
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        good = compose("train", overrides=[*overrides, f"init_from={tmp_path / 'good.ckpt'}"])
        bad = compose("train", overrides=[*overrides, f"init_from={tmp_path / 'bad.ckpt'}"])
    _, task = build_task(good)
    torch.testing.assert_close(task.model.state_dict(), source.state_dict())
    with pytest.raises(ValueError, match=r"bad\.ckpt.*model\.encoder\.extra.*os\.system"):
        build_task(bad)
    assert not marker.exists()


def test_pfm_export_runs_no_pickled_code(tmp_path, capsys):
    from safetensors.torch import load_file

    from pfm.cli import main as pfm_cli

    marker = tmp_path / "ran"
    source = _pfm_checkpoint(tmp_path / "good.ckpt", marker, poison_weights=False)
    assert (
        pfm_cli(
            [
                "export",
                str(tmp_path / "good.ckpt"),
                "--out",
                str(tmp_path / "out"),
                "--name",
                "mine",
            ]
        )
        == 0
    )
    exported = load_file(tmp_path / "out" / "model.safetensors")
    torch.testing.assert_close(exported, source.state_dict())
    printed = capsys.readouterr().out
    assert "mine:" in printed and "model: conv_vae" in printed, "export prints its registry entry"
    assert printed.strip().splitlines()[-1].endswith("SHA256SUMS"), "paths stay last"
    _pfm_checkpoint(tmp_path / "bad.ckpt", marker, poison_weights=True)
    with pytest.raises(ValueError, match=r"bad\.ckpt.*model\.encoder\.extra.*os\.system"):
        pfm_cli(["export", str(tmp_path / "bad.ckpt"), "--out", str(tmp_path / "out2")])
    assert not marker.exists()
    assert not (tmp_path / "out2" / "model.safetensors").exists()


def test_load_pretrained_runs_no_pickled_code(tmp_path, monkeypatch):
    from pfm.build import load_pretrained

    marker = tmp_path / "ran"
    source = _pfm_checkpoint(tmp_path / "good.ckpt", marker, poison_weights=False)
    model = load_pretrained(tmp_path / "good.ckpt")
    torch.testing.assert_close(model.state_dict(), source.state_dict())
    _pfm_checkpoint(tmp_path / "bad.ckpt", marker, poison_weights=True)
    with pytest.raises(ValueError, match=r"bad\.ckpt.*model\.encoder\.extra.*os\.system"):
        load_pretrained(tmp_path / "bad.ckpt")
    # by registry name: an official-style .pth whose state dict is a payload
    torch.save({"state_dict": RunsShell(marker)}, tmp_path / "official.pth")
    registry = tmp_path / "registry.yaml"
    url = (tmp_path / "official.pth").as_uri()
    registry.write_text(
        f"models:\n  evil: {{family: conv_vae, model: conv_vae, spec: {_SPEC}, files: [{{url: '{url}'}}]}}\n"
    )
    monkeypatch.setenv("PFM_REGISTRY", str(registry))
    monkeypatch.setenv("PFM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=r"official\.pth.*os\.system"):
        load_pretrained("evil")
    assert not marker.exists()


def test_deepspeed_folder_naming_foreign_code_is_refused_before_deepspeed_reads_it(tmp_path):
    from pfm.checkpoints.export import training_state_dict

    marker = tmp_path / "ran"
    folder = tmp_path / "step0000002.ckpt"
    (folder / "checkpoint").mkdir(parents=True)
    torch.save(
        {"module": {"w": torch.ones(2)}, "ds_config": {"hook": RunsShell(marker)}},
        folder / "checkpoint" / "mp_rank_00_model_states.pt",
    )
    with pytest.raises(ValueError, match=r"mp_rank_00_model_states\.pt names os\.system.*not unpickled"):
        training_state_dict(folder)
    assert not marker.exists()
