"""A small convolutional variational autoencoder on single-channel 3D crops: the baseline model."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConvVAE"]


def _block(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    groups = min(8, out_ch)
    return nn.Sequential(
        nn.Conv3d(in_ch, out_ch, 3, stride=stride, padding=1, padding_mode="circular"),
        nn.GroupNorm(groups, out_ch),
        nn.GELU(),
    )


class ConvVAE(nn.Module):
    """Conv encoder to a diagonal Gaussian latent, conv-transpose decoder; channels folded into the batch.

    Input ``(batch, channels, x, y, z)`` with every spatial size a multiple of ``downsample_factor``
    (``2 ** num_stages``); latent ``(batch, channels * latent_channels, x/f, y/f, z/f)``.
    """

    def __init__(
        self,
        width: int = 16,
        latent_channels: int = 8,
        num_stages: int = 2,
        crop_size: int | None = None,
        num_channels: int = 1,
    ) -> None:
        super().__init__()
        self.latent_channels = latent_channels
        self.downsample_factor = 2**num_stages
        self.num_channels = num_channels
        if crop_size is not None and crop_size % self.downsample_factor:
            raise ValueError(
                f"Crop size {crop_size} is not divisible by the model's downsampling factor "
                f"{self.downsample_factor}; choose data.crop as a multiple of {self.downsample_factor}."
            )
        enc: list[nn.Module] = [_block(1, width, 1)]
        ch = width
        for _ in range(num_stages):
            enc.append(_block(ch, ch * 2, 2))
            ch *= 2
        self.encoder = nn.Sequential(*enc)
        self.to_latent = nn.Conv3d(ch, 2 * latent_channels, 1)
        dec: list[nn.Module] = [nn.Conv3d(latent_channels, ch, 3, padding=1, padding_mode="circular")]
        for _ in range(num_stages):
            dec += [
                nn.ConvTranspose3d(ch, ch // 2, 2, stride=2),
                nn.GroupNorm(min(8, ch // 2), ch // 2),
                nn.GELU(),
            ]
            ch //= 2
        dec.append(nn.Conv3d(ch, 1, 3, padding=1, padding_mode="circular"))
        self.decoder = nn.Sequential(*dec)

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 5:
            raise ValueError(f"Expected input (batch, channels, x, y, z); got shape {tuple(x.shape)}.")
        bad = [s for s in x.shape[2:] if s % self.downsample_factor]
        if bad:
            raise ValueError(
                f"Spatial size {tuple(x.shape[2:])} is not divisible by the downsampling factor "
                f"{self.downsample_factor}; crop or pad to a multiple of {self.downsample_factor}."
            )

    def encode_distribution(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance (clamped to [-30, 20]) of the latent, each ``(B, C*latent, ...)``."""
        self._check(x)
        b, c = x.shape[:2]
        h = self.to_latent(self.encoder(x.reshape(b * c, 1, *x.shape[2:])))
        mean, logvar = h.chunk(2, dim=1)
        logvar = logvar.clamp(-30.0, 20.0)
        shape = (b, c * self.latent_channels, *h.shape[2:])
        return mean.reshape(shape), logvar.reshape(shape)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent mean ``(batch, channels * latent_channels, x/f, y/f, z/f)``."""
        return self.encode_distribution(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent ``(batch, channels * latent_channels, ...)`` to fields ``(batch, channels, ...)``."""
        b = z.shape[0]
        c = z.shape[1] // self.latent_channels
        out = self.decoder(z.reshape(b * c, self.latent_channels, *z.shape[2:]))
        return out.reshape(b, c, *out.shape[2:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction through the latent mean."""
        return self.decode(self.encode(x))
