"""Kuramoto-Sivashinsky equation (gradient-norm form, any dimension).

    u_t + b/2 |grad u|^2 + psi1 Δu + psi2 sum_j d_j^4 u = 0

Coefficients (exponax ``KuramotoSivashinsky``): ``gradient_norm_scale`` b, default 1.0;
``second_order_scale`` psi1, default 1.0 (anti-diffusion that drives the instability);
``fourth_order_scale`` psi2 > 0, default 1.0. As in exponax, the fourth-order term is
``(grad ⊗ grad) . (grad ⊗ grad) u = sum_j d_j^4 u`` (no mixed derivatives; in 1D the same as u_xxxx);
torchfsm's ``KuramotoSivashinskyHighDim`` uses the biharmonic Δ²u instead (same cost). Modes with |k| < sqrt(psi1 / psi2) grow, so the box must be
large (length 30-100 for psi1 = psi2 = 1) and resolved: the largest kept wavenumber must be at least
3 sqrt(psi1 / psi2), i.e. length <= 2 pi n / 9 at most. As exponax does, the mean of the nonlinear term is
removed so that u does not drift. Good values: length 30-60 with n = 32-64 (3D) or 64-256 (1D),
dt 0.02-0.1, warm up ~200 steps to reach the chaotic attractor.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from datagen.nonlinear import gradient_norm
from datagen.pdes._base import PDE, Limit, cfl, positive, register
from datagen.spectral import Grid, SpectralOps


@register
class KuramotoSivashinsky(PDE):
    """``u_t = -b/2 |grad u|^2 - psi1 Δu - psi2 sum_j d_j^4 u``."""

    name = "kuramoto_sivashinsky"
    coefficients = {"gradient_norm_scale": 1.0, "second_order_scale": 1.0, "fourth_order_scale": 1.0}

    def linear(
        self,
        ops: SpectralOps,
        second_order_scale: torch.Tensor,
        fourth_order_scale: torch.Tensor,
        **_: torch.Tensor,
    ) -> torch.Tensor:
        """``psi1 |k|^2 - psi2 sum_j k_j^4``."""
        fourth = (ops.k**4).sum(dim=1, keepdim=True)
        return -second_order_scale * ops.laplacian - fourth_order_scale * fourth

    def nonlinear(self, ops: SpectralOps, gradient_norm_scale: torch.Tensor, **_: torch.Tensor) -> Callable:
        """``-b/2 |grad u|^2`` with zero mean."""
        return gradient_norm(ops, gradient_norm_scale)

    def limits(
        self,
        grid: Grid,
        dt: float,
        order: int,
        gradient_norm_scale: float,
        second_order_scale: float,
        fourth_order_scale: float,
    ) -> list[Limit]:
        """Positive fourth-order damping, resolved unstable band, CFL of the linearized gradient term."""
        out = [positive("fourth_order_scale", fourth_order_scale, "must damp short waves")]
        if fourth_order_scale > 0 and second_order_scale > 0:
            need = 3 * math.sqrt(second_order_scale / fourth_order_scale)
            out.append(
                Limit(
                    "largest kept wavenumber / (3 sqrt(psi1/psi2)) (unstable band resolved)",
                    grid.max_wavenumber() / need,
                    1.0,
                    f"use n >= {math.ceil(grid.n * need / grid.max_wavenumber() / 2) * 2} or length <= "
                    f"{grid.length * grid.max_wavenumber() / need:.3g}",
                    upper=False,
                )
            )
        out.append(cfl(gradient_norm_scale * self.amplitude, grid, dt, order, "gradient-norm transport"))
        return out
