"""Output files: permissions follow the umask on every atomic-write path; the progress bar counts steps."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import TINY_RUN, pfm_train
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from datagen.shards import _atomic_write as shard_write
from pfm.callbacks import LossCurvePlot, StepProgressBar
from pfm.callbacks.plots import _first_samples, write_panels
from pfm.io import atomic_path, current_umask
from pfm.io import write_atomic as export_write


@pytest.fixture
def umask() -> Iterator[callable]:
    """Set the process umask for one test and restore it afterwards."""
    before = os.umask(0o022)
    os.umask(before)
    yield os.umask
    os.umask(before)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class _Trainer:
    """What LossCurvePlot.on_train_end reads of a trainer."""

    is_global_zero = True


def _write_every_kind(out: Path) -> list[Path]:
    """One file through each atomic writer of pfm and datagen; returns their paths."""
    with atomic_path(out / "plain.txt") as tmp:
        tmp.write_text("x")
    write_panels({"input": torch.rand(2, 8, 8), "output": torch.rand(2, 8, 8)}, out / "reconstruction.png")
    curve = LossCurvePlot(out)
    curve.steps, curve.losses = [1, 2, 3], [1.0, 0.5, 0.25]
    curve.on_train_end(_Trainer(), None)
    export_write(out / "model.safetensors", b"weights")
    shard_write(out / "format.json", b"{}")
    return [out / n for n in ("plain.txt", "reconstruction.png", "loss_curve.png", "model.safetensors")] + [
        out / "format.json"
    ]


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o027, 0o640)])
def test_atomic_writes_follow_the_umask(tmp_path: Path, umask, mask: int, expected: int) -> None:
    umask(mask)
    assert current_umask() == mask
    for path in _write_every_kind(tmp_path):
        assert path.exists(), path
        assert _mode(path) == expected, f"{path.name}: {oct(_mode(path))}, expected {oct(expected)}"
    assert not list(tmp_path.glob(".*tmp*")), "a temporary file was left behind"


def test_failed_atomic_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), atomic_path(tmp_path / "out.png") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_run_outputs_follow_the_umask_and_the_bar_counts_steps(tmp_path: Path, umask) -> None:
    """A real pfm-train run under umask 027: every file is 0640 and the bar ends at 'Step ... 3/3'."""
    umask(0o027)  # the child process inherits it
    args = ["model=conv_vae", "logger=csv", *TINY_RUN, "trainer.enable_progress_bar=true"]
    result = pfm_train(args, tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file() and not p.is_symlink()]
    names = {p.name for p in files}
    assert {"reconstruction.png", "loss_curve.png", "metrics.csv"} <= names, names
    wrong = {str(p.relative_to(tmp_path)): oct(_mode(p)) for p in files if _mode(p) != 0o640}
    assert not wrong, f"files not 0640 under umask 027: {wrong}"
    printed = result.stdout + result.stderr  # Lightning's tqdm bar writes to stdout
    assert "Step" in printed and "3/3" in printed, printed[-2000:]
    assert "Epoch 0/" not in printed
    # the closing summary: steps of this fit, its wall time and the last validation figures, from the run's log
    summary = [ln for ln in (tmp_path / "run" / "train.log").read_text().splitlines() if "Trained " in ln]
    assert len(summary) == 1 and "Trained 3 steps in 0 min" in summary[0], summary
    rate = re.search(r"\((\d+\.\d\d) it/s;", summary[0])
    assert rate and float(rate.group(1)) > 0, summary  # the machine's speed, quoted beside a time
    metrics = (tmp_path / "run" / "csv" / "metrics.csv").read_text().splitlines()
    column = metrics[0].split(",").index("val/nrmse")
    last = [row.split(",")[column] for row in metrics[1:] if row.split(",")[column]][-1]
    assert f"val/nrmse={float(last):.4g}" in summary[0], (summary, last)


class _Stream(IterableDataset):
    """An endless stream, like pfm's online data."""

    def __iter__(self):
        g = torch.Generator().manual_seed(0)
        while True:
            yield torch.randn(4, generator=g)


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 1)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.net(batch).square().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_progress_bar_total_is_max_steps(tmp_path: Path, accumulate: int) -> None:
    bar = StepProgressBar()
    trainer = L.Trainer(
        max_steps=5,
        accumulate_grad_batches=accumulate,
        callbacks=[bar],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        accelerator="cpu",
    )
    trainer.fit(_Tiny(), DataLoader(_Stream(), batch_size=2))
    assert trainer.global_step == 5
    assert bar.train_progress_bar.total == 5
    assert bar.train_progress_bar.n == 5  # optimizer steps, not batches (10 with accumulation 2)
    assert bar.train_progress_bar.desc.startswith("Step")


class _RecordingBar(StepProgressBar):
    """Remembers where the bar stood when training (re)started."""

    start: int | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.start = self.train_progress_bar.n


def test_progress_bar_of_a_resumed_run_starts_at_its_step(tmp_path: Path) -> None:
    def trainer(max_steps: int, bar: StepProgressBar) -> L.Trainer:
        return L.Trainer(
            max_steps=max_steps,
            callbacks=[bar],
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            default_root_dir=str(tmp_path),
            accelerator="cpu",
        )

    first = trainer(3, StepProgressBar())
    first.fit(_Tiny(), DataLoader(_Stream(), batch_size=2))
    first.save_checkpoint(tmp_path / "step3.ckpt")
    bar = _RecordingBar()
    second = trainer(5, bar)
    second.fit(_Tiny(), DataLoader(_Stream(), batch_size=2), ckpt_path=str(tmp_path / "step3.ckpt"))
    assert bar.start == 3
    assert second.global_step == 5
    assert bar.train_progress_bar.total == 5 and bar.train_progress_bar.n == 5


def test_the_example_picture_takes_its_samples_from_as_many_batches_as_it_needs() -> None:
    """The demo's validation batches hold 2 crops; its picture shows 4, from the first two batches in order."""
    batches = [
        {"input": torch.full((2, 1, 4), float(i)), "pde": torch.tensor([i, i]), "name": i} for i in range(3)
    ]
    joined = _first_samples(batches, 4)
    assert joined["input"][:, 0, 0].tolist() == [0.0, 0.0, 1.0, 1.0] and joined["name"] == 0
    assert joined["pde"].tolist() == [0, 0, 1, 1]
    assert _first_samples(batches, 1)["input"].shape[0] == 1
    # chains padded to each batch's longest cannot be joined: the first batch alone
    ragged = [{"input": torch.zeros(2, 5)}, {"input": torch.ones(2, 7)}]
    assert _first_samples(ragged, 4)["input"].shape == (2, 5)
