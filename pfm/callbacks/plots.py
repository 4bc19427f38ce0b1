"""The run's pictures, all drawn here: tasks hand over data, these callbacks draw and write the files.

- :class:`LossCurvePlot`: ``loss_curve.png`` at the end (the training loss of every step);
- :class:`ExamplePlot`: the task's ``example_panels`` at the end (``reconstruction.png``, ``rollout.png``);
- :class:`RolloutErrorPlot`: ``rollout_error.png`` after each validation, from a task's ``rollout_curve``
  (``NextFrameTask`` with ``error_curve``);
- :class:`ChainEvaluation`: at the end, a chain task's ``evaluation`` (``FlowMatchingTask``): model rollouts
  against a long simulation, ``fes.png`` and ``evaluation.json`` (:func:`pfm.evaluation.evaluate_chains`).

``pfm-train`` adds the first two when ``plots`` is set, the last two always (the task's own settings decide).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch

from pfm.evaluation import evaluate_chains
from pfm.figures import pyplot, save_png

__all__ = [
    "ChainEvaluation",
    "ExamplePlot",
    "LossCurvePlot",
    "RolloutErrorPlot",
    "write_error_curve",
    "write_panels",
]

log = logging.getLogger("pfm.callbacks")


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
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(self.steps, self.losses, lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        save_png(fig, self.path)

    def state_dict(self) -> dict[str, list]:
        """The recorded curve, so that a resumed run plots all of it."""
        return {"steps": self.steps, "losses": self.losses}

    def load_state_dict(self, state_dict: dict[str, list]) -> None:
        """Restore the recorded curve."""
        self.steps = list(state_dict["steps"])
        self.losses = list(state_dict["losses"])


class ExamplePlot(L.Callback):
    """Writes the task's example picture at the end of training (e.g. ``reconstruction.png``, ``rollout.png``).

    The task's ``example_panels(batch)`` returns a file name and rows of 2D slices ``{label: (N, H, W)}``;
    each row is drawn with the colour range of the first row's matching column, so truth and prediction
    are comparable.
    """

    def __init__(self, out_dir: str | Path, num_samples: int = 4) -> None:
        self.out_dir = Path(out_dir)
        self.num_samples = num_samples  # from as many validation batches as it takes (the demo's hold 2)
        self.written: Path | None = None

    @torch.no_grad()
    def on_train_end(self, trainer, pl_module) -> None:
        """Run the task on the first ``num_samples`` validation samples and save its panels (rank 0 only)."""
        if (
            not trainer.is_global_zero
            or trainer.datamodule is None
            or not hasattr(pl_module, "example_panels")
        ):
            return
        batch = _first_samples(_validation_loader(trainer), self.num_samples)
        batch = {k: v.to(pl_module.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        was_training = pl_module.training
        pl_module.eval()
        filename, rows = pl_module.example_panels(batch)
        pl_module.train(was_training)
        self.written = self.out_dir / filename
        write_panels(rows, self.written)


class RolloutErrorPlot(L.Callback):
    """Writes ``rollout_error.png`` after each validation (rank 0, not during the sanity check).

    From the task's ``rollout_curve`` (``{source: [[nRMSE, VRMSE, count, persistence nRMSE] sums per step]}``,
    collected by ``NextFrameTask`` during validation) when the task's ``error_curve`` is set.
    """

    def __init__(self, out_dir: str | Path, filename: str = "rollout_error.png") -> None:
        self.path = Path(out_dir) / filename

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Draw the curve of the validation that just ended."""
        curve = getattr(pl_module, "rollout_curve", None)
        if (
            not getattr(pl_module, "error_curve", False)
            or trainer.sanity_checking
            or not trainer.is_global_zero
            or not curve
        ):
            return
        write_error_curve(curve, self.path)


