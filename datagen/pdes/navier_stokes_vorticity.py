"""2D incompressible Navier-Stokes in vorticity (streamfunction) form.

    w_t + b (u . grad) w = lambda w + nu Δw,    u = (d_y psi, -d_x psi),    psi = Δ^-1 w

Coefficients (exponax ``NavierStokesVorticity``): ``diffusivity`` nu >= 0, default 0.01;
``vorticity_convection_scale`` b, default 1.0; ``drag`` lambda <= 0, default 0.0. 2D only (one channel).
Velocity is bounded by |w| L / (2 pi), which sets the CFL limit. Good values on a unit
box at n = 64-128: nu 1e-4-1e-3, dt 1e-3-5e-3 (unit-variance vorticity).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from datagen.nonlinear import vorticity_convection
from datagen.pdes._base import PDE, Limit, cfl, nonnegative, nonpositive, register
from datagen.spectral import Grid, SpectralOps


@register
class NavierStokesVorticity(PDE):
    """``w_t = -b (u . grad) w + lambda w + nu Δw``."""

    name = "navier_stokes_vorticity"
    coefficients = {"diffusivity": 0.01, "vorticity_convection_scale": 1.0, "drag": 0.0}
    supported_dims = (2,)

    def linear(
        self, ops: SpectralOps, diffusivity: torch.Tensor, drag: torch.Tensor, **_: torch.Tensor
    ) -> torch.Tensor:
        """``-nu |k|^2 + lambda``."""
        return diffusivity * ops.laplacian + drag

    def nonlinear(
        self, ops: SpectralOps, vorticity_convection_scale: torch.Tensor, **_: torch.Tensor
    ) -> Callable:
        """``-b (u . grad) w``."""
        return vorticity_convection(ops, vorticity_convection_scale)

    def limits(
        self,
        grid: Grid,
        dt: float,
        order: int,
        diffusivity: float,
        vorticity_convection_scale: float,
        drag: float,
    ) -> list[Limit]:
        """Nonnegative viscosity, nonpositive drag, CFL."""
        speed = abs(vorticity_convection_scale) * self.amplitude * grid.length / (2 * math.pi)
        return [
            nonnegative("diffusivity", diffusivity),
            nonpositive("drag", drag, "a positive drag pumps energy into every mode"),
            cfl(speed, grid, dt, order, "convection"),
        ]
