"""Tasks: thin LightningModules, one per training objective, handed built models and optimizers.

Public names: ``AutoencoderTask``, ``nrmse``.
"""

from pfm.tasks import schedules
from pfm.tasks.autoencoder import AutoencoderTask, nrmse

__all__ = ["AutoencoderTask", "nrmse", "schedules"]
