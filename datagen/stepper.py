"""``make_stepper``: the public way to build a time stepper for a named PDE family."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from datagen.pdes import check_limits, get_pde
from datagen.pdes._base import PDE
from datagen.spectral import ETDRKStepper, Grid, spectral_ops

__all__ = ["as_coefficient", "build_stepper", "make_stepper"]


def as_coefficient(value: float | Sequence[float] | torch.Tensor, grid: Grid) -> torch.Tensor:
    """A scalar or per-sample ``(batch,)`` coefficient as a float32 tensor ``(batch|1, 1, 1, ...)``."""
    t = torch.as_tensor(value, dtype=torch.float32, device=grid.device)
    if t.ndim > 1:
        raise ValueError(f"Coefficient of shape {tuple(t.shape)}; expected a scalar or a (batch,) vector.")
    return t.reshape(-1, *([1] * (1 + grid.num_spatial_dims)))


def build_stepper(
    pde: PDE, grid: Grid, values: Mapping[str, torch.Tensor], dt: float, order: int
) -> ETDRKStepper:
    """An :class:`ETDRKStepper` for ``pde`` with coefficient tensors ``values`` (``(batch|1, 1, 1, ...)``)."""
    ops = spectral_ops(grid, pde.dealias)
    linear = pde.linear(ops, **values)
    nonlinear = None if pde.is_linear else pde.nonlinear(ops, **values)
    return ETDRKStepper.from_linear(grid, linear, nonlinear, dt=dt, order=order, num_kept=ops.num_kept)


def make_stepper(
    name: str,
    *,
    dim: int,
    n: int,
    length: float = 1.0,
    dt: float,
    order: int = 4,
    device: torch.device | str = "cpu",
    check: bool = True,
    **coefficients: float | Sequence[float] | torch.Tensor,
) -> ETDRKStepper:
    """A callable advancing ``(batch, channels, *[n] * dim)`` tensors of PDE ``name`` by one ``dt``.

    ``dim`` is the number of spatial dimensions, ``n`` the points per axis and ``length`` the box size.
    Coefficients default to the family's and follow exponax's names; each may be a scalar or a ``(batch,)``
    tensor of per-sample values. ``order`` picks ETDRK1-4. With ``check`` (default) a coefficient or dt
    outside the family's stable/resolvable range raises ``ValueError`` naming the value, limit and fix.
    ``stepper(u, num_steps)`` advances several steps with one FFT pair around them.
    """
    pde = get_pde(name)
    unknown = sorted(set(coefficients) - set(pde.coefficients))
    if unknown:
        raise ValueError(
            f"Unknown coefficient(s) {unknown} for PDE {name!r}; expected a subset of "
            f"{sorted(pde.coefficients)}."
        )
    if not dt > 0:
        raise ValueError(f"dt={dt}; expected a positive time step.")
    grid = Grid(num_spatial_dims=dim, n=n, length=length, device=torch.device(device))
    values = {k: as_coefficient(coefficients.get(k, v), grid) for k, v in pde.coefficients.items()}
    if dim not in pde.supported_dims:
        raise ValueError(f"PDE {name!r} is defined for dim in {list(pde.supported_dims)}, got dim={dim}.")
    if check:
        ranges = {k: (float(v.min()), float(v.max())) for k, v in values.items()}
        check_limits(pde, grid, dt, order, ranges)
    return build_stepper(pde, grid, values, dt, order)
