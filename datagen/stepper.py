"""``make_stepper``: the public way to build a time stepper for a named PDE family."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from datagen.pdes import get_pde
from datagen.spectral import ETDRKStepper, Grid

__all__ = ["as_coefficient", "make_stepper"]


def as_coefficient(value: float | Sequence[float] | torch.Tensor, grid: Grid) -> torch.Tensor:
    """A scalar or per-sample ``(batch,)`` coefficient as a float32 tensor ``(batch|1, 1, 1, ...)``."""
    t = torch.as_tensor(value, dtype=torch.float32, device=grid.device)
    if t.ndim > 1:
        raise ValueError(f"Coefficient of shape {tuple(t.shape)}; expected a scalar or a (batch,) vector.")
    return t.reshape(-1, *([1] * (1 + grid.num_spatial_dims)))


def make_stepper(
    name: str,
    *,
    dim: int,
    n: int,
    length: float = 1.0,
    dt: float,
    order: int = 4,
    device: torch.device | str = "cpu",
    **coefficients: float | Sequence[float] | torch.Tensor,
) -> ETDRKStepper:
    """A callable advancing ``(batch, channels, *[n] * dim)`` tensors of PDE ``name`` by one ``dt``.

    ``dim`` is the number of spatial dimensions, ``n`` the points per axis and ``length`` the box size.
    Coefficients default to the family's and follow exponax's names; each may be a scalar or a ``(batch,)``
    tensor of per-sample values. ``order`` picks ETDRK1-4.
    """
    pde = get_pde(name)
    unknown = sorted(set(coefficients) - set(pde.coefficients))
    if unknown:
        raise ValueError(
            f"Unknown coefficient(s) {unknown} for PDE {name!r}; expected a subset of "
            f"{sorted(pde.coefficients)}."
        )
    grid = Grid(num_spatial_dims=dim, n=n, length=length, device=torch.device(device))
    if not dt > 0:
        raise ValueError(f"dt={dt}; expected a positive time step.")
    values = {k: as_coefficient(coefficients.get(k, v), grid) for k, v in pde.coefficients.items()}
    linear = pde.linear(grid, **values)
    nonlinear = None if pde.is_linear else pde.nonlinear(grid, **values)
    return ETDRKStepper(grid, linear, nonlinear, dt=dt, order=order)
