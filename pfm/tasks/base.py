"""What every pfm task shares: a built model, an optimizer partial and an optional scheduler partial."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn

from pfm.tasks.finetune import group_parameters

__all__ = ["Task"]


class Task(L.LightningModule):
    """Base LightningModule: holds the model and builds the optimizer over its trainable parameters.

    ``optimizer`` is a partial taking the parameters (``_partial_: true`` in conf/task/); ``scheduler`` a
    partial taking the optimizer, stepped every training step. ``param_groups`` (set by
    :meth:`set_param_groups`, from ``finetune.param_groups``) gives optimizer options per parameter-name pattern.
    """

    param_groups: Sequence[Mapping[str, Any]] = ()
    #: the batches it reads, for DataModules that serve several kinds (``data=well data.sample=null``):
    #: fields (GPhyT windows), windows (Tadpole dynamics), crops (Tadpole autoencoder); None: no choice
    data_sample: str | None = None

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        pde_names: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.pde_names = list(pde_names)

    def check_finite(self, loss: torch.Tensor) -> None:
        """Stop with a clear error instead of training on a NaN or infinite loss."""
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"Non-finite training loss {loss.item()} at step {self.global_step}; lower the learning rate "
                "(task.optimizer.lr) or enable gradient clipping (trainer.gradient_clip_val)."
            )

    def log_per_pde(self, key: str, errors: torch.Tensor, batch: Mapping[str, Any], **options: Any) -> None:
        """Log ``<key>/<family>``: the mean of ``errors`` (one per sample) over each PDE family's samples."""
        if "pde" not in batch or not self.pde_names:
            return
        for index, name in enumerate(self.pde_names):
            mask = batch["pde"] == index
            if mask.any():
                self.log(f"{key}/{name}", errors[mask].mean(), batch_size=int(mask.sum()), **options)

    def set_param_groups(self, groups: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Use optimizer options per name pattern (:func:`pfm.tasks.finetune.group_parameters`); the groups.

        Checked at once: a pattern that matches no trainable parameter raises here, before training.
        """
        built = group_parameters(self.model, groups)
        self.param_groups = [dict(g) for g in groups]
        return built if groups else []

    def configure_optimizers(self):
        """The optimizer over trainable parameters (in ``param_groups``), and the per-step scheduler if any."""
        optimizer = self.optimizer_factory(group_parameters(self.model, self.param_groups))
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
