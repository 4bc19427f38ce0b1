"""2D Kolmogorov flow in vorticity form: vorticity Navier-Stokes with a sinusoidal shear force.

    w_t + b (u . grad) w = lambda w + nu Δw + f,    f = -m (2 pi / L) gamma cos(m (2 pi / L) x_1)

(``f`` is the curl of the velocity force ``gamma sin(m (2 pi / L) x_1) e_0``.) Coefficients (exponax
``KolmogorovFlowVorticity``): ``diffusivity`` nu, default 1e-3; ``convection_scale`` b, default 1.0;
``drag`` lambda <= 0, default -0.1; ``injection_mode`` m (integer, rounded), default 4; ``injection_scale``
gamma, default 1.0. Good values on a box of length 2 pi at n = 64-128: nu 1e-3-1e-2, drag -0.1, m 2-4,
dt 0.01-0.05.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from datagen.nonlinear import vorticity_convection
from datagen.pdes._base import Limit, forcing_mode, register
from datagen.pdes._common import kolmogorov_forcing
from datagen.pdes.navier_stokes_vorticity import NavierStokesVorticity
from datagen.spectral import Grid, SpectralOps


@register
class KolmogorovFlowVorticity(NavierStokesVorticity):
    """``w_t = -b (u . grad) w + lambda w + nu Δw + f``."""

    name = "kolmogorov_flow_vorticity"
    coefficients = {
        "diffusivity": 1e-3,
        "convection_scale": 1.0,
        "drag": -0.1,
        "injection_mode": 4.0,
        "injection_scale": 1.0,
    }

    def nonlinear(
        self,
        ops: SpectralOps,
        convection_scale: torch.Tensor,
        injection_mode: torch.Tensor,
        injection_scale: torch.Tensor,
        **_: torch.Tensor,
    ) -> Callable:
        """``-b (u . grad) w + f``."""
        forcing = kolmogorov_forcing(ops, injection_mode, -injection_scale, derivative=True)
        return vorticity_convection(ops, convection_scale, forcing)

    def limits(
        self,
        grid: Grid,
        dt: float,
        order: int,
        diffusivity: float,
        convection_scale: float,
        drag: float,
        injection_mode: float,
        injection_scale: float,
    ) -> list[Limit]:
        """Vorticity limits and a resolved forcing mode."""
        return [
            *super().limits(grid, dt, order, diffusivity, convection_scale, drag),
            *forcing_mode(injection_mode, grid),
        ]
