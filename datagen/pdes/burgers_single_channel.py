"""Burgers equation, single-channel form: a scalar carried along the diagonal direction.

    u_t + b/2 sum_j d_j (u^2) = nu Δu

Coefficients (exponax ``Burgers(single_channel=True)``): ``convection_scale`` b, default 1.0;
``diffusivity`` nu >= 0, default 0.1. Same limits as vector Burgers (cell Reynolds number below 10, CFL
below 1). Good values on a unit box: nu in 0.005-0.05 at n = 64, dt = 0.001-0.002. One inverse and one
forward FFT per nonlinear evaluation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from datagen.nonlinear import single_channel_convection
from datagen.pdes._base import register
from datagen.pdes.burgers import Burgers
from datagen.spectral import SpectralOps


@register
class BurgersSingleChannel(Burgers):
    """``u_t = -b/2 sum_j d_j (u^2) + nu Δu``; linear part and limits as vector Burgers."""

    name = "burgers_single_channel"
    is_vector = False

    def nonlinear(
        self, ops: SpectralOps, diffusivity: torch.Tensor, convection_scale: torch.Tensor
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """``-b/2 sum_j d_j (u^2)``."""
        return single_channel_convection(ops, convection_scale)
