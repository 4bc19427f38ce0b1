"""datagen: online generation of PDE data on the training device.

Public names: ``make_stepper`` (a time stepper for a named PDE family), ``known_pdes``, ``get_pde``,
``Grid``, ``ETDRKStepper``, ``FamilySpec`` (how a family is sampled), ``ShardPool`` (the on-device pool of
trajectories: crops, windows, pairs), ``write_shards`` (webdataset shards of pool samples).
This package imports torch and numpy only (webdataset when writing shards); it never imports ``pfm``.
"""

from datagen.pdes import get_pde, known_pdes
from datagen.pool import FamilySpec, ShardPool
from datagen.shards import write_shards
from datagen.spectral import ETDRKStepper, Grid
from datagen.stepper import make_stepper

__all__ = [
    "ETDRKStepper",
    "FamilySpec",
    "Grid",
    "ShardPool",
    "get_pde",
    "known_pdes",
    "make_stepper",
    "write_shards",
]
