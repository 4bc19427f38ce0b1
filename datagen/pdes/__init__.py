"""PDE families, one module each, found by name through the registry.

Public names: ``PDE``, ``Limit``, ``register``, ``get_pde``, ``known_pdes``, ``check_limits``.
Importing this package registers every family below; a new family is one more module plus one import here
(see docs/new_pde.md).
"""

from datagen.pdes import (  # noqa: F401  (importing registers the families)
    advection,
    advection_diffusion,
    allen_cahn,
    burgers,
    burgers_single_channel,
    cahn_hilliard,
    diffusion,
    dispersion,
    fisher_kpp,
    gray_scott,
    hyper_diffusion,
    kolmogorov_flow_velocity,
    kolmogorov_flow_vorticity,
    korteweg_de_vries,
    kuramoto_sivashinsky,
    navier_stokes_velocity,
    navier_stokes_vorticity,
    swift_hohenberg,
)
from datagen.pdes._base import PDE, Limit, check_limits, get_pde, known_pdes, register

__all__ = ["PDE", "Limit", "check_limits", "get_pde", "known_pdes", "register"]
