"""datagen: online generation of PDE data on the training device.

Public names: ``make_stepper`` (a time stepper for a named PDE family), ``known_pdes``, ``get_pde``,
``Grid``, ``ETDRKStepper``, ``FamilySpec`` (how a family is sampled), ``PDEPool`` (one on-device pool of
PDE trajectories: crops, windows, pairs), ``write_shards`` (webdataset shards of pool samples).
This package imports torch and numpy only (webdataset when writing shards); it never imports ``pfm``.
Each public name is imported from its module on first use (``_HOMES``), so that the light modules
(``datagen.argtypes``: ``pfm sample --help``) load no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from datagen.lazy import lazy_names

# public name -> the module that defines it
_HOMES: dict[str, str] = {
    "ETDRKStepper": "datagen.spectral",
    "FamilySpec": "datagen.pool",
    "Grid": "datagen.spectral",
    "PDEPool": "datagen.pool",
    "ShardPool": "datagen.pool",  # renamed PDEPool: datagen.pool raises an ImportError naming it
    "get_pde": "datagen.pdes",
    "known_pdes": "datagen.pdes",
    "make_stepper": "datagen.stepper",
    "write_shards": "datagen.shards",
}

__all__ = [
    "ETDRKStepper",
    "FamilySpec",
    "Grid",
    "PDEPool",
    "get_pde",
    "known_pdes",
    "make_stepper",
    "write_shards",
]

__getattr__ = lazy_names(__name__, _HOMES)

if TYPE_CHECKING:  # what type checkers and editors see: the names above, from their modules
    from datagen.pdes import get_pde, known_pdes
    from datagen.pool import FamilySpec, PDEPool
    from datagen.shards import write_shards
    from datagen.spectral import ETDRKStepper, Grid
    from datagen.stepper import make_stepper
