"""Cahn-Hilliard equation: conserved phase separation (spinodal decomposition and coarsening).

    u_t = nu Δ(c3 u^3 + c1 u - gamma Δu)

Coefficients (exponax ``CahnHilliard``): ``diffusivity`` nu >= 0, default 1e-2; ``gamma`` >= 0 (interface
energy), default 1e-3; ``first_order_coefficient`` c1, default -1.0; ``third_order_coefficient`` c3 >= 0,
default 1.0. The mean of u is conserved. Initial conditions are scaled into [-1, 1]. The term
``nu Δ(c3 u^3)`` is explicit (dealiased with the 1/2 rule), so ``3 nu c3 k_max^2 dt`` must stay below 2,
and interfaces of width sqrt(gamma / |c1|) must span a grid cell. Good values on a unit box at n = 32-64:
nu 1e-3-1e-2, gamma 1e-4-1e-3, dt 1e-3-5e-3.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from datagen.nonlinear import polynomial
from datagen.pdes._base import Limit, nonnegative, register, resolved_width, stiffness
from datagen.pdes._common import PhaseField
from datagen.spectral import Grid, SpectralOps


@register
class CahnHilliard(PhaseField):
    """``u_t = nu c1 Δu - nu gamma Δ²u + nu Δ(c3 u^3)``."""

    name = "cahn_hilliard"
    coefficients = {
        "diffusivity": 1e-2,
        "gamma": 1e-3,
        "first_order_coefficient": -1.0,
        "third_order_coefficient": 1.0,
    }

    def linear(
        self,
        ops: SpectralOps,
        diffusivity: torch.Tensor,
        gamma: torch.Tensor,
        first_order_coefficient: torch.Tensor,
        **_: torch.Tensor,
    ) -> torch.Tensor:
        """``-nu c1 |k|^2 - nu gamma |k|^4``."""
        lap = ops.laplacian
        return diffusivity * (first_order_coefficient * lap - gamma * lap * lap)

    def nonlinear(
        self,
        ops: SpectralOps,
        diffusivity: torch.Tensor,
        third_order_coefficient: torch.Tensor,
        **_: torch.Tensor,
    ) -> Callable:
        """``nu Δ(c3 u^3)``."""
        cubic = polynomial(ops, [0.0, 0.0, 0.0, third_order_coefficient])
        lap = ops.laplacian_slab
        # nu * lap formed on every call: nu is live (a pool writes new values into it in place)
        return lambda u_hat: (diffusivity * lap) * cubic(u_hat)

    def limits(
        self,
        grid: Grid,
        dt: float,
        order: int,
        diffusivity: float,
        gamma: float,
        first_order_coefficient: float,
        third_order_coefficient: float,
    ) -> list[Limit]:
        """Nonnegative coefficients, explicit nonlinear diffusion rate, resolved interfaces."""
        k2 = grid.num_spatial_dims * grid.max_wavenumber(self.dealias) ** 2
        return [
            nonnegative("diffusivity", diffusivity),
            nonnegative("gamma", gamma),
            nonnegative("third_order_coefficient", third_order_coefficient, "a negative cubic blows up"),
            stiffness(
                3 * diffusivity * third_order_coefficient * self.amplitude**2 * k2,
                dt,
                order,
                "nonlinear diffusion",
            ),
            resolved_width(
                "interface width sqrt(gamma / |c1|)", "gamma", gamma, abs(first_order_coefficient), grid
            ),
        ]
