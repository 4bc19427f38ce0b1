"""``StepProgressBar``: a progress bar counting optimizer steps out of ``max_steps``; ``FitSummary``: one closing line.

pfm trains one endless epoch over an iterable stream, so Lightning's bars, which count epochs and batches per
epoch, show no total (batches) and a negative last epoch ("Epoch 0/-2", from ``max_epochs=-1``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

__all__ = ["FitSummary", "StepProgressBar"]

log = logging.getLogger(__name__)


class StepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, reading ``step k/max_steps`` (a resumed run starts at its step)."""

    def total_steps(self, trainer: L.Trainer) -> int | None:
        """``trainer.max_steps``, or None (no total) when the run is not bounded by steps."""
        return trainer.max_steps if trainer.max_steps > 0 else None

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        """Set the bar's total to ``max_steps`` and its position to the current step."""
        bar = self.train_progress_bar
        bar.reset(total=self.total_steps(trainer))
        bar.initial = 0
        bar.n = trainer.global_step
        bar.set_description("Step")
        bar.refresh()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Move the bar to the current optimizer step and show the logged metrics."""
        bar = self.train_progress_bar
        step = trainer.global_step
        if bar is not None and self._should_update(step, bar.total):
            if not bar.disable:
                bar.n = step
                bar.refresh()
            bar.set_postfix(self.get_metrics(trainer, pl_module))


class FitSummary(L.Callback):
    """Log one line when training ends: steps trained in this fit (a resumed run counts from its step), their
    wall time (validation included), and the last validation figures."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Note the step (restored by now on a resume) and the time training starts."""
        self.start_step, self.started = trainer.global_step, time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log the summary on rank 0."""
        if trainer.is_global_zero:
            log.info("%s", self.summary(trainer, time.perf_counter() - self.started))

    def summary(self, trainer: L.Trainer, seconds: float) -> str:
        """``Trained N steps in M min S s (R it/s; ...); last validation: val/...=...``."""
        minutes, secs = divmod(round(seconds), 60)
        steps = trainer.global_step - self.start_step
        line = f"Trained {steps} steps in {minutes} min {secs:02d} s"
        # the machine's speed on the day, the figure to quote beside a time (README, "What it reaches")
        line += f" ({steps / max(seconds, 1e-9):.2f} it/s; training wall time, validation included)"
        metrics = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith("val/") and v.numel() == 1
        }
        headline = {k: v for k, v in metrics.items() if k.count("/") == 1} or metrics
        if headline:
            line += "; last validation: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(headline.items()))
        return line
