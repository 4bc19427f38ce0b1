"""Swift-Hohenberg equation: pattern formation (stripes, hexagons) at a critical wavenumber.

    u_t = r u - (k_c + Δ)^2 u + c2 u^2 + c3 u^3

Coefficients (exponax ``SwiftHohenberg``): ``reactivity`` r, default 0.7; ``critical_number`` k_c > 0,
default 1.0 (patterns have wavenumber sqrt(k_c)). Deviation: exponax takes ``polynomial_coefficients``
(0, 0, 1, -1); pfm names them ``quadratic_coefficient`` c2 (default 1.0) and ``cubic_coefficient``
c3 <= 0 (default -1.0) so that each sample may carry its own. Dealiased with the 1/2 rule (cubic term).
The pattern wavenumber must be resolved: sqrt(k_c) at most a third of the largest kept wavenumber. Good
values: box of length 20 pi-40 pi with n = 64, r 0.1-0.9, dt 0.05-0.2.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from datagen.nonlinear import polynomial
from datagen.pdes._base import PDE, Limit, nonpositive, positive, register, stiffness
from datagen.spectral import Grid, SpectralOps


@register
class SwiftHohenberg(PDE):
    """``u_t = (r - (k_c - |k|^2)^2) u + c2 u^2 + c3 u^3`` in Fourier form."""

    name = "swift_hohenberg"
    coefficients = {
        "reactivity": 0.7,
        "critical_number": 1.0,
        "quadratic_coefficient": 1.0,
        "cubic_coefficient": -1.0,
    }
    dealias = 0.5
    amplitude = 1.5

    def linear(
        self, ops: SpectralOps, reactivity: torch.Tensor, critical_number: torch.Tensor, **_: torch.Tensor
    ) -> torch.Tensor:
        """``r - (k_c - |k|^2)^2``."""
        return reactivity - (critical_number + ops.laplacian) ** 2

    def nonlinear(
        self,
        ops: SpectralOps,
        quadratic_coefficient: torch.Tensor,
        cubic_coefficient: torch.Tensor,
        **_: torch.Tensor,
    ) -> Callable:
        """``c2 u^2 + c3 u^3``."""
        return polynomial(ops, [0.0, 0.0, quadratic_coefficient, cubic_coefficient])

    def limits(
        self,
        grid: Grid,
        dt: float,
        order: int,
        reactivity: float,
        critical_number: float,
        quadratic_coefficient: float,
        cubic_coefficient: float,
    ) -> list[Limit]:
        """Bounded cubic, explicit rate, resolved pattern wavenumber."""
        a = self.amplitude
        rate = 2 * abs(quadratic_coefficient) * a + 3 * abs(cubic_coefficient) * a * a
        resolved = grid.max_wavenumber(self.dealias) / 3
        return [
            nonpositive("cubic_coefficient", cubic_coefficient, "a positive cubic blows up"),
            positive("critical_number", critical_number, "pattern wavenumber is sqrt of it"),
            stiffness(rate, dt, order, "polynomial reaction"),
            Limit(
                "pattern wavenumber sqrt(critical_number)",
                math.sqrt(max(critical_number, 0.0)),
                resolved,
                f"use critical_number <= {resolved**2:.3g}, more grid points or a smaller box",
            ),
        ]
