"""Rollout scores of ``pfm evaluate``: per-step errors of a forecaster and two baselines, summaries and outputs.

Trajectories are channels-last ``(N, T, *spatial, F)`` in physical units; the first ``context`` frames are the
model's input and the next ``S`` frames the truth its rollout is scored against. :class:`RolloutScores`
collects, batch after batch, VRMSE and nRMSE per trajectory, step and field (:mod:`pfm.evaluation.metrics`);
:func:`summarise` turns them into the rows of ``metrics.json`` (``docs/evaluate.md`` documents the keys).

Baselines from the data:

- ``persistence``: every predicted frame is the last context frame;
- ``mean``: every predicted frame is the trajectory's mean over its scored frames and space, per field (a
  constant field; its VRMSE is about 1, exactly 1 where the frame's own mean equals it).

Public names: ``RolloutScores``, ``persistence``, ``trajectory_mean``, ``summarise``, ``markdown_table``,
``plot_error_vs_step``, ``plot_rollout``, ``write_json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from pfm.evaluation.metrics import clip_windows, field_errors, window_scores
from pfm.figures import pyplot, save_png
from pfm.io import atomic_path

__all__ = [
    "METRICS",
    "RolloutScores",
    "markdown_table",
    "persistence",
    "plot_error_vs_step",
    "plot_rollout",
    "summarise",
    "trajectory_mean",
    "write_json",
]

METRICS = ("vrmse", "nrmse")


def persistence(context: torch.Tensor, num_steps: int) -> torch.Tensor:
    """The last context frame held for ``num_steps`` steps: ``(B, T, ...)`` -> ``(B, num_steps, ...)``."""
    return context[:, -1:].expand(-1, num_steps, *context.shape[2:])


def trajectory_mean(truth: torch.Tensor) -> torch.Tensor:
    """Each trajectory's mean over its frames and space per field, as frames: ``(B, S, *spatial, F)``."""
    dims = tuple(range(1, truth.ndim - 1))
    return truth.double().mean(dims, keepdim=True).expand(truth.shape).to(truth.dtype)


class RolloutScores:
    """Per-step errors ``(N, S, F)`` of one forecaster, gathered batch by batch (float64, CPU).

    :meth:`add` takes predictions and truth ``(B, S, *spatial, F)``, the field mask ``(B, F)``, the source index
    ``(B,)`` and the finite steps ``(B,)`` (steps at or after a sample's count are failures, NaN here).
    """

    def __init__(self) -> None:
        self._errors: dict[str, list[torch.Tensor]] = {m: [] for m in METRICS}
        self._finite: list[torch.Tensor] = []
        self._sources: list[torch.Tensor] = []

    def add(
        self,
        prediction: torch.Tensor,
        truth: torch.Tensor,
        mask: torch.Tensor,
        source: torch.Tensor,
        finite: torch.Tensor | None = None,
    ) -> None:
        """Score one batch of rollouts."""
        b, s = truth.shape[:2]
        finite = torch.full((b,), s, dtype=torch.long) if finite is None else finite.cpu().long()
        v, n = field_errors(
            prediction.reshape(b * s, *prediction.shape[2:]), truth.reshape(b * s, *truth.shape[2:])
        )
        alive = torch.arange(s)[None, :] < finite[:, None]  # (B, S)
        keep = alive[..., None] & mask.cpu().bool()[:, None, :]  # (B, S, F)
        for name, err in (("vrmse", v), ("nrmse", n)):
            err = err.double().cpu().reshape(b, s, -1)
            self._errors[name].append(torch.where(keep, err, torch.full_like(err, float("nan"))))
        self._finite.append(finite)
        self._sources.append(source.cpu().long())

    def errors(self, metric: str) -> torch.Tensor:
        """``(N, S, F)`` errors of ``metric`` (NaN: absent field or failed step)."""
        return torch.cat(self._errors[metric])

    @property
    def finite(self) -> torch.Tensor:
        """Finite steps per trajectory ``(N,)``."""
        return torch.cat(self._finite)

    @property
    def sources(self) -> torch.Tensor:
        """Source index per trajectory ``(N,)``."""
        return torch.cat(self._sources)


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _field_mean(errors: torch.Tensor) -> torch.Tensor:
    """Mean over present fields ``(N, S, F) -> (N, S)``; NaN where no field is present or the step failed."""
    present = torch.isfinite(errors)
    total = torch.where(present, errors, torch.zeros_like(errors)).sum(-1)
    count = present.sum(-1)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


