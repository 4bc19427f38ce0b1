"""pfm.checkpoints.safe: foreign checkpoints are unpickled without running their code."""

from __future__ import annotations

import builtins
import os
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from pfm.checkpoints.safe import Placeholder, load_state_dict, refused_globals, safe_load


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
        {"state_dict": weights, "hyper_parameters": hparams, "epoch": 3, "shape": torch.Size([2, 3])},
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
    torch.save({"storage": storage, "array": np.arange(3.0), "rng": np.random.get_state()}, tmp_path / "s.pt")
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
    torch.save({"state_dict": {"w": torch.ones(2), "payload": RunsExec(marker)}}, tmp_path / "evil.ckpt")
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
