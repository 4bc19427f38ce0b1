"""Tasks: thin LightningModules, one per training objective, handed built models and optimizers.

Public names: ``Task`` (the shared base), ``AutoencoderTask``, ``DynamicsTask``, ``NextFrameTask``, ``schedules``. The metrics
they log are :mod:`pfm.evaluation.metrics`'.
"""

from pfm.tasks import schedules
from pfm.tasks.autoencoder import AutoencoderTask
from pfm.tasks.base import Task
from pfm.tasks.dynamics import DynamicsTask
from pfm.tasks.next_frame import NextFrameTask

__all__ = ["AutoencoderTask", "DynamicsTask", "NextFrameTask", "Task", "schedules"]
