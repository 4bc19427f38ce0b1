"""Logs samples/s, the fraction of step time spent waiting for data, and the data-generation cost."""

from __future__ import annotations

import time

import lightning as L

__all__ = ["ThroughputMonitor"]


class ThroughputMonitor(L.Callback):
    """Times each step: data wait (end of one step to start of the next) against the whole step."""

    def __init__(self) -> None:
        self._last_end: float | None = None
        self._start: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        """Mark the start of compute; the gap since the last step's end is data wait."""
        self._start = time.perf_counter()
        self._wait = 0.0 if self._last_end is None else self._start - self._last_end

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Log throughput for this step."""
        end = time.perf_counter()
        if self._last_end is not None and self._start is not None:
            total = end - self._last_end
            samples = batch["input"].shape[0] * trainer.world_size if isinstance(batch, dict) else 0
            metrics = {
                "perf/samples_per_s": samples / max(total, 1e-9),
                "perf/data_wait_fraction": self._wait / max(total, 1e-9),
            }
            generation = getattr(trainer.datamodule, "generation_seconds", None)
            if generation is not None:
                metrics["perf/generation_s_per_step"] = generation
            pool_rejected = sum(
                getattr(p, "num_rejected", 0) for p in getattr(trainer.datamodule, "pools", [])
            )
            metrics["data/num_rejected"] = float(pool_rejected)
            pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)
        self._last_end = end
