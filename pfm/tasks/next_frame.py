"""Next-frame training of a field model (GPhyT) on field windows, evaluated by autoregressive rollouts.

Public names: ``NextFrameTask``, ``field_errors`` (from :mod:`pfm.evaluation.metrics`, the one definition of
VRMSE and nRMSE).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import torch

from pfm.evaluation.metrics import field_errors, sample_errors
from pfm.models.rollout import rollout
from pfm.tasks.base import Task

__all__ = ["NextFrameTask", "field_errors"]

log = logging.getLogger(__name__)

# Keeps a (nearly) constant field from blowing up normalised values and losses; The Well uses the same floor.
_MIN_STD = 1e-4


class NextFrameTask(Task):
    """Trains ``model(window, fields)`` (a window of context frames -> the next frame) on field windows.

    Batches (see :mod:`pfm.data.fields`): ``input`` ``(B, T + K, *spatial, F)`` channels last, ``field_mask``
    ``(B, F)``, ``source`` ``(B,)``. ``fields`` names the F channels and ``num_frames`` is T (both default
    to the DataModule's ``spec``).
    Samples with different sets of present fields are run as separate groups, each naming only its own
    fields, so that the model masks the absent ones instead of seeing zeros.

    Args:
        normalize: ``sample`` standardises every window per sample and field with the mean and std of its
            context frames before the model sees it (predictions are mapped back), as the official GPhyT does;
            ``none`` feeds the values as they come (e.g. already normalised by ``stats.yaml``).
        integrator, dt: override the model's integrator (``euler`` | ``heun`` | ``rk4``) and step; None keeps
            the model's.
        num_train_steps: predict this many frames autoregressively while training (the window slides over
            the predictions; gradients flow through every step); the batches need as many future frames.
        num_rollout_steps: validation rollout length (default: every future frame of the batch).
        error_curve: write ``rollout_error.png`` (nRMSE and VRMSE per rollout step, per source) into the run
            folder after each validation (drawn from :attr:`rollout_curve` by
            :class:`pfm.callbacks.RolloutErrorPlot`, which ``pfm-train`` adds).

    The loss is the MSE per sample and field divided by that field's context variance, averaged over present
    fields and predicted steps: every field counts the same whatever its scale. Validation logs VRMSE and
    nRMSE of the first step overall (``val/vrmse``, ``val/nrmse``), per field (``val/nrmse/<field>``) and per
    source (``val/nrmse/<source>``); per rollout step (``val/nrmse_step<k>``, beside
    ``val/persistence_nrmse_step<k>`` of holding the last context frame); and how far rollouts got
    before the first non-finite value (``val/rollout_steps``; a rollout stops there, cleanly).
    """

    data_sample = "fields"  # what a file-based DataModule serves it (data.sample=null: this)

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: Any,
        scheduler: Any = None,
        pde_names: Sequence[str] = (),
        fields: Sequence[str] = (),
        num_frames: int | None = None,
        *,
        normalize: Literal["sample", "none"] = "sample",
        integrator: str | None = None,
        dt: float | None = None,
        num_train_steps: int = 1,
        num_rollout_steps: int | None = None,
        error_curve: bool = True,
    ) -> None:
        super().__init__(model, optimizer, scheduler, pde_names)
        if normalize not in ("sample", "none"):
            raise ValueError(f"task.normalize={normalize!r}; expected 'sample' or 'none'.")
        if num_train_steps < 1:
            raise ValueError(f"task.num_train_steps={num_train_steps}; expected >= 1.")
        self.fields = tuple(fields)
        self.num_frames = num_frames
        self.normalize = normalize
        self.integrator = integrator
        self.dt = dt
        self.num_train_steps = num_train_steps
        self.num_rollout_steps = num_rollout_steps
        self.error_curve = error_curve
        # per source, per rollout step: sums [nRMSE, VRMSE, count, persistence nRMSE] of the last validation
        # (pfm.callbacks.RolloutErrorPlot draws them as rollout_error.png)
        self.rollout_curve: dict[str, list[list[float]]] = {}

    # ----------------------------------------------------------------------------------------------- helpers
    def _field_names(self, num_fields: int) -> tuple[str, ...]:
        if not self.fields and self._trainer is not None and self.trainer.datamodule is not None:
            self.fields = tuple(self.trainer.datamodule.spec["fields"])
        if len(self.fields) != num_fields:
            raise ValueError(
                f"The batch has {num_fields} field channels but the task knows fields {list(self.fields)}; "
                "use a field-window DataModule (data=online_fields, well or mixed)."
            )
        return self.fields

    def _context(self, batch: dict[str, torch.Tensor]) -> int:
        frames = batch["input"]
        if self.num_frames is None and self._trainer is not None and self.trainer.datamodule is not None:
            self.num_frames = int(self.trainer.datamodule.spec["num_frames"])
        num_frames = self.num_frames or getattr(self.model, "num_frames", None) or frames.shape[1] - 1
        if frames.ndim < 4 or frames.shape[1] <= num_frames:
            raise ValueError(
                f"NextFrameTask expects field windows (B, T + K, *spatial, F) with T = {num_frames} context "
                f"frames and K >= 1 future ones; got shape {tuple(frames.shape)}. Raise data.num_future."
            )
        return num_frames

    def _statistics(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std ``(B, 1, ..., 1, F)`` over the context frames and space, per sample and field."""
        dims = tuple(range(1, context.ndim - 1))
        mean = context.float().mean(dims, keepdim=True)
        std = context.float().std(dims, keepdim=True, unbiased=False).clamp_min(_MIN_STD)
        return mean, std

    def _step(self, window: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        """One model step: ``(B, T, *spatial, C)`` -> ``(B, 1, *spatial, C)``."""
        if self.integrator is None and self.dt is None:
            return self.model(window, fields=list(names))
        return self.model.step(window, fields=list(names), integrator=self.integrator, dt=self.dt)

    def rollout(
        self, window: torch.Tensor, mask: torch.Tensor, num_steps: int, *, stop_non_finite: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Autoregressive prediction of ``num_steps`` frames from ``window`` ``(B, T, *spatial, F)``.

        Returns predictions ``(B, num_steps, *spatial, F)`` in the window's units (absent fields zero) and
        the number of finite steps per sample ``(B,)``. The window of T frames slides over the predictions and,
        with ``stop_non_finite``, a sample stops at its first non-finite prediction (later steps NaN, not
        counted): pfm's one rollout rule, :mod:`pfm.models.rollout`. Samples with the same present fields
        roll out together, normalised by their context's statistics (``normalize=sample``).
        """
        names_all = self._field_names(window.shape[-1])
        out = window.new_full((window.shape[0], num_steps, *window.shape[2:]), float("nan"))
        finite = torch.zeros(window.shape[0], dtype=torch.long, device=window.device)
        patterns, group = torch.unique(mask, dim=0, return_inverse=True)
        for g, pattern in enumerate(patterns):
            rows = torch.nonzero(group == g).flatten()
            cols = torch.nonzero(pattern).flatten()
            names = [names_all[i] for i in cols.tolist()]
            x = window[rows][..., cols]
            if self.normalize == "sample":
                mean, std = self._statistics(x)
            else:
                mean, std = x.new_zeros(()), x.new_ones(())
            x = ((x - mean) / std).to(window.dtype)
            predicted, steps = rollout(
                lambda w, names=names: self._step(w, names),
                x,
                num_steps,
                num_frames=x.shape[1],
                stop_non_finite=stop_non_finite,
            )
            physical = (predicted.float() * std + mean).to(out.dtype)  # (rows, num_steps, *spatial, cols)
            full = out.new_zeros((rows.numel(), *out.shape[1:]))
            full[..., cols] = physical
            # steps after a sample stopped stay NaN in every field, absent ones included
            stopped = torch.arange(num_steps, device=out.device)[None, :] >= steps[:, None]
            full[stopped] = float("nan")
            out[rows] = full
            finite[rows] = steps
        return out, finite

    # ------------------------------------------------------------------------------------------- training
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Field-normalised MSE of ``num_train_steps`` autoregressive predictions."""
        frames, mask = batch["input"], batch["field_mask"]
        t = self._context(batch)
        k = self.num_train_steps
        if frames.shape[1] < t + k:
            raise ValueError(
                f"task.num_train_steps={k} needs {k} future frames; the batch has {frames.shape[1] - t}. "
                f"Set data.num_future >= {k}."
            )
        predicted, _ = self.rollout(frames[:, :t], mask, k)
        _, std = self._statistics(frames[:, :t])
        err = (predicted.float() - frames[:, t : t + k].float()) / std  # (B, K, *spatial, F)
        per_field = err.pow(2).mean(dim=tuple(range(1, err.ndim - 1)))  # (B, F)
        weight = mask.float()
        loss = (per_field * weight).sum() / weight.sum().clamp_min(1)
        self.check_finite(loss)
        self.log("train/loss", loss, prog_bar=True, batch_size=frames.shape[0])
        return loss

    # ----------------------------------------------------------------------------------------- evaluation
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Rollout metrics: VRMSE and nRMSE per step, field and source; finite steps reached."""
        frames, mask = batch["input"], batch["field_mask"]
        t = self._context(batch)
        num_steps = min(self.num_rollout_steps or frames.shape[1] - t, frames.shape[1] - t)
        predicted, finite = self.rollout(frames[:, :t], mask, num_steps, stop_non_finite=True)
        b = frames.shape[0]
        names = self._field_names(frames.shape[-1])
        source = batch.get("source", torch.zeros(b, dtype=torch.long, device=frames.device))
        self.log("val/rollout_steps", finite.float().mean(), batch_size=b, sync_dist=True)
        for step in range(num_steps):
            alive = finite > step
            if not bool(alive.any()):
                break
            vrmse, nrmse = field_errors(predicted[alive, step], frames[alive, t + step])
            m = mask[alive].float()
            # each sample's mean over its present fields; val/* are their means (pfm.evaluation.metrics)
            per_sample, per_sample_v = sample_errors(nrmse, m), sample_errors(vrmse, m)
            self.log(f"val/nrmse_step{step + 1}", per_sample.mean(), batch_size=int(alive.sum()))
            self.log(f"val/vrmse_step{step + 1}", per_sample_v.mean(), batch_size=int(alive.sum()))
            # the baseline a model must beat: the last context frame held fixed
            _, still = field_errors(frames[alive, t - 1], frames[alive, t + step])
            still_sample = sample_errors(still, m)
            self.log(
                f"val/persistence_nrmse_step{step + 1}", still_sample.mean(), batch_size=int(alive.sum())
            )
            if step == 0:
                self.log("val/nrmse", per_sample.mean(), prog_bar=True, batch_size=b, sync_dist=True)
                self.log("val/vrmse", per_sample_v.mean(), batch_size=b, sync_dist=True)
                for c, name in enumerate(names):
                    n = int(m[:, c].sum())
                    if n:
                        self.log(f"val/nrmse/{name}", (nrmse[:, c] * m[:, c]).sum() / n, batch_size=n)
                        self.log(f"val/vrmse/{name}", (vrmse[:, c] * m[:, c]).sum() / n, batch_size=n)
            src = source[alive]
            for index, name in enumerate(self.pde_names or ["all"]):
                sel = src == index if self.pde_names else torch.ones_like(src, dtype=torch.bool)
                if not bool(sel.any()):
                    continue
                n = int(sel.sum())
                if step == 0:
                    self.log(f"val/nrmse/{name}", per_sample[sel].mean(), batch_size=n)
                    self.log(f"val/vrmse/{name}", per_sample_v[sel].mean(), batch_size=n)
                if step == num_steps - 1:
                    self.log(f"val/rollout_nrmse/{name}", per_sample[sel].mean(), batch_size=n)
                curve = self.rollout_curve.setdefault(name, [])
                while len(curve) <= step:
                    curve.append([0.0, 0.0, 0.0, 0.0])
                curve[step][0] += float(per_sample[sel].sum())
                curve[step][1] += float(per_sample_v[sel].sum())
                curve[step][2] += n
                curve[step][3] += float(still_sample[sel].sum())

    def on_validation_epoch_start(self) -> None:
        """Start a new per-step error curve."""
        self.rollout_curve = {}

    @torch.no_grad()
    def example_panels(self, batch: dict[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
        """Rollout frames of the first sample's first present field beside the truth (mid-plane in 3D)."""
        frames, mask = batch["input"][:1], batch["field_mask"][:1]
        t = self._context(batch)
        predicted, finite = self.rollout(frames[:, :t], mask, frames.shape[1] - t, stop_non_finite=True)
        c = int(torch.nonzero(mask[0]).flatten()[0])
        truth, rollout = frames[0, t:, ..., c], predicted[0, :, ..., c]
        while truth.ndim > 3:  # 3D: the mid-plane of the last axis
            truth, rollout = (
                truth.select(-1, truth.shape[-1] // 2),
                rollout.select(-1, rollout.shape[-1] // 2),
            )
        name = self._field_names(frames.shape[-1])[c]
        return "rollout.png", {f"truth {name}": truth, f"rollout ({int(finite[0])} finite)": rollout}
