"""Incompressible Navier-Stokes in velocity form with a Leray projection (3D turbulence; 2D too).

    u_t = nu Δu + lambda u + P(u x omega),    omega = curl u,    div u = 0

Coefficients (exponax ``NavierStokesVelocity``): ``diffusivity`` nu >= 0 (viscosity), default 0.01;
``drag`` lambda <= 0, default 0.0. The projection P removes the pressure and kinetic-energy gradients in
Fourier space, so u stays divergence-free to round-off. Channels: one velocity component per axis.
Deviation: exponax allows only 3D; pfm also runs 2D (the rotational form holds with scalar vorticity).
Initial conditions are projected to be divergence-free and scaled to unit rms. Limits: cell Reynolds
number |u| dx / nu <= 10 (the dissipation range is resolved) and CFL |u| dt / dx <= 1. Good values on a unit
box: nu 0.01-0.03 at n = 32, 0.005-0.02 at n = 64, dt 0.002-0.005.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from datagen.nonlinear import leray_project, projected_rotational_convection
from datagen.pdes._base import PDE, Limit, cell_reynolds, cfl, nonnegative, nonpositive, register
from datagen.spectral import Grid, SpectralOps


def divergence_free_initial_state(u: torch.Tensor, ops: SpectralOps) -> torch.Tensor:
    """Project ``(batch, d, *grid)`` onto divergence-free, dealiased fields with unit rms per sample."""
    grid = ops.grid
    v = grid.ifft(leray_project(ops, grid.fft(u) * ops.mask))
    dims = tuple(range(1, v.ndim))
    return v / v.square().mean(dim=dims, keepdim=True).sqrt().clamp_min(1e-12)


@register
class NavierStokesVelocity(PDE):
    """``u_t = nu Δu + lambda u + P(u x curl u)``."""

    name = "navier_stokes_velocity"
    coefficients = {"diffusivity": 0.01, "drag": 0.0}
    supported_dims = (2, 3)
    is_vector = True

    def linear(
        self, ops: SpectralOps, diffusivity: torch.Tensor, drag: torch.Tensor, **_: torch.Tensor
    ) -> torch.Tensor:
        """``-nu |k|^2 + lambda``."""
        return diffusivity * ops.laplacian + drag

    def nonlinear(self, ops: SpectralOps, **_: torch.Tensor) -> Callable:
        """``P(u x curl u)``."""
        return projected_rotational_convection(ops)

    def admissible(self, u: torch.Tensor, ops: SpectralOps) -> torch.Tensor:
        """Divergence-free, unit rms."""
        return divergence_free_initial_state(u, ops)

    def limits(self, grid: Grid, dt: float, order: int, diffusivity: float, drag: float) -> list[Limit]:
        """Nonnegative viscosity, nonpositive drag, resolved dissipation range, CFL."""
        return [
            nonnegative("diffusivity", diffusivity),
            nonpositive("drag", drag, "a positive drag pumps energy into every mode"),
            cell_reynolds(self.amplitude, diffusivity, grid),
            cfl(self.amplitude, grid, dt, order, "convection"),
        ]
