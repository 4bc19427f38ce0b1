"""Test helper: fit a DataModule for a few steps with a one-parameter model that records every trained batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch


class BatchRecorder(L.LightningModule):
    """A one-parameter model that keeps a copy of every batch ``input`` it trains on."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.trained: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        self.trained.append(batch["input"].clone())
        return (self.weight - batch["input"].mean()) ** 2

    def validation_step(self, batch, batch_idx):
        self.log("val/x", batch["input"].mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit_recording(
    datamodule: L.LightningDataModule, steps: int, tmp_path: Path, **trainer_kwargs: Any
) -> BatchRecorder:
    """Train :class:`BatchRecorder` on ``datamodule`` for ``steps`` steps (one CPU, no validation unless asked)."""
    model = BatchRecorder()
    defaults = {"accelerator": "cpu", "devices": 1, "limit_val_batches": 0}
    trainer = L.Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        **(defaults | trainer_kwargs),
    )
    trainer.fit(model, datamodule=datamodule)
    return model
