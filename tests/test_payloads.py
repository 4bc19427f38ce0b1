"""No file runs code, on any path: the same pickled payload planted on every path pfm reads a pickled file from.

The payload is an object whose ``__reduce__`` names ``os.system`` with ``touch <marker>``: unpickled by
``torch.load(weights_only=False)`` (or DeepSpeed's loader, or Lightning's full unpickler) it creates the marker.
Every path must refuse the file with an error naming the file and the refused global, and the marker must
never appear. The paths: pfm-train's resume (the run's own checkpoints are only paths too), init_from, pfm
export, pfm sample, load_pretrained, an embedding table, an mdCATH run's table, a DeepSpeed folder (given to
pfm export, and to resume, where DeepSpeed itself would unpickle it) and a distributed-checkpoint folder (resume,
where torch.distributed.checkpoint would unpickle it).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN, pfm_train
from test_mdcath import _trajectory, write_domain
from test_safe_loading import _pfm_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


class Payload:
    """Unpickling this with a full unpickler runs ``touch marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_the_payload_is_live(tmp_path: Path) -> None:
    # otherwise "no marker" below would prove nothing
    torch.save({"x": Payload(tmp_path / "ran")}, tmp_path / "evil.ckpt")
    torch.load(tmp_path / "evil.ckpt", weights_only=False)
    assert (tmp_path / "ran").exists()


def _ckpt(tmp: Path, marker: Path) -> Path:
    """A pfm-train-shaped checkpoint (ConvVAE weights, run description) with the payload among its weights."""
    path = tmp / "shared.ckpt"
    _pfm_checkpoint(path, marker, poison_weights=True)
    return path


def _resume(tmp: Path, marker: Path) -> object:
    bad = _ckpt(tmp, marker)
    result = pfm_train(
        ["experiment=demo", *TINY_RUN, "logger=csv", "plots=false", f"resume={bad}"], tmp / "run"
    )
    assert result.returncode != 0
    raise ValueError(result.stderr[-3000:])


def _deepspeed_folder(tmp: Path, marker: Path) -> Path:
    folder = tmp / "step0000002.ckpt"
    (folder / "checkpoint").mkdir(parents=True)
    # the run description and weights are clean; the payload hides in an optimizer shard, which only
    # DeepSpeed's own loader (torch.load weights_only=False) reads
    torch.save(
        {"module": {"w": torch.ones(2)}, "pfm": {"model": {"_target_": "pfm.models.ConvVAE"}}},
        folder / "checkpoint" / "mp_rank_00_model_states.pt",
    )
    torch.save(
        {"optimizer_state_dict": {"state": {0: Payload(marker)}}},
        folder / "checkpoint" / "zero_pp_rank_0_mp_rank_00_optim_states.pt",
    )
    (folder / "latest").write_text("checkpoint")
    return folder


def _resume_deepspeed(tmp: Path, marker: Path) -> object:
    folder = _deepspeed_folder(tmp, marker)
    result = pfm_train(
        [
            "experiment=demo",
            "strategy=deepspeed_zero1",
            *TINY_RUN,
            "logger=csv",
            "plots=false",
            f"resume={folder}",
        ],
        tmp / "run",
    )
    assert result.returncode != 0
    raise ValueError(result.stderr[-3000:])


def _resume_distributed(tmp: Path, marker: Path) -> object:
    """A distributed checkpoint (strategy=fsdp with save_distributed_checkpoint): torch.distributed.checkpoint
    unpickles its byte items with weights_only=False, so the payload hides in one of them."""
    import torch.distributed.checkpoint as dcp

    from pfm.checkpoints import resolve_resume

    folder = tmp / "step0000002.ckpt"
    dcp.save(
        {"state_dict": {"w": torch.ones(3)}, "optimizer_0": {"hook": Payload(marker)}}, checkpoint_id=folder
    )
    torch.save({"global_step": 2}, folder / "meta.pt")
    return resolve_resume(folder, tmp)


def _init_from(tmp: Path, marker: Path) -> object:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from pfm.build import CONF_DIR, build_task

    bad = _ckpt(tmp, marker)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=demo", "model=conv_vae", *TINY_RUN, f"init_from={bad}"])
    return build_task(cfg)


def _export(tmp: Path, marker: Path) -> object:
    from pfm.cli import main

    return main(["export", str(_ckpt(tmp, marker)), "--out", str(tmp / "out")])


def _export_deepspeed(tmp: Path, marker: Path) -> object:
    from pfm.cli import main

    return main(["export", str(_deepspeed_folder(tmp, marker)), "--out", str(tmp / "out")])


