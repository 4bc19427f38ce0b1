"""Random initial conditions on periodic grids, chosen per family by config (``ic: {kind: ..., ...}``).

Kinds: ``gaussian_random_field`` (power-law spectrum), ``fourier_series`` (random truncated Fourier series)
and ``blobs`` (random localized Gaussian bumps, periodic). Fields and series are normalized to zero mean
and unit standard deviation per sample and channel; blobs to the range [0, 1]. Each family's
``PDE.admissible`` then maps the field to a valid state (divergence-free, in [0, 1], ...).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch

from datagen.spectral import Grid, as_coefficient

__all__ = [
    "IC_KINDS",
    "blobs",
    "fourier_series",
    "gaussian_random_field",
    "make_initial_condition",
    "normalize",
    "normalize_max_abs",
    "normalize_min_max",
]


def normalize(u: torch.Tensor, num_spatial_dims: int) -> torch.Tensor:
    """Zero mean and unit standard deviation per sample and channel of ``(batch, channels, *grid)``."""
    dims = tuple(range(-num_spatial_dims, 0))
    u = u - u.mean(dim=dims, keepdim=True)
    return u / u.std(dim=dims, keepdim=True).clamp_min(1e-12)


def normalize_min_max(u: torch.Tensor, num_dims: int) -> torch.Tensor:
    """Map each slice of ``u`` over its last ``num_dims`` axes linearly onto [0, 1] (min to 0, max to 1)."""
    dims = tuple(range(-num_dims, 0))
    low, high = u.amin(dim=dims, keepdim=True), u.amax(dim=dims, keepdim=True)
    return (u - low) / (high - low).clamp_min(1e-12)


def normalize_max_abs(u: torch.Tensor, num_dims: int) -> torch.Tensor:
    """Divide each slice of ``u`` over its last ``num_dims`` axes by its largest |u|: into [-1, 1]."""
    dims = tuple(range(-num_dims, 0))
    return u / u.abs().amax(dim=dims, keepdim=True).clamp_min(1e-12)


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
    amplitude = k2 ** (-as_coefficient(powerlaw_exponent, grid) / 4)  # sqrt of |k|^-exponent
    u_hat = grid.fft(noise) * amplitude
    u_hat[(slice(None), slice(None)) + (0,) * grid.num_spatial_dims] = 0
    return normalize(grid.ifft(u_hat), grid.num_spatial_dims)


def fourier_series(
    grid: Grid,
    batch: int,
    channels: int = 1,
    *,
    max_mode: int | float | torch.Tensor = 4,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random Fourier series keeping modes with ``max_j |m_j| <= max_mode``, ``(batch, channels, *grid)``.

    Coefficients are complex Gaussian with equal weight for every kept mode (a band-limited field).
    """
    shape = (batch, channels, *grid.fourier_shape)
    real = torch.randn(shape, generator=generator, device=grid.device)
    imag = torch.randn(shape, generator=generator, device=grid.device)
    modes = [k * grid.length / (2 * math.pi) for k in grid.wavenumbers()]
    largest = torch.stack(torch.broadcast_tensors(*[m.abs() for m in modes])).amax(dim=0)
    keep = (largest <= as_coefficient(max_mode, grid).round()) & (largest > 0)
    u = grid.ifft(torch.complex(real, imag) * keep)
    return normalize(u, grid.num_spatial_dims)


def blobs(
    grid: Grid,
    batch: int,
    channels: int = 1,
    *,
    num_blobs: int = 4,
    width: float | Sequence[float] = (0.05, 0.15),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sums of ``num_blobs`` periodic Gaussian bumps at random centres, scaled to [0, 1] per sample.

    ``width`` (fraction of the box, a number or ``[low, high]`` drawn per blob) sets each bump's std.
    """
    d = grid.num_spatial_dims
    centres = torch.rand((batch, channels, num_blobs, d), generator=generator, device=grid.device)
    if isinstance(width, Sequence):
        low, high = float(width[0]), float(width[1])
        widths = low + (high - low) * torch.rand(
            (batch, channels, num_blobs), generator=generator, device=grid.device
        )
    else:
        widths = torch.full((batch, channels, num_blobs), float(width), device=grid.device)
    coords = [c.reshape(-1) / grid.length for c in grid.coordinates()]
    out = torch.zeros((batch, channels, *grid.spatial_shape), device=grid.device)
    for b in range(num_blobs):
        r2 = torch.zeros_like(out)
        for axis in range(d):
            delta = coords[axis].reshape(1, 1, *[-1 if a == axis else 1 for a in range(d)])
            delta = delta - centres[:, :, b, axis].reshape(batch, channels, *([1] * d))
            delta = delta - torch.round(delta)  # periodic distance in [-1/2, 1/2]
            r2 = r2 + delta**2
        out += torch.exp(-r2 / (2 * widths[:, :, b].reshape(batch, channels, *([1] * d)) ** 2))
    return normalize_min_max(out, d)


IC_KINDS: dict[str, Callable[..., torch.Tensor]] = {
    "gaussian_random_field": gaussian_random_field,
    "fourier_series": fourier_series,
    "blobs": blobs,
}

# Options that may be given as [low, high] and are then drawn per sample.
_PER_SAMPLE_RANGES = {"gaussian_random_field": ("powerlaw_exponent",), "fourier_series": ("max_mode",)}


def make_initial_condition(
    spec: Mapping[str, object], grid: Grid, batch: int, channels: int, g: torch.Generator
) -> torch.Tensor:
    """Draw ``batch`` initial conditions ``(batch, channels, *grid)`` as configured by ``spec`` (kind + options)."""
    options = dict(spec)
    kind = str(options.pop("kind", "gaussian_random_field"))
    if kind not in IC_KINDS:
        raise ValueError(f"Unknown initial condition kind {kind!r}; expected one of {sorted(IC_KINDS)}.")
    for key in _PER_SAMPLE_RANGES.get(kind, ()):
        value = options.get(key)
        if isinstance(value, Sequence):
            low, high = float(value[0]), float(value[1])
            options[key] = low + (high - low) * torch.rand(batch, generator=g, device=grid.device)
    try:
        return IC_KINDS[kind](grid, batch, channels, generator=g, **options)
    except TypeError as error:
        raise ValueError(
            f"Bad option(s) {sorted(options)} for initial condition {kind!r}: {error}."
        ) from None
