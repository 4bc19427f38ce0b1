"""datagen: online generation of PDE data on the training device.

Public names: ``make_stepper``, ``known_pdes``, ``get_pde``, ``Grid``, ``ShardPool``, ``FamilySpec``.
This package imports torch and numpy only; it never imports ``pfm``.
"""

from datagen.pdes import get_pde, known_pdes
from datagen.pool import FamilySpec, ShardPool
from datagen.spectral import Grid
from datagen.stepper import make_stepper

__all__ = ["FamilySpec", "Grid", "ShardPool", "get_pde", "known_pdes", "make_stepper"]