def _sample(tmp: Path, marker: Path) -> object:
    from pfm.cli import main
    from pfm.sample import write_ca_pdb

    pdb = tmp / "start.pdb"
    write_ca_pdb(pdb, (torch.arange(15.0).reshape(1, 5, 3) * 0.2), "MKTAH")
    bad = tmp / "platito.ckpt"
    torch.save({"state_dict": {"velocity_net.w": torch.ones(2), "velocity_net.hook": Payload(marker)}}, bad)
    return main(["sample", str(bad), "--pdb", str(pdb), "--steps", "1", "--out", str(tmp / "out")])


def _load_pretrained(tmp: Path, marker: Path) -> object:
    from pfm.build import load_pretrained

    return load_pretrained(_ckpt(tmp, marker))


def _table(tmp: Path, marker: Path) -> Path:
    bad = tmp / "embeddings.pt"
    torch.save({"1abcA00": torch.randn(5, 7), "2xyzB01": Payload(marker)}, bad)
    return bad


def _embedding_table(tmp: Path, marker: Path) -> object:
    from pfm.embeddings import EmbeddingTable

    return EmbeddingTable(_table(tmp, marker))


def _mdcath_table(tmp: Path, marker: Path) -> object:
    from pfm.data.mdcath import MdCathDataModule

    write_domain(tmp / "data", "1abcA00", "MKTAH", {320: [_trajectory("MKTAH", 8, 1)]})
    return MdCathDataModule(str(tmp), embeddings=str(_table(tmp, marker)), lag_range=[1, 2], batch_size=2)


PATHS: dict[str, tuple[Callable[[Path, Path], object], str]] = {
    "resume": (_resume, "shared.ckpt"),
    "resume a DeepSpeed folder": (_resume_deepspeed, "zero_pp_rank_0_mp_rank_00_optim_states.pt"),
    "resume a distributed-checkpoint folder": (_resume_distributed, "__0_0.distcp"),
    "init_from": (_init_from, "shared.ckpt"),
    "pfm export": (_export, "shared.ckpt"),
    "pfm export of a DeepSpeed folder": (_export_deepspeed, "zero_pp_rank_0_mp_rank_00_optim_states.pt"),
    "pfm sample": (_sample, "platito.ckpt"),
    "load_pretrained": (_load_pretrained, "shared.ckpt"),
    "embedding table": (_embedding_table, "embeddings.pt"),
    "mdCATH table": (_mdcath_table, "embeddings.pt"),
}


@pytest.mark.parametrize("path", list(PATHS))
def test_no_path_runs_the_payload(path: str, tmp_path: Path) -> None:
    run, file_name = PATHS[path]
    marker = tmp_path / "ran"
    with pytest.raises(ValueError) as info:
        run(tmp_path, marker)
    assert not marker.exists(), f"{path}: the payload ran"
    message = str(info.value)
    assert file_name in message and "os.system" in message, f"{path}: {message[-2000:]}"


def _torch_file_with_pickle(path: Path, pickled: bytes) -> None:
    """A torch.save zip archive whose data.pkl is ``pickled`` (opcodes a Python object could not produce
    without importing the module they name)."""
    import io
    import zipfile

    buffer = io.BytesIO()
    torch.save({}, buffer)
    source = zipfile.ZipFile(buffer)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            data = pickled if info.filename.endswith("/data.pkl") else source.read(info.filename)
            target.writestr(info.filename, data)


def test_a_module_named_by_a_file_is_never_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Judging a global must not import its module: importing runs the module's code (the old DeepSpeed check
    imported the longest importable prefix of every name, then looked at what it found)."""
    import sys

    from pfm.checkpoints.export import training_state_dict

    marker = tmp_path / "imported"
    (tmp_path / "pfm_planted_module.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nclass Thing: pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    folder = tmp_path / "step0000002.ckpt"
    (folder / "checkpoint").mkdir(parents=True)
    torch.save({"module": {"w": torch.ones(2)}}, folder / "checkpoint" / "mp_rank_00_model_states.pt")
    # protocol-2 GLOBAL opcodes: a class of the planted module, and os.system reached as torch.os.system
    planted = b"\x80\x02cpfm_planted_module\nThing\n)\x81."
    alias = b"\x80\x02ctorch.os\nsystem\nX\x04\x00\x00\x00truep\x00\x85R."
    for pickled, name in ((planted, r"pfm_planted_module\.Thing"), (alias, r"torch\.os\.system")):
        _torch_file_with_pickle(folder / "checkpoint" / "zero_pp_rank_0_mp_rank_00_optim_states.pt", pickled)
        with pytest.raises(ValueError, match=rf"optim_states\.pt names {name}"):
            training_state_dict(folder)
    assert not marker.exists() and "pfm_planted_module" not in sys.modules
