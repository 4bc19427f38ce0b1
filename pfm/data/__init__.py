"""LightningDataModules: online PDE samples (crops, windows, pairs) and webdataset shards.

Public names: ``OnlineCropDataModule``, ``OnlineWindowDataModule``, ``OnlinePairDataModule``,
``ShardDataModule``.
"""

from pfm.data.online import OnlineCropDataModule, OnlinePairDataModule, OnlineWindowDataModule
from pfm.data.shards import ShardDataModule

__all__ = ["OnlineCropDataModule", "OnlinePairDataModule", "OnlineWindowDataModule", "ShardDataModule"]
