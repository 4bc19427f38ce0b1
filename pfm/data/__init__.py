"""LightningDataModules: online PDE samples (crops, windows, pairs) and webdataset shards.

Public names: ``OnlineCropDataModule``, ``OnlineWindowDataModule``, ``OnlinePairDataModule``,
``ShardDataModule``; field windows for GPhyT: ``OnlineFieldDataModule``, ``WellDataModule``,
``MixedFieldDataModule``.
"""

from pfm.data.fields import OnlineFieldDataModule
from pfm.data.mixed import MixedFieldDataModule
from pfm.data.online import OnlineCropDataModule, OnlinePairDataModule, OnlineWindowDataModule
from pfm.data.shards import ShardDataModule
from pfm.data.well import WellDataModule

__all__ = [
    "MixedFieldDataModule",
    "OnlineCropDataModule",
    "OnlineFieldDataModule",
    "OnlinePairDataModule",
    "OnlineWindowDataModule",
    "ShardDataModule",
    "WellDataModule",
]
