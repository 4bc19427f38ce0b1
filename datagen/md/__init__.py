"""Coarse-grained C-alpha bead chains for TITO training: energy, overdamped Langevin dynamics, on-device pool.

Public names: ``ForceField``, ``ChainSystem``, ``make_chains``, ``native_structures``, ``random_sequences``,
``energy``, ``forces``, ``langevin_step``, ``radius_of_gyration``, ``end_to_end``, ``AMINO_ACIDS``,
``BOLTZMANN_KJ``, ``ChainPool`` (pairs (x_t, x_{t+lag}) from chains advanced while training), ``centre``,
``random_rotations``.
"""

from datagen.md.chains import (
    AMINO_ACIDS,
    BOLTZMANN_KJ,
    ChainSystem,
    ForceField,
    end_to_end,
    energy,
    forces,
    langevin_step,
    make_chains,
    native_structures,
    radius_of_gyration,
    random_sequences,
)
from datagen.md.pool import ChainPool, centre, random_rotations

__all__ = [
    "AMINO_ACIDS",
    "BOLTZMANN_KJ",
    "ChainPool",
    "ChainSystem",
    "ForceField",
    "centre",
    "end_to_end",
    "energy",
    "forces",
    "langevin_step",
    "make_chains",
    "native_structures",
    "radius_of_gyration",
    "random_rotations",
    "random_sequences",
]
