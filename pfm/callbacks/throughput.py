"""Logs samples/s, data-wait fraction, data-generation cost, peak memory per rank, model FLOPs and MFU.

FLOPs per step come from one of two places, in this order:

1. the model's (or task's) own ``flops_per_sample() -> float``: training FLOPs (forward + backward) for one
   sample, times the per-rank batch size;
2. otherwise a generic count: the first training step runs under :class:`torch.utils.flop_counter.FlopCounterMode`,
   which counts the matmuls, convolutions and attention of forward *and* backward as they execute, once.

The generic count needs nothing from the models, so every model family gets a figure without code. It counts
what runs: with activation checkpointing the recomputed forward is included (hardware FLOPs, slightly above
the usual "model FLOPs"), and elementwise ops (norms, activations, the optimizer) are not counted, as in the
usual MFU convention. Model FLOPs utilisation is logged only on GPU, against Lightning's table of the chip's
peak FLOPs for the run's precision; on CPU the achieved TFLOP/s is logged, with no peak to divide by.

Peak memory is per rank: on GPU ``torch.cuda.max_memory_allocated`` (tensors held by the caching allocator,
``perf/peak_cuda_alloc_mib/rank<i>``); on CPU the process's resident-set high-water mark from
``resource.getrusage`` (``perf/peak_rss_mib/rank<i>``), which includes the Python interpreter, libraries
and allocator slack, so it is an upper bound on what the tensors need.
"""

from __future__ import annotations

import logging
import math
import resource
import sys
import time
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import get_available_flops
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["ThroughputMonitor", "count_step_flops", "peak_memory_mib"]

log = logging.getLogger(__name__)


def peak_memory_mib(device: torch.device) -> tuple[str, float]:
    """(label, MiB) of this process's peak memory: CUDA allocator high-water on GPU, RSS high-water on CPU."""
    if device.type == "cuda":
        return "peak_cuda_alloc_mib", torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is KiB on Linux and bytes on macOS
    scale = 2**20 if sys.platform == "darwin" else 2**10
    return "peak_rss_mib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def count_step_flops(step: Any, *args: Any, **kwargs: Any) -> tuple[Any, int]:
    """Run ``step(*args, **kwargs)`` (forward and backward) under FlopCounterMode; returns (result, FLOPs)."""
    with FlopCounterMode(display=False) as counter:
        result = step(*args, **kwargs)
    return result, counter.get_total_flops()


def _batch_size(batch: Any) -> int:
    """Samples in this rank's batch: the leading dimension of the first tensor found."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.ndim else 1
    if isinstance(batch, dict):
        batch = batch.get("input", next(iter(batch.values()), None)) if batch else None
        return _batch_size(batch) if batch is not None else 0
    if isinstance(batch, (list, tuple)) and batch:
        return _batch_size(batch[0])
    return 0


def _precision_dtype(precision: str) -> torch.dtype:
    if "bf16" in precision:
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return torch.float32


class ThroughputMonitor(L.Callback):
    """Times each step: data wait (end of one step to start of the next) against the whole step.

    ``count_flops=False`` skips the one-off FLOP count; ``peak_flops`` (per device) overrides the chip table
    for MFU, e.g. for a GPU that Lightning does not know.
    """

    def __init__(self, count_flops: bool = True, peak_flops: float | None = None) -> None:
        self._last_end: float | None = None
        self._start: float | None = None
        self._wait = 0.0
        self.count_flops = count_flops
        self.peak_flops = peak_flops
        self.flops_per_step: float | None = None  # this rank's training FLOPs for one batch
        self._counter: FlopCounterMode | None = None
        self._available_flops: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Look up the device's peak FLOPs once (GPU only; CPUs have no table)."""
        device = pl_module.device
        if self.peak_flops is not None:
            self._available_flops = float(self.peak_flops)
        elif device.type == "cuda":
            flops = get_available_flops(device, _precision_dtype(str(trainer.precision)))
            self._available_flops = float(flops) if flops else None

    def _model_flops(self, pl_module: L.LightningModule, batch: Any) -> float | None:
        for owner in (getattr(pl_module, "model", None), pl_module):
            per_sample = getattr(owner, "flops_per_sample", None)
            if callable(per_sample):
                return float(per_sample()) * _batch_size(batch)
        return None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx
    ) -> None:
        """Mark the start of compute; the gap since the last step's end is data wait."""
        if self.count_flops and self.flops_per_step is None and self._counter is None:
            self.flops_per_step = self._model_flops(pl_module, batch)
            # FlopCounterMode runs only on a fresh run's step 0; a resumed run takes its count from the
            # checkpoint. The mode decomposes ops it has no formula for (aten.silu_backward, ...) into other
            # kernels, so the counted step's gradients differ in the last bits: counting a resumed run's first
            # step would break bitwise exact resume
            if self.flops_per_step is None and trainer.global_step == 0:
                # counts this whole step (forward, backward); entered here, left in on_train_batch_end
                self._counter = FlopCounterMode(display=False)
                self._counter.__enter__()
        self._start = time.perf_counter()
        self._wait = 0.0 if self._last_end is None else self._start - self._last_end

    def _stop_counter(self) -> None:
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.flops_per_step = float(self._counter.get_total_flops())
            self._counter = None

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """Leave the FLOP-counting mode if the first step failed, so it does not outlive the run."""
        self._stop_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx
    ) -> None:
        """Log throughput for this step."""
        end = time.perf_counter()
        self._stop_counter()
        if self._last_end is not None and self._start is not None:
            total = max(end - self._last_end, 1e-9)
            local = _batch_size(batch)
            metrics = {
                "perf/samples_per_s": local * trainer.world_size / total,
                "perf/data_wait_fraction": self._wait / total,
            }
            if self.flops_per_step:
                achieved = self.flops_per_step / total  # this rank's FLOP/s
                metrics["perf/model_tflops_per_s"] = achieved / 1e12
                if self._available_flops:
                    metrics["perf/mfu"] = achieved / self._available_flops
            generation = getattr(trainer.datamodule, "generation_seconds", None)
            if generation is not None:
                metrics["perf/generation_s_per_step"] = generation
            pool_rejected = sum(
                getattr(p, "num_rejected", 0) for p in getattr(trainer.datamodule, "pools", [])
            )
            metrics["data/num_rejected"] = float(pool_rejected)
            # gathering memory is a collective: every rank takes the same branch (Lightning's own log cadence)
            if getattr(trainer._logger_connector, "should_update_logs", True):
                metrics.update(self._memory_metrics(trainer, pl_module))
            pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)
        self._last_end = end

    def state_dict(self) -> dict[str, Any]:
        """The FLOP count of one step, so that a resumed run reports it without counting again."""
        return {"flops_per_step": self.flops_per_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the FLOP count of one step."""
        value = state_dict.get("flops_per_step")
        self.flops_per_step = None if value is None else float(value)

    def _memory_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        label, mine = peak_memory_mib(pl_module.device)
        values = [mine]
        if trainer.world_size > 1:
            gathered = trainer.strategy.all_gather(torch.tensor([mine], device=pl_module.device))
            values = [float(v) for v in gathered.reshape(-1).tolist()]
        metrics = {f"perf/{label}/rank{rank}": value for rank, value in enumerate(values)}
        metrics[f"perf/{label}/max"] = max(values)
        return {k: v for k, v in metrics.items() if math.isfinite(v)}