def summarise(
    scores: Mapping[str, RolloutScores],
    fields: Sequence[str],
    source_names: Sequence[str],
    windows: Sequence[tuple[int, int]],
) -> dict[str, Any]:
    """The ``results`` part of metrics.json: score rows, per-step curves and finite steps per forecaster."""
    out: dict[str, Any] = {"rows": [], "per_step": {}, "finite_steps": {}}
    for name, rs in scores.items():
        finite = rs.finite
        src = rs.sources
        num_steps = rs.errors(METRICS[0]).shape[1]
        cut = clip_windows(windows, num_steps)
        out["finite_steps"][name] = {
            "mean": float(finite.double().mean()),
            "median": float(finite.double().median()),
            "min": int(finite.min()),
            "num_failed": int((finite < num_steps).sum()),
        }
        curves: dict[str, dict[str, list[float | None]]] = {}
        for metric in METRICS:
            errors = rs.errors(metric)
            per_field = {"all": _field_mean(errors), **{f: errors[..., i] for i, f in enumerate(fields)}}
            groups = {"all": torch.ones_like(src, dtype=torch.bool)}
            if len(source_names) > 1:
                groups |= {s: src == i for i, s in enumerate(source_names)}
            for source, sel in groups.items():
                if not bool(sel.any()):
                    continue
                for field, e in per_field.items():
                    for lo, hi in cut:
                        row = window_scores(e[sel], finite[sel], lo, hi)
                        if row["num_trajectories"] == 0:
                            continue  # a field this source does not have
                        out["rows"].append(
                            {
                                "model": name,
                                "metric": metric,
                                "source": source,
                                "field": field,
                                "window": f"{lo}" if lo == hi else f"{lo}-{hi}",
                                "mean": _finite_or_none(row["mean"]),
                                "median": _finite_or_none(row["median"]),
                                "num_trajectories": row["num_trajectories"],
                                "num_failed": row["num_failed"],
                            }
                        )
            steps = [window_scores(per_field["all"], finite, k, k) for k in range(1, num_steps + 1)]
            curves[metric] = {
                "mean": [_finite_or_none(r["mean"]) for r in steps],
                "median": [_finite_or_none(r["median"]) for r in steps],
            }
        out["per_step"][name] = curves
    return out


def _cell(row: Mapping[str, Any] | None) -> str:
    if row is None:
        return "-"

    def fmt(v: float | None) -> str:
        return "inf" if v is None else f"{v:.3g}"

    return f"{fmt(row['mean'])} / {fmt(row['median'])}"


def markdown_table(results: Mapping[str, Any], models: Sequence[str], fields: Sequence[str]) -> str:
    """Markdown tables: every metric and window (all fields, all sources), then VRMSE per field.

    Cells are ``mean / median`` over trajectories; ``inf`` where failed rollouts make the median infinite.
    """
    index = {(r["model"], r["metric"], r["source"], r["field"], r["window"]): r for r in results["rows"]}
    windows = list(dict.fromkeys(r["window"] for r in results["rows"]))
    head = "| metric | steps | " + " | ".join(models) + " |"
    lines = [head, "|" + "---|" * (len(models) + 2)]
    for metric in METRICS:
        for w in windows:
            cells = [_cell(index.get((m, metric, "all", "all", w))) for m in models]
            lines.append(
                f"| {metric.upper() if metric == 'vrmse' else 'nRMSE'} | {w} | " + " | ".join(cells) + " |"
            )
    lines += [
        "",
        "| VRMSE per field | steps | " + " | ".join(models) + " |",
        "|" + "---|" * (len(models) + 2),
    ]
    for field in fields:
        for w in windows:
            cells = [_cell(index.get((m, "vrmse", "all", field, w))) for m in models]
            if any(c != "-" for c in cells):
                lines.append(f"| {field} | {w} | " + " | ".join(cells) + " |")
    finite = results["finite_steps"].get(models[0])
    if finite is not None:
        lines += [
            "",
            f"{models[0]}: finite rollout steps mean {finite['mean']:.3g}, median {finite['median']:.3g}, "
            f"min {finite['min']}; {finite['num_failed']} rollout(s) became non-finite.",
        ]
    return "\n".join(lines) + "\n"


def plot_error_vs_step(results: Mapping[str, Any], path: Path) -> None:
    """VRMSE and nRMSE (mean over trajectories, all fields) against rollout step, one line per forecaster."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, metric in zip(axes, METRICS, strict=True):
        for name, curves in results["per_step"].items():
            ys = curves[metric]["mean"]
            steps = [k + 1 for k, y in enumerate(ys) if y is not None]
            ax.plot(steps, [y for y in ys if y is not None], marker="o", ms=3, label=name)
        ax.set_xlabel("rollout step")
        ax.set_ylabel(f"{'VRMSE' if metric == 'vrmse' else 'nRMSE'} (mean over trajectories)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def _plane(x: torch.Tensor) -> torch.Tensor:
    while x.ndim > 3:  # (steps, *spatial): 3D fields show the mid-plane of the last axis
        x = x.select(-1, x.shape[-1] // 2)
    return x


def plot_rollout(
    truth: torch.Tensor, prediction: torch.Tensor, field: str, path: Path, max_columns: int = 6
) -> None:
    """One field of one rollout beside the truth: ``(S, *spatial)`` each, up to ``max_columns`` steps."""
    plt = pyplot()
    truth, prediction = _plane(truth.double().cpu()), _plane(prediction.double().cpu())
    s = truth.shape[0]
    steps = sorted({round(i * (s - 1) / max(min(max_columns, s) - 1, 1)) for i in range(min(max_columns, s))})
    lo, hi = float(truth.min()), float(truth.max())
    fig, axes = plt.subplots(2, len(steps), figsize=(2.2 * len(steps), 4.6), squeeze=False)
    for j, k in enumerate(steps):
        for i, (frames, label) in enumerate(((truth, "truth"), (prediction, "model"))):
            ax = axes[i, j]
            ax.imshow(frames[k].T, origin="lower", vmin=lo, vmax=hi, cmap="RdBu_r")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"step {k + 1}", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{label} {field}", fontsize=9)
    fig.tight_layout()
    save_png(fig, path)


def write_json(path: Path, record: Mapping[str, Any]) -> None:
    """``record`` as indented JSON, written atomically (non-finite numbers are refused, not written)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
