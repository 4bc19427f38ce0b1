"""Models: plain ``nn.Module``s with no Lightning, Hydra or I/O.

Public names: ``ConvVAE``, ``PatchDiscriminator3d``, ``TadpoleAutoencoder``, ``TadpoleEncoder``,
``TadpoleDecoder``, ``GPhyT``, ``PLaTITO``, ``PLATITO_SIZES``.
"""

from pfm.models.conv_vae import ConvVAE
from pfm.models.discriminator import PatchDiscriminator3d
from pfm.models.gphyt import GPhyT
from pfm.models.tito import PLATITO_SIZES, PLaTITO

__all__ = ["PLATITO_SIZES", "ConvVAE", "GPhyT", "PLaTITO", "PatchDiscriminator3d"]

from pfm.models.tadpole import TadpoleAutoencoder, TadpoleDecoder, TadpoleEncoder

__all__ += ["TadpoleAutoencoder", "TadpoleDecoder", "TadpoleEncoder"]
