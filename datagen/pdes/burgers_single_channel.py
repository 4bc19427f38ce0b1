"""Burgers equation, single-channel form: a scalar carried along the diagonal direction.

    u_t + b/2 sum_j d_j (u^2) = nu Δu

Coefficients (exponax ``Burgers(single_channel=True)``): ``convection_scale`` b, default 1.0;
``diffusivity`` nu >= 0, default 0.1. Same limits as vector Burgers (cell Reynolds number below 10, CFL
below 1). Good values on a unit box: nu in 0.005-0.05 at n = 64, dt = 0.001-0.002. One inverse and one
forward FFT per nonlinear evaluation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from datagen.nonlinear import single_channel_convection
from datagen.pdes._base import PDE, Limit, cell_reynolds, cfl, nonnegative, register
from datagen.spectral import Grid, SpectralOps


@register
class BurgersSingleChannel(PDE):
    """``u_t = -b/2 sum_j d_j (u^2) + nu Δu``."""

    name = "burgers_single_channel"
    coefficients = {"diffusivity": 0.1, "convection_scale": 1.0}

    def linear(
        self, ops: SpectralOps, diffusivity: torch.Tensor, convection_scale: torch.Tensor
    ) -> torch.Tensor:
        """``-nu |k|^2``."""
        return diffusivity * ops.laplacian

    def nonlinear(
        self, ops: SpectralOps, diffusivity: torch.Tensor, convection_scale: torch.Tensor
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """``-b/2 sum_j d_j (u^2)``."""
        return single_channel_convection(ops, convection_scale)

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
