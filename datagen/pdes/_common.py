"""What several PDE families share beyond the contract: state normalizations, the phase-field base, a forcing.

Limit builders live in :mod:`datagen.pdes._base`, nonlinear terms in :mod:`datagen.nonlinear`. A family that
is another one plus a term subclasses that family instead (the Kolmogorov flows subclass Navier-Stokes).
"""

from __future__ import annotations

import math

import torch

from datagen.pdes._base import PDE
from datagen.spectral import SpectralOps

__all__ = ["PhaseField", "kolmogorov_forcing", "normalize_max_abs", "normalize_min_max"]


def normalize_max_abs(u: torch.Tensor) -> torch.Tensor:
    """Divide each sample of ``(batch, channels, *grid)`` by its largest |u|, so that u lies in [-1, 1]."""
    dims = tuple(range(1, u.ndim))
    return u / u.abs().amax(dim=dims, keepdim=True).clamp_min(1e-12)


def normalize_min_max(u: torch.Tensor) -> torch.Tensor:
    """Map each sample of ``(batch, channels, *grid)`` linearly onto [0, 1]: minimum to 0, maximum to 1."""
    dims = tuple(range(1, u.ndim))
    low, high = u.amin(dim=dims, keepdim=True), u.amax(dim=dims, keepdim=True)
    return (u - low) / (high - low).clamp_min(1e-12)


class PhaseField(PDE):
    """Allen-Cahn and Cahn-Hilliard: states in [-1, 1], an explicit cubic term dealiased with the 1/2 rule."""

    amplitude = 1.0
    dealias = 0.5

    def admissible(self, u: torch.Tensor, ops: SpectralOps) -> torch.Tensor:
        """Scale into [-1, 1]."""
        return normalize_max_abs(u)


def kolmogorov_forcing(
    ops: SpectralOps, injection_mode: torch.Tensor, scale: torch.Tensor, derivative: bool = False
) -> torch.Tensor:
    """``scale sin(m 2 pi x_1 / L)`` (or its x_1-derivative) in Fourier space, ``(batch|1, 1, *fourier)``."""
    grid = ops.grid
    x1 = grid.coordinates()[1]
    phase = torch.round(injection_mode) * (2 * math.pi / grid.length) * x1
    if derivative:
        real = scale * torch.round(injection_mode) * (2 * math.pi / grid.length) * torch.cos(phase)
    else:
        real = scale * torch.sin(phase)
    return grid.fft(real.expand(real.shape[0], 1, *grid.spatial_shape))
