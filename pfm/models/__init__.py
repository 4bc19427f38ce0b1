"""Models: plain ``nn.Module``s with no Lightning, Hydra or I/O.

Public names: ``ConvVAE``.
"""

from pfm.models.conv_vae import ConvVAE

__all__ = ["ConvVAE"]
