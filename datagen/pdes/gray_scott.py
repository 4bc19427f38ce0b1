"""Gray-Scott reaction-diffusion: two species, spots, stripes and self-replicating patterns.

    u_t = nu1 Δu + f (1 - u) - u v^2
    v_t = nu2 Δv - (f + k) v + u v^2

Coefficients (exponax ``GrayScott``): ``diffusivity_1`` nu1, default 2e-5; ``diffusivity_2`` nu2, default
1e-5; ``feed_rate`` f, default 0.04; ``kill_rate`` k, default 0.06. Channels: (u, v). States stay in [0, 1];
initial conditions start from u = 1, v = 0 with localized seeds (u = 1 - s/2, v = s/4 for a seed field s
scaled to [0, 1]; ``blobs`` initial conditions suit it). The reaction ``u v^2`` is explicit (rate ~1, so
dt <= 2); the pattern scale sqrt(nu2 / (f + k)) must span half a cell. Good values on a unit box at
n = 64: nu1 1e-4-2e-4 with nu2 = nu1 / 2, f 0.025-0.04, k 0.056-0.061 (higher f and k let v die out), dt 0.5-1, warm up a few hundred steps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from datagen.ic import normalize_min_max
from datagen.pdes._base import PDE, Limit, nonnegative, register, resolved_width, stiffness
from datagen.spectral import Grid, SpectralOps


@register
class GrayScott(PDE):
    """Two species ``(u, v)``; the linear part holds diffusion, feed and kill, the rest is explicit."""

    name = "gray_scott"
    coefficients = {"diffusivity_1": 2e-5, "diffusivity_2": 1e-5, "feed_rate": 0.04, "kill_rate": 0.06}
    amplitude = 1.0

    def num_channels(self, num_spatial_dims: int) -> int:
        """Two species."""
        return 2

    def linear(
        self,
        ops: SpectralOps,
        diffusivity_1: torch.Tensor,
        diffusivity_2: torch.Tensor,
        feed_rate: torch.Tensor,
        kill_rate: torch.Tensor,
    ) -> torch.Tensor:
        """``(-nu1 |k|^2 - f, -nu2 |k|^2 - f - k)`` on the channel axis."""
        lap = ops.laplacian
        return torch.cat(
            torch.broadcast_tensors(
                diffusivity_1 * lap - feed_rate, diffusivity_2 * lap - feed_rate - kill_rate
            ),
            dim=1,
        )

    def nonlinear(self, ops: SpectralOps, feed_rate: torch.Tensor, **_: torch.Tensor) -> Callable:
        """``(f - u v^2, u v^2)``; the constant feed is added in real space."""
        mask = ops.mask_slab

        def fn(w_hat: torch.Tensor) -> torch.Tensor:
            w = ops.ifft_slab(w_hat * mask)
            r = w[:, :1] * w[:, 1:] * w[:, 1:]
            return ops.fft_slab(torch.cat((feed_rate - r, r), dim=1))

        return fn

    def admissible(self, u: torch.Tensor, ops: SpectralOps) -> torch.Tensor:
        """From a seed field (channel 0, rescaled to [0, 1]) to ``(1 - s/2, s/4)``."""
        s = normalize_min_max(u[:, :1], u.ndim - 1)
        return torch.cat((1 - 0.5 * s, 0.25 * s), dim=1)

    def limits(
        self,
        grid: Grid,
        dt: float,
        order: int,
        diffusivity_1: float,
        diffusivity_2: float,
        feed_rate: float,
        kill_rate: float,
    ) -> list[Limit]:
        """Nonnegative coefficients, explicit reaction, resolved patterns."""
        return [
            nonnegative("diffusivity_1", diffusivity_1),
            nonnegative("diffusivity_2", diffusivity_2),
            nonnegative("feed_rate", feed_rate),
            nonnegative("kill_rate", kill_rate),
            stiffness(2 * self.amplitude**2, dt, order, "u v^2 reaction"),
            resolved_width(
                "pattern scale sqrt(min diffusivity / (feed_rate + kill_rate))",
                "diffusivities",
                min(diffusivity_1, diffusivity_2),
                feed_rate + kill_rate,
                grid,
            ),
        ]
