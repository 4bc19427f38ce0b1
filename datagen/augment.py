"""Symmetry augmentations of periodic fields: rolls, periodic crops, flips and axis permutations.

Fields are ``(..., channels, *grid)``. For vector fields (one channel per spatial axis) a flip of axis a
negates component a, and a permutation of the axes permutes the components the same way, so the result is
again a valid state of the same PDE (for isotropic equations).
"""

from __future__ import annotations

import torch

__all__ = ["draw_transform", "periodic_crop", "transform"]


def periodic_crop(field: torch.Tensor, starts: list[int], size: int | None) -> torch.Tensor:
    """A ``size``-wide periodic window at ``starts`` of ``(..., *grid)`` (a pure roll when size is None)."""
    d = len(starts)
    out = field
    for axis, start in enumerate(starts):
        dim = field.ndim - d + axis
        n = field.shape[dim]
        index = (start + torch.arange(n if size is None else size, device=field.device)) % n
        out = out.index_select(dim, index)
    return out


def transform(field: torch.Tensor, flips: list[bool], perm: list[int], is_vector: bool) -> torch.Tensor:
    """Flip axes where ``flips`` is set, then reorder axes as ``perm``, on ``(..., channels, *grid)``.

    Output axis j is input axis ``perm[j]``. Vector components follow their axes.
    """
    d = len(flips)
    lead = field.ndim - d
    dims = [lead + a for a, f in enumerate(flips) if f]
    out = field.flip(dims) if dims else field
    if is_vector:
        sign = torch.tensor([-1.0 if f else 1.0 for f in flips], device=field.device, dtype=field.dtype)
        out = out * sign.reshape(d, *([1] * d))
        out = out.index_select(lead - 1, torch.tensor(perm, device=field.device))
    return out.permute(*range(lead), *[lead + p for p in perm])


def draw_transform(
    num_spatial_dims: int, g: torch.Generator, device: torch.device
) -> tuple[list[bool], list[int]]:
    """Random flips (each axis with probability 1/2) and a random axis permutation."""
    flips = (torch.rand(num_spatial_dims, generator=g, device=device) < 0.5).tolist()
    perm = torch.randperm(num_spatial_dims, generator=g, device=device).tolist()
    return flips, perm
