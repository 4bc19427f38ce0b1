"""The one autoregressive rollout rule of pfm: used by ``GPhyT.rollout``, the tasks' validation and ``pfm evaluate``.

Rule:

1. **Window.** The model reads a window of frames ``(B, T, ...)``. Each prediction is appended to the window;
   once the window holds ``num_frames`` frames, the oldest is dropped (it slides). With ``num_frames`` equal to
   the starting window's length it slides from the first step; a shorter start grows up to ``num_frames``.
2. **Non-finite predictions stop per sample.** A sample whose prediction at step ``k`` (1-based) holds a NaN or
   Inf stops there: its steps ``k, k + 1, ...`` are NaN in the output, its count of finite steps is ``k - 1``,
   and the model is no longer called on it. The other samples go on. (Scores count the steps after the stop as
   failures: see :mod:`pfm.evaluation.metrics`.) With ``stop_non_finite=False`` (training, where the loss check
   reports a NaN) nothing is checked.

Public names: ``rollout``, ``finite_rows``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["finite_rows", "rollout"]


def finite_rows(x: torch.Tensor) -> torch.Tensor:
    """Whether each sample (first axis) of ``x`` is finite everywhere, ``(B,)`` bool.

    One sum per sample first (a NaN or Inf makes it non-finite; far cheaper than a full elementwise test), the
    elementwise test only for samples whose sum is not finite (it may have overflowed).
    """
    ok = torch.isfinite(x.reshape(x.shape[0], -1).sum(1))
    if bool(ok.all()):
        return ok
    return torch.isfinite(x.reshape(x.shape[0], -1)).all(1)


def _advance(window: torch.Tensor, frame: torch.Tensor, num_frames: int) -> torch.Tensor:
    return torch.cat((window, frame.to(window.dtype)), dim=1)[:, -num_frames:]


def rollout(
    step: Callable[[torch.Tensor], torch.Tensor],
    window: torch.Tensor,
    num_steps: int,
    *,
    num_frames: int | None = None,
    stop_non_finite: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Roll ``step`` (window ``(b, t, ...)`` -> next frame ``(b, 1, ...)``) out for ``num_steps`` steps.

    ``window`` ``(B, T, ...)``; ``num_frames`` is the longest window the model reads (default T). Returns the
    predictions ``(B, num_steps, ...)`` (NaN after a sample stopped) and the finite steps per sample ``(B,)``
    long. Gradients flow through the predictions (training calls it with ``stop_non_finite=False``).
    """
    if num_steps < 0:
        raise ValueError(f"num_steps={num_steps} must be >= 0.")
    num_frames = window.shape[1] if num_frames is None else num_frames
    if num_frames < 1:
        raise ValueError(f"num_frames={num_frames} must be >= 1.")
    batch = window.shape[0]
    finite = torch.zeros(batch, dtype=torch.long, device=window.device)
    rows = torch.arange(batch, device=window.device)  # the samples still rolling out
    frames: list[torch.Tensor] = []
    x = window
    for k in range(num_steps):
        if rows.numel() == 0:
            frames.append(window.new_full((batch, 1, *window.shape[2:]), float("nan")))
            continue
        frame = step(x)
        if stop_non_finite:
            ok = finite_rows(frame)
            if not bool(ok.all()):
                rows, frame, x = rows[ok], frame[ok], x[ok]
        if rows.numel() == batch:
            frames.append(frame.to(window.dtype))
        else:
            full = window.new_full((batch, 1, *window.shape[2:]), float("nan"))
            frames.append(full.index_put((rows,), frame.to(window.dtype)))
        finite[rows] = k + 1
        if rows.numel():
            x = _advance(x, frame, num_frames)
    if not frames:
        return window.new_empty((batch, 0, *window.shape[2:])), finite
    return torch.cat(frames, dim=1), finite
