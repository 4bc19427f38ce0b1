"""LightningDataModules: online PDE crops (and, later, shards and HDF5 readers).

Public names: ``OnlineCropDataModule``.
"""

from pfm.data.online import OnlineCropDataModule

__all__ = ["OnlineCropDataModule"]
