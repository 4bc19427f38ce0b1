"""``StepProgressBar``: a progress bar counting optimizer steps out of ``max_steps``.

pfm trains one endless epoch over an iterable stream, so Lightning's bars, which count epochs and batches per
epoch, show no total (batches) and a negative last epoch ("Epoch 0/-2", from ``max_epochs=-1``).
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

__all__ = ["StepProgressBar"]


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
