"""Random initial conditions on periodic grids, each normalised to zero mean and unit standard deviation."""

from __future__ import annotations

import torch

from datagen.spectral import Grid

__all__ = ["gaussian_random_field", "normalize"]


def normalize(u: torch.Tensor, num_spatial_dims: int) -> torch.Tensor:
    """Zero mean and unit standard deviation per sample and channel of ``(batch, channels, *grid)``."""
    dims = tuple(range(-num_spatial_dims, 0))
    u = u - u.mean(dim=dims, keepdim=True)
    return u / u.std(dim=dims, keepdim=True).clamp_min(1e-12)


def gaussian_random_field(
    grid: Grid,
    batch: int,
    channels: int = 1,
    *,
    powerlaw_exponent: float | torch.Tensor = 3.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Gaussian random field with power spectrum ``|k|^-exponent``, shape ``(batch, channels, *grid)``.

    Larger exponents give smoother fields. ``powerlaw_exponent`` may be a ``(batch,)`` tensor.
    """
    noise = torch.randn(
        (batch, channels, *grid.spatial_shape), generator=generator, device=grid.device, dtype=torch.float32
    )
    k2 = -grid.laplacian_symbol()
    k2 = torch.where(k2 == 0, torch.ones_like(k2), k2)
    exponent = torch.as_tensor(powerlaw_exponent, dtype=torch.float32, device=grid.device)
    exponent = exponent.reshape(-1, *([1] * (1 + grid.num_spatial_dims)))
    amplitude = k2 ** (-exponent / 4)  # sqrt of |k|^-exponent
    u_hat = grid.fft(noise) * amplitude
    zero = (slice(None), slice(None)) + (0,) * grid.num_spatial_dims
    u_hat[zero] = 0
    return normalize(grid.ifft(u_hat), grid.num_spatial_dims)
