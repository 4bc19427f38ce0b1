"""Kolmogorov flow in velocity form: Navier-Stokes driven by a sinusoidal shear force.

    u_t = nu Δu + lambda u + P(u x omega) + f,    f_0 = gamma sin(m (2 pi / L) x_1),  f_1 = f_2 = 0

Coefficients (exponax ``KolmogorovFlowVelocity``): ``diffusivity`` nu >= 0, default 0.01; ``drag``
lambda <= 0, default 0.0; ``injection_mode`` m (an integer, rounded), default 4; ``injection_scale``
gamma, default 1.0. The force varies only across its own component, so it is divergence-free. Runs in 2D
and 3D (exponax: 3D only). Limits as for ``navier_stokes_velocity`` plus a resolved forcing mode
(m <= n / 6). Good values on a unit box at n = 32-64: nu 0.01-0.03, drag -0.1-0, m 1-4, gamma 0.5-2,
dt 0.002-0.005.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from datagen.nonlinear import projected_rotational_convection
from datagen.pdes._base import PDE, Limit, register
from datagen.pdes.navier_stokes_velocity import divergence_free_initial_state, velocity_limits
from datagen.spectral import Grid, SpectralOps


def kolmogorov_forcing(
    ops: SpectralOps, injection_mode: torch.Tensor, scale: torch.Tensor, derivative: bool = False
) -> torch.Tensor:
    """``scale sin(m 2 pi x_1 / L)`` (or its x_1-derivative) in Fourier space, ``(batch|1, 1, *fourier_shape)``."""
    grid = ops.grid
    x1 = grid.coordinates()[1]
    phase = torch.round(injection_mode) * (2 * math.pi / grid.length) * x1
    if derivative:
        real = scale * torch.round(injection_mode) * (2 * math.pi / grid.length) * torch.cos(phase)
    else:
        real = scale * torch.sin(phase)
    return grid.fft(real.expand(real.shape[0], 1, *grid.spatial_shape))


@register
class KolmogorovFlowVelocity(PDE):
    """``u_t = nu Δu + lambda u + P(u x curl u) + gamma sin(m k_0 x_1) e_0``."""

    name = "kolmogorov_flow_velocity"
    coefficients = {"diffusivity": 0.01, "drag": 0.0, "injection_mode": 4.0, "injection_scale": 1.0}
    supported_dims = (2, 3)
    is_vector = True

    def linear(
        self, ops: SpectralOps, diffusivity: torch.Tensor, drag: torch.Tensor, **_: torch.Tensor
    ) -> torch.Tensor:
        """``-nu |k|^2 + lambda``."""
        return diffusivity * ops.laplacian + drag

    def nonlinear(
        self, ops: SpectralOps, injection_mode: torch.Tensor, injection_scale: torch.Tensor, **_: torch.Tensor
    ) -> Callable:
        """``P(u x curl u) + f``."""
        return projected_rotational_convection(ops, kolmogorov_forcing(ops, injection_mode, injection_scale))

    def admissible(self, u: torch.Tensor, ops: SpectralOps) -> torch.Tensor:
        """Divergence-free, unit rms."""
        return divergence_free_initial_state(u, ops)

    def limits(
        self,
        grid: Grid,
        dt: float,
        order: int,
        diffusivity: float,
        drag: float,
        injection_mode: float,
        injection_scale: float,
    ) -> list[Limit]:
        """Navier-Stokes limits and a resolved forcing mode."""
        return [
            *velocity_limits(self.amplitude, grid, dt, order, diffusivity, drag),
            *injection_mode_limits(injection_mode, grid),
        ]


def injection_mode_limits(injection_mode: float, grid: Grid) -> list[Limit]:
    """The forcing mode of the Kolmogorov families: at least 1, and resolved (at most n / 6)."""
    mode = round(injection_mode)
    return [
        Limit(
            "injection_mode", mode, grid.n // 6, f"use injection_mode <= {grid.n // 6} or more grid points"
        ),
        Limit("injection_mode", mode, 1, "use injection_mode >= 1", upper=False),
    ]
