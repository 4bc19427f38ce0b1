"""Burgers equation, vector form: the velocity has one channel per spatial dimension.

    u_t + b (u . grad) u = nu Δu            (1D: u_t + b/2 (u^2)_x = nu u_xx)

Coefficients (exponax ``Burgers``, default non-conservative form): ``convection_scale`` b, default 1.0;
``diffusivity`` nu >= 0, default 0.1. Shocks steepen until their width nu / |u| reaches the grid, so nu must
keep the cell Reynolds number |b u| dx / nu below 10, and dt must keep the CFL number |b u| dt / dx below 1
(u up to ~3 for unit-variance initial conditions). Good values on a unit box: nu in 0.005-0.05 at n = 64,
dt = 0.001-0.002. The convection term is evaluated in rotational form (see ``datagen.nonlinear.convection``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from datagen.nonlinear import convection
from datagen.pdes._base import PDE, Limit, cell_reynolds, cfl, nonnegative, register
from datagen.spectral import Grid, SpectralOps


@register
class Burgers(PDE):
    """``u_t = -b (u . grad) u + nu Δu`` for a ``num_spatial_dims``-channel velocity."""

    name = "burgers"
    coefficients = {"diffusivity": 0.1, "convection_scale": 1.0}
    is_vector = True

    def linear(
        self, ops: SpectralOps, diffusivity: torch.Tensor, convection_scale: torch.Tensor
    ) -> torch.Tensor:
        """``-nu |k|^2`` on every channel."""
        return diffusivity * ops.laplacian

    def nonlinear(
        self, ops: SpectralOps, diffusivity: torch.Tensor, convection_scale: torch.Tensor
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """``-b (u . grad) u``."""
        return convection(ops, convection_scale)

    def limits(
        self, grid: Grid, dt: float, order: int, diffusivity: float, convection_scale: float
    ) -> list[Limit]:
        """Nonnegative viscosity, resolved shocks, convective CFL."""
        speed = convection_scale * self.amplitude
        return [
            nonnegative("diffusivity", diffusivity),
            cell_reynolds(speed, diffusivity, grid),
            cfl(speed, grid, dt, order, "convection"),
        ]
