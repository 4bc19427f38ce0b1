"""Hyper-diffusion.

    u_t = -zeta * sum_j d_j^4 u

Coefficient (exponax ``HyperDiffusion`` with ``diffuse_on_diffuse=False``): ``hyper_diffusivity``
zeta >= 0, default 1e-4. Linear, stepped exactly: mode k decays as ``exp(-zeta sum_j k_j^4 dt)``. Good values
on a unit box with 32-128 points: 1e-7-1e-5 with dt ~ 0.01.
"""

from __future__ import annotations

import torch

from datagen.pdes._base import PDE, Limit, nonnegative, register
from datagen.spectral import Grid, SpectralOps


@register
class HyperDiffusion(PDE):
    """``u_t = -hyper_diffusivity * sum_j d_j^4 u``."""

    name = "hyper_diffusion"
    coefficients = {"hyper_diffusivity": 1e-4}
    is_linear = True

    def linear(self, ops: SpectralOps, hyper_diffusivity: torch.Tensor) -> torch.Tensor:
        """``-zeta sum_j k_j^4``."""
        return -hyper_diffusivity * (ops.k**4).sum(dim=1, keepdim=True)

    def limits(self, grid: Grid, dt: float, order: int, hyper_diffusivity: float) -> list[Limit]:
        """Backward hyper-diffusion is ill-posed."""
        return [nonnegative("hyper_diffusivity", hyper_diffusivity)]
