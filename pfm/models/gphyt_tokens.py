"""GPhyT's field tokenizers: the derivative features of a window, the per-field patch embedding and its inverse.

`pfm.models.GPhyT` (pfm/models/gphyt.py) holds one `FieldTokenizer` and one `FieldDetokenizer`; their weights
carry one column per vocabulary field, so a batch may name any subset of the fields in any order.

Public names:
- `derivative_features`: (B, T, *spatial, C) -> the fields and their central differences along t and each axis.
- `FieldTokenizer`: patch embedding with per-field input weights (`embed` folds the stencil into the weights).
- `FieldDetokenizer`: per-field linear un-patching (the official ConvTranspose3d layout).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pfm.models.gphyt_stencil import StencilWeights

__all__ = ["FieldDetokenizer", "FieldTokenizer", "derivative_features"]


def derivative_features(x: torch.Tensor) -> torch.Tensor:
    """(B, T, *spatial, C) -> (B, T, *spatial, 2 + N, C): the fields, then d/dt and d/d(axis) for each axis.

    Central differences `x[i+1] - x[i-1]` (the official stencil, not halved) with replicate padding.
    """
    features = [x]
    for axis in range(1, x.ndim - 1):
        n = x.shape[axis]
        padded = torch.cat((x.narrow(axis, 0, 1), x, x.narrow(axis, n - 1, 1)), dim=axis)
        features.append(padded.narrow(axis, 2, n) - padded.narrow(axis, 0, n))
    return torch.stack(features, dim=-2)


def _patchify(x: torch.Tensor, patch: Sequence[int]) -> torch.Tensor:
    """(B, T, *spatial, K) -> (B, T/pt, *spatial/p, pt * prod(p) * K), patch entries ordered (pt, *p, K)."""
    batch, sizes, channels = x.shape[0], x.shape[1:-1], x.shape[-1]
    split = [batch]
    for size, p in zip(sizes, patch, strict=True):
        split += [size // p, p]
    nd = len(patch)
    order = [0, *range(1, 2 * nd, 2), *range(2, 2 * nd + 1, 2), 2 * nd + 1]
    return x.reshape([*split, channels]).permute(order).flatten(nd + 1)


def _unpatchify(x: torch.Tensor, patch: Sequence[int], channels: int) -> torch.Tensor:
    """Inverse of `_patchify`: (B, *n, prod(patch) * K) -> (B, *(n * patch), K)."""
    batch, counts, nd = x.shape[0], x.shape[1:-1], len(patch)
    x = x.reshape(batch, *counts, *patch, channels)
    order = [0]
    for i in range(nd):
        order += [1 + i, 1 + nd + i]
    return x.permute([*order, 2 * nd + 1]).reshape(
        batch, *(n * p for n, p in zip(counts, patch, strict=True)), channels
    )


class FieldTokenizer(nn.Module):
    """Patch embedding with per-field input weights: (B, T, *spatial, F, C) -> (B, nT, *n, hidden).

    `weight` is (hidden, F, vocabulary, *patch): F feature kinds (field, d/dt, d/daxis...) for every
    vocabulary field. A batch uses only the columns of its own fields, which equals zero-filling the others.
    """

    def __init__(self, hidden_dim: int, num_features: int, num_fields: int, patch: Sequence[int]) -> None:
        super().__init__()
        self.patch = tuple(patch)
        fan_in = num_features * num_fields * math.prod(patch)
        bound = fan_in**-0.5  # the Conv3d default scale
        self.weight = nn.Parameter(
            torch.empty(hidden_dim, num_features, num_fields, *patch).uniform_(-bound, bound)
        )
        self.bias = nn.Parameter(torch.empty(hidden_dim).uniform_(-bound, bound))

    def forward(self, features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """features (B, T, *spatial, F, C) with C = len(index) vocabulary indices -> (B, nT, *n, hidden).

        The definition; `embed` computes the same tokens from the window itself, faster.
        """
        weight = self.weight.index_select(2, index)  # (hidden, F, C, *patch)
        nd = len(self.patch)
        weight = weight.permute(0, *range(3, 3 + nd), 1, 2).flatten(1)  # entries ordered (*patch, F, C)
        return F.linear(_patchify(features.flatten(-2), self.patch), weight, self.bias)

    def embed(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """`forward(derivative_features(x), index)` without building the features: (B, T, *spatial, C) -> (B, nT, *n, hidden).

        `index` holds the C channels' vocabulary indices; None means the whole vocabulary in order. The
        difference stencil is linear, so its weights can act on the window's pixels directly (see
        `pfm.models.gphyt_stencil`): the big matmul has a quarter of the features' inner size (2D), and no
        (B, T, *spatial, F, C) tensor is written. An axis with patch 1 (time, officially) adds
        `Y[k+1] - Y[k-1]` (clamped) of `Y = patch(x) W_a`, a shift in token space; an axis with a longer
        patch adds the two pixel slabs just outside each patch (replicate-padded) through `halo` weights.
        """
        patch, hidden = self.patch, self.weight.shape[0]
        weight = self.weight if index is None else self.weight.index_select(2, index)
        rows, halo = StencilWeights.apply(weight, patch)
        out = F.linear(_patchify(x, patch), rows).unflatten(-1, (-1, hidden))
        terms = out.unbind(-2)  # the folded kernel's tokens, then Y of each axis with patch 1
        tokens = terms[0] + self.bias
        for y, a in zip(terms[1:], (a for a, p in enumerate(patch) if p == 1), strict=True):
            n = y.shape[1 + a]
            padded = torch.cat((y.narrow(1 + a, 0, 1), y, y.narrow(1 + a, n - 1, 1)), dim=1 + a)
            tokens = tokens + (padded.narrow(1 + a, 2, n) - padded.narrow(1 + a, 0, n))
        slabs = []
        for a, p in enumerate(patch):
            if p > 1:
                size, k = x.shape[1 + a], torch.arange(x.shape[1 + a] // p, device=x.device)
                slab = (*patch[:a], 1, *patch[a + 1 :])
                for at in (((k + 1) * p).clamp(max=size - 1), (k * p - 1).clamp(min=0)):
                    slabs.append(_patchify(x.index_select(1 + a, at), slab))
        if slabs:
            tokens = tokens + F.linear(torch.cat(slabs, -1), halo)
        return tokens

    def extend(self, num_new: int) -> None:
        """Add input columns for `num_new` fields, drawn with the spread of the existing ones."""
        with torch.no_grad():
            std = self.weight.std() if self.weight.numel() > 1 else torch.tensor(0.02)
            shape = list(self.weight.shape)
            shape[2] = num_new
            new = torch.randn(shape, dtype=self.weight.dtype, device=self.weight.device) * std
            self.weight = nn.Parameter(torch.cat((self.weight, new), dim=2))


class FieldDetokenizer(nn.Module):
    """Per-field linear un-patching: (B, nT, *n, hidden) -> (B, nT pt, *(n p), C) for the selected fields.

    `weight` is (hidden, vocabulary, *patch) and `bias` (vocabulary,): the official ConvTranspose3d layout.
    """

    def __init__(self, hidden_dim: int, num_fields: int, patch: Sequence[int]) -> None:
        super().__init__()
        self.patch = tuple(patch)
        self.weight = nn.Parameter(torch.empty(hidden_dim, num_fields, *patch))
        nn.init.trunc_normal_(self.weight, std=0.02)
        self.bias = nn.Parameter(torch.zeros(num_fields))

    def forward(self, tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """tokens (B, nT, *n, hidden) -> (B, nT pt, *(n p), C), C = len(index) vocabulary indices."""
        nd = len(self.patch)
        weight = self.weight.index_select(1, index).permute(0, *range(2, 2 + nd), 1).flatten(1)
        out = _unpatchify(tokens @ weight, self.patch, index.numel())
        return out + self.bias.index_select(0, index).to(out.dtype)

    def extend(self, num_new: int) -> None:
        """Add zero output weights and biases for `num_new` fields: their derivative starts at 0."""
        with torch.no_grad():
            shape = list(self.weight.shape)
            shape[1] = num_new
            self.weight = nn.Parameter(torch.cat((self.weight, self.weight.new_zeros(shape)), dim=1))
            self.bias = nn.Parameter(torch.cat((self.bias, self.bias.new_zeros(num_new))))
