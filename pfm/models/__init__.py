"""Models: plain ``nn.Module``s with no Lightning, Hydra or I/O.

Public names: ``ConvVAE``.
"""

from pfm.models.conv_vae import ConvVAE

__all__ = ["ConvVAE"]

from pfm.models.tadpole import TadpoleAutoencoder, TadpoleDecoder, TadpoleEncoder

__all__ += ["TadpoleAutoencoder", "TadpoleDecoder", "TadpoleEncoder"]
