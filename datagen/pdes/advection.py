"""Advection: transport of a scalar at a constant velocity.

    u_t + velocity * (1, ..., 1) . grad u = 0

Coefficient (exponax ``Advection``, scalar velocity, which exponax applies on every axis): ``velocity`` c,
default 1.0. Linear, so it is stepped exactly: mode k turns by ``-c (k_1 + ... + k_d) dt``. No stability
limit; the CFL bound |c| dt / dx <= 1 is still enforced so that consecutive frames resolve the motion (a
feature moves at most one cell per step). Good values on a unit box with 32-128 points: |c| in 0.1-2 with
dt ~ 0.2 / (|c| n). Direction variety comes from the pool's flips and axis permutations.
"""

from __future__ import annotations

import torch

from datagen.pdes._base import PDE, Limit, cfl, register
from datagen.spectral import Grid, SpectralOps


@register
class Advection(PDE):
    """``u_t = -velocity * sum_j d_j u``."""

    name = "advection"
    coefficients = {"velocity": 1.0}
    is_linear = True

    def linear(self, ops: SpectralOps, velocity: torch.Tensor) -> torch.Tensor:
        """``-c i (k_1 + ... + k_d)``."""
        return -velocity * ops.ik.sum(dim=1, keepdim=True)

    def limits(self, grid: Grid, dt: float, order: int, velocity: float) -> list[Limit]:
        """Frames resolve the motion: CFL <= 1."""
        return [cfl(velocity, grid, dt, 4, "advection (frames resolving the motion)")]
