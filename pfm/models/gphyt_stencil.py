"""GPhyT's tokenizer weights over its stencil features, folded into weights over the window's pixels.

The tokenizer (`pfm.models.gphyt_tokens.FieldTokenizer`) maps patches of the features [x, d/dt x, d/d(axis) x ...]
(central differences, replicate padding) to tokens. The differences are linear in x, so the same tokens come
from the window's own patches with folded weights, plus the pixel slabs just outside each patch: a quarter of
the features' inner size in 2D, and no feature tensor written. Used in fp32/fp64 only (see `GPhyT.derivative`).

Public names:
- `StencilWeights`: the autograd Function doing the fold (forward) and its adjoint (backward).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["StencilWeights"]


def _flat_weight(w: torch.Tensor) -> torch.Tensor:
    """(hidden, C, *patch) -> (hidden, prod(patch) C), entries ordered (*patch, C) as `_patchify` orders them."""
    return w.permute(0, *range(2, w.ndim), 1).flatten(1)


def _unflat_weight(w: torch.Tensor, channels: int, patch: Sequence[int]) -> torch.Tensor:
    """Inverse of `_flat_weight`: (hidden, prod(patch) C) -> (hidden, C, *patch)."""
    return w.unflatten(1, (*patch, channels)).movedim(-1, 1)


class StencilWeights(torch.autograd.Function):
    """Tokenizer weights (hidden, 1 + N, C, *patch) over the stencil features -> weights over the window's pixels.

    Per axis `a` (patch `p`, feature weights `W_a`), `sum_q W_a[q] (x[q + e] - x[q - e])` over a patch is
    `sum_q x[q] (W_a[q - e] - W_a[q + e])` over the patch (terms outside it dropped), plus `W_a[last]` times
    the slab just after the patch and `-W_a[first]` times the slab just before it. Returns
    - `rows` (hidden (1 + m), prod(patch) C): the field weights plus every interior term folded into one
      kernel, then `W_a` itself for each of the m axes with p = 1 (no interior; applied as a token shift);
    - `halo` (hidden, sum over axes with p > 1 of 2 prod(patch) / p C): `[W_a[last], -W_a[first]]` per axis.
    The backward is written out: autograd through these slices would allocate and zero a full weight-sized
    gradient per slice, which cost more than the matmuls it saves on a CPU.
    """

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, patch: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """weight (hidden, 1 + N, C, *patch) -> (rows, halo) as in the class docstring."""
        ctx.patch, ctx.shape = patch, weight.shape
        kernel, token_axes, halo = weight[:, 0].clone(), [], []
        for a, p in enumerate(patch):
            w, dim = weight[:, 1 + a], 2 + a
            if p == 1:
                token_axes.append(_flat_weight(w))
                continue
            kernel.narrow(dim, 1, p - 1).add_(w.narrow(dim, 0, p - 1))
            kernel.narrow(dim, 0, p - 1).sub_(w.narrow(dim, 1, p - 1))
            halo += [_flat_weight(w.narrow(dim, p - 1, 1)), -_flat_weight(w.narrow(dim, 0, 1))]
        rows = torch.cat([_flat_weight(kernel), *token_axes])
        halo_matrix = torch.cat(halo, 1) if halo else weight.new_zeros(weight.shape[0], 0)
        return rows, halo_matrix

    @staticmethod
    def backward(ctx: Any, grad_rows: torch.Tensor, grad_halo: torch.Tensor) -> tuple[torch.Tensor, None]:
        """The adjoint of `forward`: d rows, d halo -> d weight (hidden, 1 + N, C, *patch)."""
        patch, (hidden, _, channels, *_) = ctx.patch, ctx.shape
        grad = grad_rows.new_empty(ctx.shape)
        parts = grad_rows.unflatten(0, (-1, hidden))
        kernel = _unflat_weight(parts[0], channels, patch)
        grad[:, 0] = kernel
        token_axis, offset = 1, 0
        for a, p in enumerate(patch):
            out, dim = grad[:, 1 + a], 2 + a
            if p == 1:
                out.copy_(_unflat_weight(parts[token_axis], channels, patch))
                token_axis += 1
                continue
            out.zero_()
            out.narrow(dim, 0, p - 1).add_(kernel.narrow(dim, 1, p - 1))
            out.narrow(dim, 1, p - 1).sub_(kernel.narrow(dim, 0, p - 1))
            slab = (*patch[:a], 1, *patch[a + 1 :])
            width = math.prod(slab) * channels
            for at, sign in ((p - 1, 1.0), (0, -1.0)):
                g = _unflat_weight(grad_halo[:, offset : offset + width], channels, slab)
                out.narrow(dim, at, 1).add_(g, alpha=sign)
                offset += width
        return grad, None
