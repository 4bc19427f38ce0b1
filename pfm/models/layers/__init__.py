"""Reusable layers of the models.

Modules: ``attention`` (attention backends: sdpa, math, xformers), ``p3d`` (blocks of the P3D architecture
used by Tadpole).
"""
