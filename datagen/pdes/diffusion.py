"""Diffusion (heat) equation.

    u_t = nu * Δu

Coefficient (exponax ``Diffusion``): ``diffusivity`` nu > 0, default 0.01. Linear, so it is stepped exactly:
each Fourier mode decays as ``exp(-nu |k|^2 dt)``. Good values on a box of length 1 with 32-128 points:
0.001-0.05.
"""

from __future__ import annotations

import torch

from datagen.pdes._base import PDE, register
from datagen.spectral import Grid


@register
class Diffusion(PDE):
    """``u_t = diffusivity * Δu``."""

    name = "diffusion"
    coefficients = {"diffusivity": 0.01}
    is_linear = True

    def linear(self, grid: Grid, diffusivity: torch.Tensor) -> torch.Tensor:
        """``-nu |k|^2``."""
        return diffusivity * grid.laplacian_symbol()
