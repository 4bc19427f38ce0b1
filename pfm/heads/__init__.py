"""pfm.heads: fine-tuning heads, each chosen by conf/head/; LoRA layers shared by all in ``pfm.heads.lora``.

Public names: ``TadpoleDynamics``, ``gphyt_fields``.
"""

from pfm.heads.gphyt_fields import gphyt_fields
from pfm.heads.tadpole_dynamics import TadpoleDynamics

__all__ = ["TadpoleDynamics", "gphyt_fields"]
