"""``make_stepper``: the public way to build a time stepper for a named PDE family."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence

import torch

from datagen.pdes import check_limits, get_pde
from datagen.pdes._base import PDE
from datagen.spectral import ETDRKStepper, Grid, as_coefficient, spectral_ops

# as_coefficient (defined in datagen.spectral) stays importable from here, where make_stepper's callers look
__all__ = ["CheckedStepper", "as_coefficient", "build_stepper", "make_stepper"]


class CheckedStepper(ETDRKStepper):
    """An :class:`ETDRKStepper` that checks the limits depending on the state's size on its first call.

    ``check(amplitude)`` raises ``ValueError`` when the state's max |u| breaks a limit (cell Reynolds number,
    CFL, reaction stiffness); it runs once, on the first state that passes it, and costs one reduction.
    """

    check: Callable[[float], None] | None = None

    def _check_state(self, u: torch.Tensor) -> None:
        if self.check is None:
            return
        amplitude = float(u.detach().abs().amax())
        if not math.isfinite(amplitude):
            raise ValueError(
                f"The initial state holds NaN or inf (max |u| = {amplitude}); expected a finite field. "
                "Fix: check how the state was made (e.g. a division by a zero standard deviation)."
            )
        self.check(amplitude)
        self.check = None

    def __call__(self, u: torch.Tensor, num_steps: int = 1) -> torch.Tensor:
        """Advance a real field ``(batch, channels, *grid)`` by ``num_steps * dt`` (checked on the first call)."""
        self._check_state(u)
        return super().__call__(u, num_steps)

    def step_fourier(self, u_hat: torch.Tensor, num_steps: int = 1) -> torch.Tensor:
        """``num_steps`` steps on Fourier coefficients ``(batch, channels, *fourier_shape)``."""
        if self.check is not None:
            self._check_state(self.grid.ifft(u_hat))
        return super().step_fourier(u_hat, num_steps)


def build_stepper(
    pde: PDE,
    grid: Grid,
    values: Mapping[str, torch.Tensor],
    dt: float,
    order: int,
    cls: type[ETDRKStepper] = ETDRKStepper,
) -> ETDRKStepper:
    """A ``cls`` stepper for ``pde`` with coefficient tensors ``values`` (``(batch|1, 1, 1, ...)``)."""
    ops = spectral_ops(grid, pde.dealias)
    linear = pde.linear(ops, **values)
    nonlinear = None if pde.is_linear else pde.nonlinear(ops, **values)
    return cls.from_linear(grid, linear, nonlinear, dt=dt, order=order, num_kept=ops.num_kept)


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
    max_amplitude: float | None = None,
    **coefficients: float | Sequence[float] | torch.Tensor,
) -> ETDRKStepper:
    """A callable advancing ``(batch, channels, *[n] * dim)`` tensors of PDE ``name`` by one ``dt``.

    ``dim`` is the number of spatial dimensions, ``n`` the points per axis and ``length`` the box size.
    Coefficients default to the family's and follow exponax's names; each may be a scalar or a ``(batch,)``
    tensor of per-sample values. ``order`` picks ETDRK1-4. With ``check`` (default) a coefficient or dt
    outside the family's stable/resolvable range raises ``ValueError`` naming the value, limit and fix.
    Limits that depend on the size of the state (cell Reynolds number, CFL, reaction stiffness) use the
    actual state: its max |u| on the first call (``max_amplitude=None``, the default), or ``max_amplitude``
    when given, checked here. ``stepper(u, num_steps)`` advances several steps with one FFT pair around them.
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
    if not check:
        return build_stepper(pde, grid, values, dt, order)
    ranges = {k: (float(v.min()), float(v.max())) for k, v in values.items()}
    if max_amplitude is not None:
        if not max_amplitude >= 0:
            raise ValueError(f"max_amplitude={max_amplitude}; expected the largest |u| of the states, >= 0.")
        check_limits(pde, grid, dt, order, ranges, amplitude=max_amplitude, amplitude_source="max_amplitude")
        return build_stepper(pde, grid, values, dt, order)
    # now what holds for any state (a zero state exercises no amplitude-dependent limit), the rest on the
    # first call: a bound assumed for every state would refuse small states that run fine
    check_limits(pde, grid, dt, order, ranges, amplitude=0.0, amplitude_source="any state")
    stepper = build_stepper(pde, grid, values, dt, order, cls=CheckedStepper)
    stepper.check = functools.partial(
        check_limits,
        pde,
        grid,
        dt,
        order,
        ranges,
        amplitude_source="of the state on the first step; a smaller state also passes",
    )
    return stepper
