"""Diffusion (heat) equation.

    u_t = nu * Δu

Coefficient (exponax ``Diffusion``, isotropic): ``diffusivity`` nu >= 0, default 0.01. Linear, so it is
stepped exactly: each Fourier mode decays as ``exp(-nu |k|^2 dt)``. Good values on a box of length 1 with
32-128 points: 0.0005-0.05.
"""

from __future__ import annotations

import torch

from datagen.pdes._base import PDE, Limit, nonnegative, register
from datagen.spectral import Grid, SpectralOps


@register
class Diffusion(PDE):
    """``u_t = diffusivity * Δu``."""

    name = "diffusion"
    coefficients = {"diffusivity": 0.01}
    is_linear = True

    def linear(self, ops: SpectralOps, diffusivity: torch.Tensor) -> torch.Tensor:
        """``-nu |k|^2``."""
        return diffusivity * ops.laplacian

    def limits(self, grid: Grid, dt: float, order: int, diffusivity: float) -> list[Limit]:
        """Backward diffusion is ill-posed."""
        return [nonnegative("diffusivity", diffusivity)]
