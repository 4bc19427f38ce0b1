"""Autoencoder pretraining: reconstruction MSE plus beta * KL of a diagonal Gaussian latent, with an
optional adversarial term from a patch discriminator (off by default)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pfm.evaluation.metrics import nrmse, sample_errors
from pfm.tasks.base import Task

__all__ = ["AutoencoderTask"]


class AutoencoderTask(Task):
    """Trains a model with ``encode_distribution`` and ``decode`` as a VAE.

    Batches are dicts with ``input`` ``(B, C, X, Y, Z)`` and optionally ``pde`` ``(B,)`` family indices, used
    for per-family validation nRMSE when ``pde_names`` is given. With a ``discriminator``, the generator also
    minimises ``adversarial_weight`` times a hinge GAN loss from ``discriminator_start_step`` on, and the
    discriminator gets its own optimizer (same partial); Lightning's automatic gradient clipping is then
    unavailable, so set ``trainer.gradient_clip_val=null`` and use ``gradient_clip_val`` here.
    """

    data_sample = "crops"  # what a file-based DataModule serves it (data.sample=null: this)

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        beta: float = 1e-6,
        sample_latent: bool = True,
        pde_names: Sequence[str] = (),
        discriminator: nn.Module | None = None,
        adversarial_weight: float = 0.1,
        discriminator_start_step: int = 0,
        gradient_clip_val: float | None = 1.0,
    ) -> None:
        super().__init__(model, optimizer, scheduler, pde_names)
        self.beta = beta
        self.sample_latent = sample_latent
        self.discriminator = discriminator
        self.adversarial_weight = adversarial_weight
        self.discriminator_start_step = discriminator_start_step
        self.gradient_clip_val = gradient_clip_val
        self.automatic_optimization = discriminator is None

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
        """One optimisation step; logs loss, MSE and KL (and the GAN losses when adversarial)."""
        x = batch["input"]
        out = self._losses(x, self.sample_latent)
        bs = x.shape[0]
        if self.discriminator is not None:
            out["loss"] = self._adversarial_step(x, out)
        self.check_finite(out["loss"])
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=bs)
        self.log_dict({"train/mse": out["mse"], "train/kl": out["kl"]}, batch_size=bs)
        return out["loss"]

    def _adversarial_step(self, x: torch.Tensor, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """Manual generator and discriminator updates with hinge losses; returns the generator loss."""
        opt_g, opt_d = self.optimizers()
        active = self.global_step >= self.discriminator_start_step
        loss = out["loss"]
        if active:
            self.discriminator.requires_grad_(False)
            g_adv = -self.discriminator(out["recon"]).mean()
            self.discriminator.requires_grad_(True)
            loss = loss + self.adversarial_weight * g_adv
            self.log("train/g_adv", g_adv, batch_size=x.shape[0])
        opt_g.zero_grad()
        self.manual_backward(loss)
        if self.gradient_clip_val:
            self.clip_gradients(
                opt_g, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm"
            )
        opt_g.step()
        if active:
            real = self.discriminator(x)
            fake = self.discriminator(out["recon"].detach())
            d_loss = F.relu(1 - real).mean() + F.relu(1 + fake).mean()
            opt_d.zero_grad()
            self.manual_backward(d_loss)
            opt_d.step()
            self.log("train/d_loss", d_loss, batch_size=x.shape[0])
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            (scheduler[0] if isinstance(scheduler, list) else scheduler).step()
        return loss.detach()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Reconstruction nRMSE (:mod:`pfm.evaluation.metrics`: mean over samples of the mean over present channels)
        overall and per family."""
        x = batch["input"]
        err = sample_errors(nrmse(self.model(x), x, channel_dim=1), batch.get("channel_mask"))
        self.log("val/nrmse", err.mean(), prog_bar=True, batch_size=x.shape[0], sync_dist=True)
        self.log_per_pde("val/nrmse", err, batch, sync_dist=True)

    @torch.no_grad()
    def example_panels(self, batch: dict[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
        """Mid-z slices of up to four validation inputs and their reconstructions."""
        x = batch["input"][:4]
        mid = x.shape[-1] // 2
        return "reconstruction.png", {"input": x[:, 0, :, :, mid], "reconstruction": self(x)[:, 0, :, :, mid]}

    def configure_optimizers(self):
        """The model's optimizer (and scheduler); with a discriminator, a second optimizer for it."""
        config = super().configure_optimizers()
        if self.discriminator is None:
            return config
        opt_g = config["optimizer"] if isinstance(config, dict) else config
        opt_d = self.optimizer_factory(list(self.discriminator.parameters()))
        if isinstance(config, dict):
            return [opt_g, opt_d], [config["lr_scheduler"]]
        return [opt_g, opt_d]
