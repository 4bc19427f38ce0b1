"""PDE families, one module each, found by name through the registry.

Public names: ``PDE``, ``register``, ``get_pde``, ``known_pdes``.
"""

from datagen.pdes import diffusion  # noqa: F401  (registers the family)
from datagen.pdes._base import PDE, get_pde, known_pdes, register

__all__ = ["PDE", "get_pde", "known_pdes", "register"]
