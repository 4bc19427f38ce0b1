"""A 3D PatchGAN discriminator for the optional adversarial term of autoencoder pretraining."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PatchDiscriminator3d"]


class PatchDiscriminator3d(nn.Module):
    """Strided 3D convolutions scoring overlapping patches as real or reconstructed.

    Input ``(batch, channels, x, y, z)``; channels are folded into the batch, as in the autoencoder. Output:
    one logit per patch, ``(batch * channels, 1, x / 2**num_layers, ...)``.
    """

    def __init__(self, width: int = 32, num_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch_in, ch = 1, width
        for i in range(num_layers):
            layers.append(nn.Conv3d(ch_in, ch, 4, stride=2, padding=1))
            if i > 0:
                layers.append(nn.GroupNorm(min(8, ch), ch))
            layers.append(nn.LeakyReLU(0.2))
            ch_in, ch = ch, ch * 2
        layers.append(nn.Conv3d(ch_in, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch logits for ``x`` ``(B, C, X, Y, Z)``."""
        return self.net(x.reshape(-1, 1, *x.shape[2:]))
