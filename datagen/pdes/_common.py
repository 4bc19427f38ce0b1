"""What several PDE families share beyond the contract: the phase-field base and the Kolmogorov forcing.

Limit builders live in :mod:`datagen.pdes._base`, nonlinear terms in :mod:`datagen.nonlinear`, maps of a
field onto a range (for ``admissible``) in :mod:`datagen.ic`. A family that
is another one plus a term subclasses that family instead (the Kolmogorov flows subclass Navier-Stokes).
"""

from __future__ import annotations

import math

import torch

from datagen.ic import normalize_max_abs
from datagen.pdes._base import PDE
from datagen.spectral import SpectralOps

__all__ = ["PhaseField", "kolmogorov_forcing"]


class PhaseField(PDE):
    """Allen-Cahn and Cahn-Hilliard: states in [-1, 1], an explicit cubic term dealiased with the 1/2 rule."""

    amplitude = 1.0
    dealias = 0.5

    def admissible(self, u: torch.Tensor, ops: SpectralOps) -> torch.Tensor:
        """Scale into [-1, 1]."""
        return normalize_max_abs(u, u.ndim - 1)  # per sample, over channels and grid


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
