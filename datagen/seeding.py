"""Random streams derived from named integers, so that any draw can be reproduced from its coordinates."""

from __future__ import annotations

import hashlib

import torch

__all__ = ["derive_seed", "generator", "validation_seed"]


def derive_seed(*keys: int | str) -> int:
    """A 63-bit seed that depends on every key and on their order (e.g. seed, pool_index, step, purpose)."""
    digest = hashlib.blake2b(repr(keys).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def validation_seed(seed: int) -> int:
    """The seed of a run's validation data: derived from the run's ``seed`` by name, so its streams are not the
    training streams (every data module that draws its own validation set uses this one rule)."""
    return derive_seed(seed, "validation")


def generator(*keys: int | str, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with :func:`derive_seed` of ``keys``."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(*keys))
    return g
