"""End-of-run pictures: input/reconstruction slices and the training loss curve, as PNGs in the run folder."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from pfm.io import atomic_path

__all__ = ["LossCurvePlot", "ReconstructionPlot"]


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


class LossCurvePlot(L.Callback):
    """Records the training loss every step and writes ``loss_curve.png`` when training ends."""

    def __init__(self, out_dir: str | Path, filename: str = "loss_curve.png") -> None:
        self.path = Path(out_dir) / filename
        self.steps: list[int] = []
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Keep the step's loss."""
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            self.steps.append(trainer.global_step)
            self.losses.append(float(loss.detach()))

    def on_train_end(self, trainer, pl_module) -> None:
        """Write the curve (rank 0 only)."""
        if not trainer.is_global_zero or not self.losses:
            return
        plt = _figure()
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(self.steps, self.losses, lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        with atomic_path(self.path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)

    def state_dict(self) -> dict[str, list]:
        """The recorded curve, so that a resumed run plots all of it."""
        return {"steps": self.steps, "losses": self.losses}

    def load_state_dict(self, state_dict: dict[str, list]) -> None:
        """Restore the recorded curve."""
        self.steps = list(state_dict["steps"])
        self.losses = list(state_dict["losses"])


class ReconstructionPlot(L.Callback):
    """Writes ``reconstruction.png``: central slices of validation inputs and the model's outputs."""

    def __init__(
        self, out_dir: str | Path, num_samples: int = 4, filename: str = "reconstruction.png"
    ) -> None:
        self.path = Path(out_dir) / filename
        self.num_samples = num_samples

    @torch.no_grad()
    def on_train_end(self, trainer, pl_module) -> None:
        """Run the model on the first validation batch and plot the mid-z slices."""
        if not trainer.is_global_zero or trainer.datamodule is None:
            return
        batch = next(iter(trainer.datamodule.val_dataloader()))
        x = batch["input"][: self.num_samples].to(pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        y = pl_module(x).float()
        pl_module.train(was_training)
        mid = x.shape[-1] // 2
        plt = _figure()
        fig, axes = plt.subplots(2, x.shape[0], figsize=(2.2 * x.shape[0], 4.6), squeeze=False)
        for i in range(x.shape[0]):
            a, b = x[i, 0, :, :, mid].cpu(), y[i, 0, :, :, mid].cpu()
            lo, hi = float(a.min()), float(a.max())
            axes[0, i].imshow(a, vmin=lo, vmax=hi, cmap="RdBu_r")
            axes[1, i].imshow(b, vmin=lo, vmax=hi, cmap="RdBu_r")
            for ax in axes[:, i]:
                ax.set_xticks([])
                ax.set_yticks([])
        axes[0, 0].set_ylabel("input")
        axes[1, 0].set_ylabel("reconstruction")
        fig.tight_layout()
        with atomic_path(self.path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
