"""Korteweg-de Vries equation (hyper-viscous, single channel).

    u_t + b/2 sum_j d_j (u^2) + a sum_j d_j^3 u = nu Δu - zeta sum_j d_j^4 u

Coefficients (exponax ``KortewegDeVries``): ``convection_scale`` b, default -6.0; ``dispersivity`` a,
default 1.0; ``diffusivity`` nu >= 0, default 0.0; ``hyper_diffusivity`` zeta >= 0, default 0.01.
Deviation: pfm's family is the single-channel form (exponax's ``single_channel=True``); exponax defaults to
one channel per dimension. The dispersive and dissipative terms are stepped exactly; the convection is
explicit, so the CFL number |b u| dt / dx must stay below 1. Good values: a box of length 20-40 with 64
points, a in 0.5-2, zeta 0.01-0.05, dt 0.005-0.01, unit-variance initial conditions of low modes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from datagen.nonlinear import single_channel_convection
from datagen.pdes._base import PDE, Limit, cfl, nonnegative, register
from datagen.spectral import Grid, SpectralOps


@register
class KortewegDeVries(PDE):
    """``u_t = -b/2 sum_j d_j (u^2) - a sum_j d_j^3 u + nu Δu - zeta sum_j d_j^4 u``."""

    name = "korteweg_de_vries"
    coefficients = {
        "convection_scale": -6.0,
        "dispersivity": 1.0,
        "diffusivity": 0.0,
        "hyper_diffusivity": 0.01,
    }

    def linear(
        self,
        ops: SpectralOps,
        convection_scale: torch.Tensor,
        dispersivity: torch.Tensor,
        diffusivity: torch.Tensor,
        hyper_diffusivity: torch.Tensor,
    ) -> torch.Tensor:
        """``-a sum_j (i k_j)^3 - nu |k|^2 - zeta sum_j k_j^4``."""
        third = (ops.ik**3).sum(dim=1, keepdim=True)
        fourth = (ops.k**4).sum(dim=1, keepdim=True)
        return -dispersivity * third + diffusivity * ops.laplacian - hyper_diffusivity * fourth

    def nonlinear(self, ops: SpectralOps, convection_scale: torch.Tensor, **_: torch.Tensor) -> Callable:
        """``-b/2 sum_j d_j (u^2)``."""
        return single_channel_convection(ops, convection_scale)

    def limits(
        self,
        grid: Grid,
        dt: float,
        order: int,
        convection_scale: float,
        dispersivity: float,
        diffusivity: float,
        hyper_diffusivity: float,
    ) -> list[Limit]:
        """Nonnegative dissipation; convective CFL."""
        return [
            nonnegative("diffusivity", diffusivity),
            nonnegative("hyper_diffusivity", hyper_diffusivity),
            cfl(convection_scale * self.amplitude, grid, dt, order, "convection"),
        ]
