"""Dynamics fine-tuning: predict the state at t + dt from the state at t, evaluated by rollouts."""

from __future__ import annotations

import torch

from pfm.evaluation.metrics import nrmse, sample_errors
from pfm.models.rollout import rollout
from pfm.tasks.base import Task

__all__ = ["DynamicsTask"]


class DynamicsTask(Task):
    """Trains a one-step predictor on windows of consecutive frames; validates with autoregressive rollouts.

    Batches are window dicts: ``input`` ``(B, T, C, X, Y, Z)`` (T >= 2), optional ``channel_mask``
    ``(B, C)`` and ``pde`` ``(B,)``. Training uses every transition ``t -> t + 1`` in the window; validation
    starts from frame 0 and feeds predictions back for ``T - 1`` steps, logging nRMSE per rollout step.
    Each state is standardized per sample and channel with its own statistics before the model sees it, and
    the prediction is mapped back with the same statistics, so the model works at the scale it was
    pretrained at while the loss keeps the physical scale.
    """

    data_sample = "windows"  # what a file-based DataModule serves it (data.sample=null: this)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One step: state ``(B, C, X, Y, Z)`` at t to the predicted state at t + dt."""
        dims = tuple(range(2, x.ndim))
        mean = x.mean(dim=dims, keepdim=True)
        std = x.std(dim=dims, keepdim=True).clamp_min(1e-6)
        return self.model((x - mean) / std) * std + mean

    def rollout(self, x0: torch.Tensor, num_steps: int, *, stop_non_finite: bool = False) -> torch.Tensor:
        """Autoregressive rollout from ``(B, C, X, Y, Z)``; returns ``(B, num_steps, C, X, Y, Z)``.

        pfm's rollout rule (:mod:`pfm.models.rollout`) with a one-frame window; with ``stop_non_finite`` a
        sample stops at its first non-finite prediction (NaN from then on).
        """
        states, _ = rollout(
            lambda window: self(window[:, -1])[:, None],
            x0[:, None],
            num_steps,
            stop_non_finite=stop_non_finite,
        )
        return states

    @staticmethod
    def _frames(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        frames = batch["input"]
        if frames.ndim != 6 or frames.shape[1] < 2:
            raise ValueError(
                f"DynamicsTask expects windows (batch, time >= 2, channels, x, y, z); got {tuple(frames.shape)}. "
                "Use a window DataModule (data=online_windows) with data.window >= 2."
            )
        return frames

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """MSE of one-step predictions over all transitions of the window."""
        frames = self._frames(batch)
        b, t = frames.shape[:2]
        inputs = frames[:, :-1].reshape(b * (t - 1), *frames.shape[2:])
        targets = frames[:, 1:].reshape(b * (t - 1), *frames.shape[2:])
        loss = (self(inputs).float() - targets.float()).pow(2).mean()
        self.check_finite(loss)
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """nRMSE (:mod:`pfm.evaluation.metrics`: mean over samples of the mean over present channels) at every
        rollout step, overall and per PDE family; ``val/nrmse`` is the first step's."""
        frames = self._frames(batch)
        predicted = self.rollout(frames[:, 0], frames.shape[1] - 1)
        b = frames.shape[0]
        mask = batch.get("channel_mask")

        def err_at(step: int) -> torch.Tensor:
            return sample_errors(nrmse(predicted[:, step], frames[:, step + 1], channel_dim=1), mask)

        for step in range(predicted.shape[1]):
            err = err_at(step)
            self.log(f"val/nrmse_step{step + 1}", err.mean(), batch_size=b, sync_dist=True)
            if step == 0:
                self.log("val/nrmse", err.mean(), prog_bar=True, batch_size=b, sync_dist=True)
        final = err_at(predicted.shape[1] - 1)
        self.log_per_pde("val/rollout_nrmse", final, batch)

    @torch.no_grad()
    def example_panels(self, batch: dict[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
        """Mid-plane slices of channel 0 of the first sample: true frames and rollout, one column per step."""
        frames = self._frames(batch)[:1]
        predicted = self.rollout(frames[:, 0], frames.shape[1] - 1)
        mid = frames.shape[-1] // 2
        return "rollout.png", {
            "truth": frames[0, 1:, 0, :, :, mid],
            "rollout": predicted[0, :, 0, :, :, mid],
        }
