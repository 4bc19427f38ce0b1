"""``GlobalLoss``: logs the training loss averaged over every process, the number that must not depend on
the strategy or the process count (each rank's own ``train/loss`` covers only its slice of the batch)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

__all__ = ["GlobalLoss"]


class GlobalLoss(L.Callback):
    """Logs ``train/loss_global``: the mean over ranks of each step's loss (ranks hold equal slices)."""

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """All-reduce this step's loss and log it."""
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        value = trainer.strategy.reduce(loss.detach().float(), reduce_op="mean")
        pl_module.log("train/loss_global", value, on_step=True, on_epoch=False, batch_size=1)
