"""Field metrics: one definition each, used by training validation (``val/*``) and by ``pfm evaluate``.

For a predicted frame ``p`` and a true frame ``t`` of one field, over the spatial points (The Well's
``the_well/benchmark/metrics/spatial.py`` defines the same two):

- **VRMSE** ``sqrt(mean((p - t)^2) / (var(t) + eps))``: 1 for predicting the frame's spatial mean, 0 for a perfect
  prediction; unchanged when both frames are shifted and scaled alike (so it is the same in physical and in
  standardised units);
- **nRMSE** ``sqrt(mean((p - t)^2) / (mean(t^2) + eps))``: the error relative to the field's RMS; 1 for
  predicting zero. It changes with a shift of the data, so ``pfm evaluate`` scores physical units.

``eps`` is 1e-7 (The Well's). Sums are taken in float64; :func:`field_errors` returns the inputs' floating
dtype (at least float32), :func:`window_scores` float64.

Over a batch, ``val/nrmse`` (and every other ``val/*`` of a field metric) is, in every task, the mean over
samples of each sample's mean over its present fields (:func:`sample_errors`): each sample weighs the same
whatever its number of fields, as in ``pfm evaluate``'s ``all`` row.

Over a rollout, :func:`window_scores` averages a per-step metric over windows of steps and summarises the
trajectories with their mean and median. A trajectory whose rollout became non-finite before the end of a
window has *failed* that window: it is left out of the mean (which is over the trajectories that survived the
window) and counts as +inf in the median (so a median over mostly failed rollouts is inf); ``num_failed``
says how many failed.

Public names: ``EPS``, ``vrmse``, ``nrmse``, ``field_errors``, ``sample_errors``, ``parse_windows``,
``clip_windows``, ``window_scores``, ``DEFAULT_WINDOWS``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "DEFAULT_WINDOWS",
    "EPS",
    "clip_windows",
    "field_errors",
    "nrmse",
    "parse_windows",
    "sample_errors",
    "vrmse",
    "window_scores",
]

EPS = 1e-7
#: Rollout windows (first and last step, 1-based, inclusive) reported by default, cut where rollouts end.
DEFAULT_WINDOWS: tuple[tuple[int, int], ...] = ((1, 1), (2, 5), (6, 12), (13, 30))


def _spatial(target: torch.Tensor, channel_dim: int) -> tuple[int, ...]:
    channel_dim = channel_dim % target.ndim
    if target.ndim < 3 or channel_dim == 0:
        raise ValueError(
            f"field metrics take (batch, *spatial, channels) or (batch, channels, *spatial) frames with "
            f"channel_dim={channel_dim}; got shape {tuple(target.shape)}."
        )
    return tuple(d for d in range(1, target.ndim) if d != channel_dim)


def field_errors(
    prediction: torch.Tensor, target: torch.Tensor, *, channel_dim: int = -1
) -> tuple[torch.Tensor, torch.Tensor]:
    """VRMSE and nRMSE (module docstring) per sample and field, each ``(B, C)``, of frames ``(B, *spatial, C)``.

    ``channel_dim`` names the field axis (1 for Tadpole's ``(B, C, X, Y, Z)``). Accumulated in float64.
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ.")
    dims = _spatial(target, channel_dim)
    p, t = prediction.double(), target.double()
    mse = (p - t).pow(2).mean(dims)
    var = t.var(dims, unbiased=False)
    power = t.pow(2).mean(dims)
    dtype = torch.promote_types(target.dtype, torch.float32)
    return (mse / (var + EPS)).sqrt().to(dtype), (mse / (power + EPS)).sqrt().to(dtype)


def vrmse(prediction: torch.Tensor, target: torch.Tensor, *, channel_dim: int = -1) -> torch.Tensor:
    """VRMSE per sample and field ``(B, C)`` (see :func:`field_errors`)."""
    return field_errors(prediction, target, channel_dim=channel_dim)[0]


def nrmse(prediction: torch.Tensor, target: torch.Tensor, *, channel_dim: int = -1) -> torch.Tensor:
    """nRMSE per sample and field ``(B, C)`` (see :func:`field_errors`)."""
    return field_errors(prediction, target, channel_dim=channel_dim)[1]


def sample_errors(errors: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Each sample's mean ``(B,)`` of per-field errors ``(B, C)`` over the fields ``mask`` ``(B, C)`` marks present.

    ``mask`` None: every field. ``val/nrmse`` is the mean of these over samples (module docstring).
    """
    if mask is None:
        return errors.mean(1)
    m = mask.to(errors.dtype)
    return (errors * m).sum(1) / m.sum(1).clamp_min(1)


def parse_windows(text: str | Sequence[Sequence[int]] | None) -> tuple[tuple[int, int], ...]:
    """Windows from ``"1,2-5,6-12,13-30"`` (or pairs); None gives :data:`DEFAULT_WINDOWS`."""
    if text is None:
        return DEFAULT_WINDOWS
    if not isinstance(text, str):
        windows = tuple((int(a), int(b)) for a, b in text)
    else:
        windows = []
        for part in text.replace(" ", "").split(","):
            lo, _, hi = part.partition("-")
            try:
                windows.append((int(lo), int(hi or lo)))
            except ValueError:
                raise ValueError(
                    f"rollout window {part!r} in {text!r} is not 'K' or 'A-B'; write e.g. --windows 1,2-5,6-12."
                ) from None
        windows = tuple(windows)
    for lo, hi in windows:
        if not 1 <= lo <= hi:
            raise ValueError(f"rollout window {lo}-{hi}: steps are 1-based and first <= last; e.g. 2-5.")
    return windows


def clip_windows(windows: Sequence[tuple[int, int]], num_steps: int) -> list[tuple[int, int]]:
    """The windows that start within ``num_steps`` steps, their ends cut at ``num_steps``."""
    return [(lo, min(hi, num_steps)) for lo, hi in windows if lo <= num_steps]


def _median(values: torch.Tensor) -> float:
    """The median (mean of the two middle values for an even count, as numpy's), inf-safe; NaN when empty."""
    n = values.numel()
    if not n:
        return float("nan")
    ordered = values.sort().values
    return float(ordered[n // 2]) if n % 2 else float((ordered[n // 2 - 1] + ordered[n // 2]) / 2)


def window_scores(
    errors: torch.Tensor, finite_steps: torch.Tensor, lo: int, hi: int
) -> dict[str, float | int]:
    """Mean and median over trajectories of one window's score (module docstring for failures).

    ``errors`` ``(N, S)``: one metric per trajectory and step (NaN where absent or after a failure);
    ``finite_steps`` ``(N,)``: the steps each rollout kept finite. A trajectory's window score is its mean error
    over steps ``lo..hi`` (1-based, inclusive). NaN errors of a trajectory that did not fail (an absent field)
    leave the trajectory out.
    """
    window = errors[:, lo - 1 : hi].double()
    failed = finite_steps < hi
    per = window.mean(1)
    present = failed | torch.isfinite(per)
    survived = present & ~failed
    ranked = torch.where(failed, torch.full_like(per, float("inf")), per)[present]
    n = int(present.sum())
    return {
        "mean": float(per[survived].mean()) if bool(survived.any()) else float("nan"),
        "median": _median(ranked),
        "num_trajectories": n,
        "num_failed": int((failed & present).sum()),
    }
