"""Allen-Cahn equation: phase separation into u = +-1 with curvature-driven interfaces.

    u_t = nu Δu + c1 u + c3 u^3

Coefficients (exponax ``AllenCahn``): ``diffusivity`` nu >= 0, default 5e-3; ``first_order_coefficient``
c1, default 1.0; ``third_order_coefficient`` c3 <= 0, default -1.0. Initial conditions are scaled into
[-1, 1]. The cubic term is explicit (dealiased with the 1/2 rule, as in exponax): 3 |c3| dt must stay below
2, and interfaces of width sqrt(nu / c1) must span a grid cell. Good values on a unit box at n = 64:
nu 1e-4-1e-3, c1 = 1, c3 = -1, dt 0.01-0.1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from datagen.nonlinear import polynomial
from datagen.pdes._base import Limit, nonnegative, nonpositive, register, resolved_width, stiffness
from datagen.pdes._common import PhaseField
from datagen.spectral import Grid, SpectralOps


@register
class AllenCahn(PhaseField):
    """``u_t = nu Δu + c1 u + c3 u^3``."""

    name = "allen_cahn"
    coefficients = {"diffusivity": 5e-3, "first_order_coefficient": 1.0, "third_order_coefficient": -1.0}

    def linear(
        self,
        ops: SpectralOps,
        diffusivity: torch.Tensor,
        first_order_coefficient: torch.Tensor,
        **_: torch.Tensor,
    ) -> torch.Tensor:
        """``-nu |k|^2 + c1``."""
        return diffusivity * ops.laplacian + first_order_coefficient

    def nonlinear(
        self, ops: SpectralOps, third_order_coefficient: torch.Tensor, **_: torch.Tensor
    ) -> Callable:
        """``c3 u^3``."""
        return polynomial(ops, [0.0, 0.0, 0.0, third_order_coefficient])

    def limits(
        self,
        grid: Grid,
        dt: float,
        order: int,
        diffusivity: float,
        first_order_coefficient: float,
        third_order_coefficient: float,
    ) -> list[Limit]:
        """Bounded cubic, explicit rate, resolved interfaces."""
        return [
            nonnegative("diffusivity", diffusivity),
            nonpositive("third_order_coefficient", third_order_coefficient, "a positive cubic blows up"),
            stiffness(3 * third_order_coefficient * self.amplitude**2, dt, order, "cubic reaction"),
            resolved_width(
                "interface width sqrt(diffusivity / |c1|)",
                "diffusivity",
                diffusivity,
                abs(first_order_coefficient),
                grid,
            ),
        ]
