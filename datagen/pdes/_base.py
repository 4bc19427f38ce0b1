"""The contract every PDE family module fulfils, and the registry that finds them by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch

from datagen.spectral import Grid

__all__ = ["PDE", "get_pde", "known_pdes", "register"]

_REGISTRY: dict[str, type[PDE]] = {}


class PDE:
    """A PDE family ``u_t = L u + N(u)`` on a periodic box.

    Subclasses set ``name`` (the one name used by configs, shards and the CLI), ``coefficients`` (defaults,
    named as in exponax's stepper of the same family) and implement :meth:`linear` and, unless the PDE is
    linear, :meth:`nonlinear`. Coefficients arrive as tensors shaped ``(batch, 1, 1, ...)`` so that every
    sample may carry its own values.
    """

    name: ClassVar[str]
    coefficients: ClassVar[dict[str, float]]
    is_linear: ClassVar[bool] = False

    def num_channels(self, num_spatial_dims: int) -> int:
        """Number of field channels (1 for scalar PDEs)."""
        return 1

    def linear(self, grid: Grid, **coefficients: torch.Tensor) -> torch.Tensor:
        """Fourier symbol of ``L``, broadcastable to ``(batch, channels, *fourier_shape)``."""
        raise NotImplementedError

    def nonlinear(self, grid: Grid, **coefficients: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """Returns ``u_hat -> FFT(N(u))`` (dealiased); only called when ``is_linear`` is False."""
        raise NotImplementedError


def register(cls: type[PDE]) -> type[PDE]:
    """Class decorator adding a PDE family to the registry under ``cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"PDE name {cls.name!r} is registered twice.")
    _REGISTRY[cls.name] = cls
    return cls


def known_pdes() -> list[str]:
    """Sorted names of all registered PDE families."""
    return sorted(_REGISTRY)


def get_pde(name: str) -> PDE:
    """An instance of the PDE family ``name``; unknown names list the known ones."""
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise ValueError(
            f"Unknown PDE {name!r}. Known PDEs: {', '.join(known_pdes())}. "
            "To add one, write a module in datagen/pdes/ and a config in conf/data/pde/ (see README)."
        ) from None
