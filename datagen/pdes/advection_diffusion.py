"""Advection-diffusion: transport at a constant velocity with diffusion.

    u_t + velocity * (1, ..., 1) . grad u = nu * Δu

Coefficients (exponax ``AdvectionDiffusion``, scalar velocity and isotropic diffusivity): ``velocity`` c,
default 1.0; ``diffusivity`` nu >= 0, default 0.01. Linear, stepped exactly. The CFL bound |c| dt / dx <= 1
keeps the motion resolved between frames. Good values on a unit box: |c| in 0.1-2, nu in 0.0005-0.01.
"""

from __future__ import annotations

import torch

from datagen.pdes._base import PDE, Limit, cfl, nonnegative, register
from datagen.spectral import Grid, SpectralOps


@register
class AdvectionDiffusion(PDE):
    """``u_t = -velocity * sum_j d_j u + diffusivity * Δu``."""

    name = "advection_diffusion"
    coefficients = {"velocity": 1.0, "diffusivity": 0.01}
    is_linear = True

    def linear(self, ops: SpectralOps, velocity: torch.Tensor, diffusivity: torch.Tensor) -> torch.Tensor:
        """``-c i (k_1 + ... + k_d) - nu |k|^2``."""
        return -velocity * ops.ik.sum(dim=1, keepdim=True) + diffusivity * ops.laplacian

    def limits(self, grid: Grid, dt: float, order: int, velocity: float, diffusivity: float) -> list[Limit]:
        """Nonnegative diffusivity; frames resolve the motion."""
        return [nonnegative("diffusivity", diffusivity), cfl(velocity, grid, dt, 4, "advection")]
