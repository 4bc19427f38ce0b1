"""Coarse-grained C-alpha bead chains for TITO training: energy, overdamped Langevin dynamics, on-device pool.

Public names (each module's ``__all__``): from ``chains`` ``ForceField``, ``ChainSystem``, ``make_chains``,
``native_structures``, ``random_sequences``, ``energy``, ``forces``, ``langevin_step``,
``radius_of_gyration``, ``end_to_end``, ``AMINO_ACIDS``, ``BOLTZMANN_KJ``, ``HYDROPHOBICITY``; from ``pool``
``ChainPool`` (pairs (x_t, x_{t+lag}) from chains advanced while training), ``centre``, ``random_rotations``.
"""

from datagen.md import chains, pool
from datagen.md.chains import *  # noqa: F403  (exactly chains.__all__)
from datagen.md.pool import *  # noqa: F403  (exactly pool.__all__)

# one list of public names per module; the package re-exports them all
__all__ = [*chains.__all__, *pool.__all__]
