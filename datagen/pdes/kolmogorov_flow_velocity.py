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

from collections.abc import Callable

import torch

from datagen.nonlinear import projected_rotational_convection
from datagen.pdes._base import Limit, forcing_mode, register
from datagen.pdes._common import kolmogorov_forcing
from datagen.pdes.navier_stokes_velocity import NavierStokesVelocity
from datagen.spectral import Grid, SpectralOps


@register
class KolmogorovFlowVelocity(NavierStokesVelocity):
    """``u_t = nu Δu + lambda u + P(u x curl u) + gamma sin(m k_0 x_1) e_0``."""

    name = "kolmogorov_flow_velocity"
    coefficients = {"diffusivity": 0.01, "drag": 0.0, "injection_mode": 4.0, "injection_scale": 1.0}

    def nonlinear(
        self, ops: SpectralOps, injection_mode: torch.Tensor, injection_scale: torch.Tensor, **_: torch.Tensor
    ) -> Callable:
        """``P(u x curl u) + f``."""
        return projected_rotational_convection(ops, kolmogorov_forcing(ops, injection_mode, injection_scale))

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
        return [*super().limits(grid, dt, order, diffusivity, drag), *forcing_mode(injection_mode, grid)]
