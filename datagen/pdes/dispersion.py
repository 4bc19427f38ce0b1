"""Dispersion (linear Airy equation).

    u_t = dispersivity * sum_j d_j^3 u

Coefficient (exponax ``Dispersion`` with ``advect_on_diffusion=False``): ``dispersivity`` a, default 1.0
(either sign). Linear, stepped exactly: mode k turns by ``a sum_j k_j^3 dt``, so short waves travel fastest.
The group velocity ``3 |a| k_max^2`` of the shortest kept wave must respect the CFL bound so that frames
resolve the motion. Good values on a unit box with 32-64 points: |a| in 1e-5-1e-4 with dt ~ 0.01.
"""

from __future__ import annotations

import torch

from datagen.pdes._base import PDE, Limit, cfl, register
from datagen.spectral import Grid, SpectralOps


@register
class Dispersion(PDE):
    """``u_t = dispersivity * sum_j d_j^3 u``."""

    name = "dispersion"
    coefficients = {"dispersivity": 1.0}
    is_linear = True

    def linear(self, ops: SpectralOps, dispersivity: torch.Tensor) -> torch.Tensor:
        """``a sum_j (i k_j)^3``."""
        return dispersivity * (ops.ik**3).sum(dim=1, keepdim=True)

    def limits(self, grid: Grid, dt: float, order: int, dispersivity: float) -> list[Limit]:
        """Frames resolve the fastest (shortest) waves."""
        speed = 3 * abs(dispersivity) * grid.max_wavenumber() ** 2
        return [cfl(speed, grid, dt, 4, "dispersive group velocity")]
