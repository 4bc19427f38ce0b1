"""Rectified flow matching of transition densities p(x_{t+lag} | x_t, sequence, temperature, lag) (TITO).

With flow time s ~ U(0, 1) (s = 0 noise, s = 1 data), noise z0 ~ N(0, I) centred over valid residues and
data x1 = x_{t+lag}: z_s = (1 - s) z0 + s x1 + sigma eps, target velocity x1 - z0, loss = MSE over valid
residues and the 3 coordinates. The model's conditioning network sees x_t, lag (ns) and temperature (K) once;
its velocity network sees (z_s, s, condition). At the end of training, ``evaluation`` (if set and the data
are online chains) compares rollouts of the model against a long simulation (:mod:`pfm.evaluation`), run by
:class:`pfm.callbacks.ChainEvaluation`, which ``pfm-train`` adds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from pfm.tasks.base import Task

__all__ = ["FlowMatchingTask", "centred_noise", "masked_mse"]


def centred_noise(mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal ``(B, L, 3)`` with zero centre of mass over valid residues, zero where padded."""
    z = torch.randn(*mask.shape, 3, generator=generator, device=mask.device)
    m = mask[..., None].float()
    z = z - (z * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1)
    return z * m


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over valid residues ``mask`` ``(B, L)`` and the 3 coordinates of ``(B, L, 3)``."""
    m = mask[..., None].to(pred.dtype)
    return ((pred.float() - target.float()).square() * m).sum() / (3.0 * m.sum()).clamp_min(1)


class FlowMatchingTask(Task):
    """Flow matching of lagged pairs from chain DataModules (``x_t``, ``x_next``, ``mask``, ``lag``, ...).

    ``sigma`` is the interpolant noise (0.01 as in TITO). ``evaluation`` holds keyword arguments of
    :func:`pfm.evaluation.evaluate_chains` (null: no evaluation at the end; run by
    :class:`pfm.callbacks.ChainEvaluation`).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        sigma: float = 0.01,
        evaluation: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(model, optimizer, scheduler)
        if sigma < 0:
            raise ValueError(f"task.sigma={sigma}; expected the interpolant noise level >= 0 (TITO: 0.01).")
        self.sigma = sigma
        self.evaluation = dict(evaluation) if evaluation else None

    @staticmethod
    def conditioning(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The sequence input the model takes: ``sequence_emb`` (PLaTITO) or else ``residue_ids`` (TITO)."""
        if "sequence_emb" in batch:
            return {"sequence_emb": batch["sequence_emb"]}
        return {"residue_ids": batch["residue_ids"]}

    def _check(self, batch: Mapping[str, torch.Tensor]) -> None:
        missing = sorted({"x_t", "x_next", "mask", "lag", "temperature"} - set(batch))
        if missing:
            raise ValueError(
                f"FlowMatchingTask needs pair batches; missing {missing} (got {sorted(batch)}). Use a chain "
                "DataModule: data=online_chains or data=mdcath."
            )

    def loss(
        self, batch: Mapping[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Flow-matching loss of one batch (``generator`` fixes noise and flow times, e.g. for validation)."""
        self._check(batch)
        x1, mask = batch["x_next"], batch["mask"]
        cond = self.model.condition(
            batch["x_t"], mask, batch["lag"], batch["temperature"], **self.conditioning(batch)
        )
        z0 = centred_noise(mask, generator)
        s = torch.rand(x1.shape[0], generator=generator, device=x1.device)
        eps = centred_noise(mask, generator)
        sb = s[:, None, None]
        z_s = (1 - sb) * z0 + sb * x1 + self.sigma * eps
        pred = self.model.velocity(z_s, s, cond, mask)
        return masked_mse(pred, x1 - z0, mask)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One flow-matching step; logs ``train/loss``."""
        loss = self.loss(batch)
        self.check_finite(loss)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["x_t"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Flow-matching loss with noise fixed per batch, so that validation curves are comparable."""
        g = torch.Generator(device=batch["x_t"].device)
        g.manual_seed(1_000 + batch_idx)
        loss = self.loss(batch, g)
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["x_t"].shape[0], sync_dist=True)
