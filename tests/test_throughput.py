"""ThroughputMonitor: FLOP counts match hand counts; throughput, memory and MFU metrics are logged and finite."""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from pfm.callbacks.throughput import ThroughputMonitor, count_step_flops, peak_memory_mib


def _train_step(model: nn.Module, x: torch.Tensor) -> None:
    model(x).sum().backward()


def test_linear_flops_match_hand_count() -> None:
    batch, sizes = 4, [32, 64, 8]
    model = nn.Sequential(nn.Linear(sizes[0], sizes[1]), nn.GELU(), nn.Linear(sizes[1], sizes[2]))
    _, flops = count_step_flops(_train_step, model, torch.randn(batch, sizes[0]))
    matmuls = [2 * batch * a * b for a, b in itertools.pairwise(sizes)]
    # forward: each matmul once; backward: weight gradient for each layer, input gradient for all but the
    # first (the input does not require grad, so autograd skips it)
    assert flops == 2 * sum(matmuls) + sum(matmuls[1:])


def test_conv_flops_match_hand_count() -> None:
    batch, cin, cout, k, size = 2, 3, 5, 3, 10
    model = nn.Conv2d(cin, cout, k, padding=1)
    _, flops = count_step_flops(_train_step, model, torch.randn(batch, cin, size, size))
    forward = 2 * batch * cout * size * size * cin * k * k
    assert flops == 2 * forward  # forward + weight gradient (no input gradient needed)


def test_peak_memory_is_labelled_rss_on_cpu() -> None:
    label, value = peak_memory_mib(torch.device("cpu"))
    assert label == "peak_rss_mib" and math.isfinite(value) and value > 0


class _Tiny(L.LightningModule):
    def __init__(self, per_sample: float | None = None) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
        if per_sample is not None:
            self.model.flops_per_sample = lambda: per_sample

    def training_step(self, batch, batch_idx):
        return self.model(batch["input"]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        data = [{"input": torch.randn(4, 16)} for _ in range(6)]
        return torch.utils.data.DataLoader(data, batch_size=None)


def _fit(tmp_path: Path, module: L.LightningModule, monitor: ThroughputMonitor) -> list[dict[str, str]]:
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=6,
        log_every_n_steps=1,
        logger=CSVLogger(tmp_path, name="csv", version=""),
        callbacks=[monitor],
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(module)
    with open(tmp_path / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_metrics_are_logged_and_finite(tmp_path: Path) -> None:
    monitor = ThroughputMonitor(peak_flops=1e12)  # a made-up peak, so MFU is also computed on CPU
    rows = _fit(tmp_path, _Tiny(), monitor)
    # per-rank count of the first step: forward + backward of both layers (no input gradient)
    forward = 2 * 4 * (16 * 32 + 32 * 1)
    assert monitor.flops_per_step == forward + forward + 2 * 4 * 32 * 1
    keys = [
        "perf/samples_per_s",
        "perf/data_wait_fraction",
        "perf/model_tflops_per_s",
        "perf/mfu",
        "perf/peak_rss_mib/rank0",
        "perf/peak_rss_mib/max",
    ]
    logged = [r for r in rows if r.get("perf/samples_per_s")]
    assert len(logged) >= 4  # every step but the first, which has no previous step end to time from
    for row in logged:
        for key in keys:
            value = float(row[key])
            assert math.isfinite(value) and value >= 0, (key, row[key])
        samples, wait = float(row["perf/samples_per_s"]), float(row["perf/data_wait_fraction"])
        # a real, timed step: more than 0 samples/s, and a step of a 600-parameter MLP on 4 samples takes
        # more than a microsecond (not the 1e-9 s floor that guards the division)
        assert 0 < samples < 4 / 1e-6, row
        assert wait <= 1, row  # a fraction of the step
        tflops, mfu = float(row["perf/model_tflops_per_s"]), float(row["perf/mfu"])
        assert tflops > 0, row
        # both are one count over the same step time: FLOP/s = samples/s / batch * FLOPs per step
        assert tflops * 1e12 == pytest.approx(samples / 4 * monitor.flops_per_step, rel=1e-6)
        assert mfu == pytest.approx(tflops, rel=1e-6)  # peak is 1 TFLOP/s, so MFU equals achieved TFLOP/s
        assert float(row["perf/peak_rss_mib/rank0"]) > 10


def test_model_provided_flops_take_precedence(tmp_path: Path) -> None:
    monitor = ThroughputMonitor()
    _fit(tmp_path, _Tiny(per_sample=1000.0), monitor)
    assert monitor.flops_per_step == 4 * 1000.0


def test_a_resumed_run_takes_the_count_from_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a fresh run's step 0 is counted: FlopCounterMode runs some ops through other kernels
    (it decomposes silu_backward, ...), so counting a resumed run's first step would change its gradients in
    the last bits and break bitwise exact resume (tests/test_tito_train.py::test_platito_demo_resumes_exactly)."""
    first = ThroughputMonitor()
    trainer = L.Trainer(accelerator="cpu", max_steps=3, logger=False, callbacks=[first],
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(_Tiny())
    assert first.flops_per_step and first.flops_per_step > 0
    trainer.save_checkpoint(tmp_path / "step3.ckpt")

    def _no_counting(*args, **kwargs):
        raise AssertionError("a resumed run counted FLOPs again")

    monkeypatch.setattr("pfm.callbacks.throughput.FlopCounterMode", _no_counting)
    resumed = ThroughputMonitor()
    trainer = L.Trainer(accelerator="cpu", max_steps=6, logger=False, callbacks=[resumed],
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(_Tiny(), ckpt_path=tmp_path / "step3.ckpt")
    assert trainer.global_step == 6 and resumed.flops_per_step == first.flops_per_step