class ChainEvaluation(L.Callback):
    """At the end of training, the task's ``evaluation`` of chains: fes.png and evaluation.json in ``out_dir``.

    Runs :func:`pfm.evaluation.evaluate_chains` (the task's ``evaluation`` as keyword arguments) on rank 0 when
    the task has one and the data are online chains (a ``simulation``), logs ``eval/*`` to every logger and
    keeps the results in :attr:`results`. Add it after every other callback: it runs after their end of training.
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.results: dict[str, float] | None = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Compare model rollouts with a long simulation; write fes.png + evaluation.json."""
        evaluation = getattr(pl_module, "evaluation", None)
        datamodule = getattr(trainer, "datamodule", None)
        if not evaluation or not trainer.is_global_zero or not hasattr(datamodule, "simulation"):
            return
        was_training = pl_module.training
        pl_module.eval()
        results = evaluate_chains(pl_module.model, datamodule, out_dir=self.out_dir, **evaluation)
        pl_module.train(was_training)
        self.results = results
        for logger in trainer.loggers:
            logger.log_metrics({f"eval/{k}": v for k, v in results.items()}, step=trainer.global_step)
            logger.save()
        log.info("Evaluation: %s", json.dumps(results))


def _first_samples(loader: Any, count: int) -> dict[str, Any]:
    """The first ``count`` samples of ``loader`` as one batch: tensors joined along dim 0, other values the first's.

    Batches whose tensors differ beyond dim 0 (chains padded to each batch's longest) are not joined: the first
    batch is used alone.
    """
    batches: list[dict[str, Any]] = []
    seen = 0
    for batch in loader:
        batches.append(batch)
        seen += len(next(v for v in batch.values() if torch.is_tensor(v) and v.dim() > 0))
        if seen >= count:
            break
    first = batches[0]
    joinable = {k for k, v in first.items() if torch.is_tensor(v) and v.dim() > 0}
    if any(b[k].shape[1:] != first[k].shape[1:] for b in batches[1:] for k in joinable):
        return first
    return {k: torch.cat([b[k] for b in batches])[:count] if k in joinable else v for k, v in first.items()}


def _validation_loader(trainer: L.Trainer):
    """The loader validation used in this fit, else a new one from the datamodule.

    Online datamodules generate their validation set on each ``val_dataloader()`` call (the demo's takes as
    long as ten training steps), so the picture reuses the one already made; its first batch is the same.
    """
    loaders = trainer.val_dataloaders
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    elif isinstance(loaders, dict):
        loaders = next(iter(loaders.values()), None)
    return loaders if loaders is not None else trainer.datamodule.val_dataloader()


def write_panels(rows: dict[str, torch.Tensor], path: Path) -> None:
    """Draw ``{label: (N, H, W)}`` as a grid of images, one row per label, and save it atomically as PNG."""
    plt = pyplot()
    labels = list(rows)
    num_cols = rows[labels[0]].shape[0]
    fig, axes = plt.subplots(
        len(labels), num_cols, figsize=(2.2 * num_cols, 2.3 * len(labels)), squeeze=False
    )
    for col in range(num_cols):
        reference = rows[labels[0]][col].float().cpu()
        lo, hi = float(reference.min()), float(reference.max())
        for row, label in enumerate(labels):
            ax = axes[row, col]
            ax.imshow(rows[label][col].float().cpu(), vmin=lo, vmax=hi, cmap="RdBu_r")
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(label)
    fig.tight_layout()
    save_png(fig, path)


def write_error_curve(curve: dict[str, list[list[float]]], path: Path) -> None:
    """Plot mean nRMSE and VRMSE per rollout step for each source and save it atomically as PNG.

    ``curve[source][step]`` holds sums ``[nRMSE, VRMSE, count, persistence nRMSE]`` over samples.
    """
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for name, rows in curve.items():
        steps = [k + 1 for k, r in enumerate(rows) if r[2] > 0]
        line = axes[0].plot(steps, [r[0] / r[2] for r in rows if r[2] > 0], marker="o", label=name)[0]
        axes[0].plot(steps, [r[3] / r[2] for r in rows if r[2] > 0], ls="--", color=line.get_color(), lw=1)
        axes[1].plot(steps, [r[1] / r[2] for r in rows if r[2] > 0], marker="o", label=name)
    axes[0].set_title("nRMSE (dashed: last frame held)", fontsize=9)
    for ax, what in zip(axes, ("nRMSE", "VRMSE"), strict=True):
        ax.set_xlabel("rollout step")
        ax.set_ylabel(what)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)
