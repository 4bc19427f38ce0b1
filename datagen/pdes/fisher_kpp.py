"""Fisher-KPP equation: logistic growth with diffusion; fronts invade the unstable state u = 0.

    u_t = nu Δu + r u (1 - u)

Coefficients (exponax ``FisherKPP``): ``diffusivity`` nu >= 0, default 0.01; ``reactivity`` r >= 0,
default 1.0. States live in [0, 1]: initial conditions are rescaled to that range. The reaction is explicit,
so r dt must stay below 2 (ETDRK3/4) and fronts of width sqrt(nu / r) must span a grid cell. Good values on
a unit box at n = 64: nu 1e-4-1e-3, r 1-20, dt 0.005-0.02.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from datagen.ic import normalize_min_max
from datagen.nonlinear import polynomial
from datagen.pdes._base import PDE, Limit, nonnegative, register, resolved_width, stiffness
from datagen.spectral import Grid, SpectralOps


@register
class FisherKPP(PDE):
    """``u_t = nu Δu + r u - r u^2``."""

    name = "fisher_kpp"
    coefficients = {"diffusivity": 0.01, "reactivity": 1.0}
    amplitude = 1.0

    def linear(self, ops: SpectralOps, diffusivity: torch.Tensor, reactivity: torch.Tensor) -> torch.Tensor:
        """``-nu |k|^2 + r``."""
        return diffusivity * ops.laplacian + reactivity

    def nonlinear(self, ops: SpectralOps, diffusivity: torch.Tensor, reactivity: torch.Tensor) -> Callable:
        """``-r u^2``."""
        # r u^2, negated after the FFT (exactly): a precomputed -r would not follow writes into r
        square = polynomial(ops, [0.0, 0.0, reactivity])
        return lambda u_hat: square(u_hat).neg_()

    def admissible(self, u: torch.Tensor, ops: SpectralOps) -> torch.Tensor:
        """Rescale each sample to [0, 1]."""
        return normalize_min_max(u, u.ndim - 1)  # per sample, over channels and grid

    def limits(self, grid: Grid, dt: float, order: int, diffusivity: float, reactivity: float) -> list[Limit]:
        """Nonnegative coefficients, explicit reaction rate, resolved fronts."""
        return [
            nonnegative("diffusivity", diffusivity),
            nonnegative("reactivity", reactivity),
            stiffness(2 * reactivity, dt, order, "reaction"),
            resolved_width(
                "front width sqrt(diffusivity / reactivity)", "diffusivity", diffusivity, reactivity, grid
            ),
        ]
