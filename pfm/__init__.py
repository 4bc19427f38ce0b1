"""pfm: pretrain and fine-tune physics foundation models on data generated while they train.

Subpackages: ``pfm.models`` (plain nn.Modules), ``pfm.heads``, ``pfm.tasks`` (LightningModules),
``pfm.data`` (DataModules), ``pfm.callbacks``, ``pfm.distributed``, ``pfm.checkpoints``.
Entry points: ``pfm.train`` (``pfm-train``) and ``pfm.cli`` (``pfm``).
"""

__version__ = "0.1.0"
