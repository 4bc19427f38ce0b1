"""Autoencoder pretraining: reconstruction MSE plus beta * KL of a diagonal Gaussian latent."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import lightning as L
import torch
from torch import nn

__all__ = ["AutoencoderTask", "nrmse"]


def nrmse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Normalised RMSE per sample, ``||p - t|| / ||t||`` over all but the batch axis, shape ``(batch,)``."""
    dims = tuple(range(1, target.ndim))
    err = (prediction - target).pow(2).sum(dims).sqrt()
    return err / target.pow(2).sum(dims).sqrt().clamp_min(1e-12)


class AutoencoderTask(L.LightningModule):
    """Trains a model with ``encode_distribution`` and ``decode`` as a VAE.

    The model, the optimizer (a partial taking parameters) and the scheduler (a partial taking the optimizer)
    are built outside and handed in. Batches are dicts with ``input`` ``(B, C, X, Y, Z)`` and optionally
    ``pde`` ``(B,)`` family indices, used for per-family validation metrics when ``pde_names`` is given.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        beta: float = 1e-6,
        sample_latent: bool = True,
        pde_names: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.beta = beta
        self.sample_latent = sample_latent
        self.pde_names = list(pde_names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction ``(B, C, X, Y, Z)``."""
        return self.model(x)

    def _losses(self, x: torch.Tensor, sample: bool) -> dict[str, torch.Tensor]:
        mean, logvar = self.model.encode_distribution(x)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean) if sample else mean
        recon = self.model.decode(z)
        mse = (recon.float() - x.float()).pow(2).mean()
        kl = 0.5 * (mean.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float()).mean()
        return {"loss": mse + self.beta * kl, "mse": mse, "kl": kl, "recon": recon}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One optimisation step; logs loss, MSE and KL."""
        out = self._losses(batch["input"], self.sample_latent)
        if not torch.isfinite(out["loss"]):
            raise FloatingPointError(
                f"Non-finite training loss {out['loss'].item()} at step {self.global_step}; lower the "
                "learning rate (task.optimizer.lr) or enable gradient clipping (trainer.gradient_clip_val)."
            )
        bs = batch["input"].shape[0]
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=bs)
        self.log_dict({"train/mse": out["mse"], "train/kl": out["kl"]}, batch_size=bs)
        return out["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Reconstruction nRMSE overall and per PDE family."""
        x = batch["input"]
        recon = self.model(x)
        err = nrmse(recon.float(), x.float())
        self.log("val/nrmse", err.mean(), prog_bar=True, batch_size=x.shape[0], sync_dist=True)
        if "pde" in batch and self.pde_names:
            for index, name in enumerate(self.pde_names):
                mask = batch["pde"] == index
                if mask.any():
                    self.log(
                        f"val/nrmse/{name}", err[mask].mean(), batch_size=int(mask.sum()), sync_dist=True
                    )

    def configure_optimizers(self):
        """The optimizer over trainable parameters, and the per-step scheduler if one is configured."""
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
