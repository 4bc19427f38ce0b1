"""The contract every PDE family module fulfils, stability/resolution limits, and the registry by name."""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch

from datagen.spectral import Grid, SpectralOps

__all__ = ["PDE", "Limit", "check_limits", "get_pde", "known_pdes", "register"]

_REGISTRY: dict[str, type[PDE]] = {}

# Largest |rate * dt| (real axis) and |speed * k_max * dt| (imaginary axis) that the explicit part of each
# ETDRK order tolerates, with a safety margin: ETDRK4's stability region reaches about 2.8 on both axes,
# ETDRK1/2 much less on the imaginary axis.
MAX_RATE_DT = {1: 1.0, 2: 1.0, 3: 2.0, 4: 2.0}
MAX_CFL = {1: 0.3, 2: 0.5, 3: 1.0, 4: 1.0}
# A viscous/diffusive layer must span a few cells: speed * dx / nu (cell Reynolds number) at most this.
MAX_CELL_REYNOLDS = 10.0


@dataclass(frozen=True)
class Limit:
    """One checked bound: ``quantity`` evaluates to ``value`` and must stay ``<= bound`` (or ``>=``)."""

    quantity: str
    value: float
    bound: float
    fix: str
    upper: bool = True

    @property
    def violated(self) -> bool:
        """Whether ``value`` is on the wrong side of ``bound``."""
        return self.value > self.bound if self.upper else self.value < self.bound


class PDE:
    """A PDE family ``u_t = L u + N(u)`` on a periodic box.

    Subclasses set ``name`` (the one name used by configs, shards and the CLI), ``coefficients`` (defaults,
    named as in exponax's stepper of the same family) and implement :meth:`linear` and, unless the PDE is
    linear, :meth:`nonlinear`. Coefficients arrive as float32 tensors shaped ``(batch|1, 1, 1, ...)`` so that
    every sample may carry its own values. :meth:`limits` states the stable/resolvable range of dt and
    coefficients; :meth:`admissible` maps a normalized random field to a valid state (e.g. divergence-free).
    """

    name: ClassVar[str]
    coefficients: ClassVar[dict[str, float]]
    is_linear: ClassVar[bool] = False
    #: Spatial dimensions the family is defined in.
    supported_dims: ClassVar[tuple[int, ...]] = (1, 2, 3)
    #: Channels are vector components (rotated by flips/permutations) rather than scalars.
    is_vector: ClassVar[bool] = False
    #: Largest |u| the limits assume when no state is at hand: the pool checks its coefficient ranges with it
    #: before any trajectory exists (its initial conditions have unit standard deviation, so |u| reaches about
    #: 3). :func:`~datagen.make_stepper` checks against the actual state's max |u| on its first step instead,
    #: or against its ``max_amplitude=`` argument. :meth:`with_amplitude` makes a copy assuming another value.
    amplitude: ClassVar[float] = 3.0
    #: Fraction of modes kept before evaluating the nonlinearity (2/3 for quadratic, 1/2 for cubic terms).
    dealias: ClassVar[float] = 2.0 / 3.0

    def with_amplitude(self, amplitude: float) -> PDE:
        """A copy of this family whose :meth:`limits` assume states with max |u| = ``amplitude``."""
        out = copy.copy(self)
        out.amplitude = float(amplitude)  # an instance value shadows the class default
        return out

    def num_channels(self, num_spatial_dims: int) -> int:
        """Number of field channels (1 for scalar PDEs, ``num_spatial_dims`` for vector ones)."""
        return num_spatial_dims if self.is_vector else 1

    def linear(self, ops: SpectralOps, **coefficients: torch.Tensor) -> torch.Tensor:
        """Fourier symbol of ``L``, broadcastable to ``(batch, channels, *fourier_shape)``."""
        raise NotImplementedError

    def nonlinear(
        self, ops: SpectralOps, **coefficients: torch.Tensor
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """Returns ``u_slab -> FFT(N(u))`` on the dealiased slab ``(batch, channels, ..., ops.num_kept)``.

        See :class:`~datagen.spectral.SpectralOps`; unused when ``is_linear``. The function must read the
        coefficient tensors it is given when it is *called*, not values derived from them at build time: a
        pool writes new per-row coefficients into those tensors in place and keeps the function (and its CUDA
        graph). A derived tensor too costly to recompute per call goes in the function's ``buffers`` dict
        (name -> tensor with one row per sample), which the pool refreshes row by row (see
        ``datagen/nonlinear.py``). ``tests/test_pool_graphs.py`` checks every registered family.
        """
        raise NotImplementedError

    def limits(self, grid: Grid, dt: float, order: int, **coefficients: float) -> list[Limit]:
        """Bounds on dt and coefficients for one set of scalar coefficient values (none by default)."""
        return []

    def admissible(self, u: torch.Tensor, ops: SpectralOps) -> torch.Tensor:
        """Map a normalized random field ``(batch, channels, *grid)`` to a valid initial state."""
        return u


# Shared limit builders, so that every family words its errors the same way.
def nonnegative(name: str, value: float, why: str = "a negative value makes the problem ill-posed") -> Limit:
    """``value >= 0``."""
    return Limit(f"{name} ({why})", value, 0.0, f"use {name} >= 0", upper=False)


def cfl(speed: float, grid: Grid, dt: float, order: int, what: str = "advection") -> Limit:
    """Transport CFL number ``speed * dt / dx`` within the ETDRK order's bound."""
    return Limit(
        f"{what} CFL number |speed| * dt / dx with speed={speed:.3g}, dx={grid.dx:.3g}",
        abs(speed) * dt / grid.dx,
        MAX_CFL[order],
        f"use dt <= {MAX_CFL[order] * grid.dx / max(abs(speed), 1e-30):.3g}, or fewer grid points",
    )


def stiffness(rate: float, dt: float, order: int, what: str) -> Limit:
    """Explicitly treated rate times dt within the ETDRK order's real-axis bound."""
    return Limit(
        f"{what} stiffness |rate| * dt with rate={rate:.3g}",
        abs(rate) * dt,
        MAX_RATE_DT[order],
        f"use dt <= {MAX_RATE_DT[order] / max(abs(rate), 1e-30):.3g}, or a smaller coefficient",
    )


def cell_reynolds(speed: float, diffusivity: float, grid: Grid) -> Limit:
    """Steepest resolvable gradients: ``speed * dx / diffusivity`` at most :data:`MAX_CELL_REYNOLDS`."""
    value = abs(speed) * grid.dx / max(diffusivity, 1e-30)
    need = abs(speed) * grid.dx / MAX_CELL_REYNOLDS
    return Limit(
        f"cell Reynolds number |speed| * dx / diffusivity with speed={speed:.3g}, dx={grid.dx:.3g}, "
        f"diffusivity={diffusivity:.3g} (fronts thinner than the grid)",
        value,
        MAX_CELL_REYNOLDS,
        f"use diffusivity >= {need:.3g} or n >= {int(grid.n * value / MAX_CELL_REYNOLDS) + 2}",
    )


def nonpositive(name: str, value: float, why: str) -> Limit:
    """``value <= 0``."""
    return Limit(f"{name} ({why})", value, 0.0, f"use {name} <= 0")


def positive(name: str, value: float, why: str) -> Limit:
    """``value > 0`` (at least 1e-12)."""
    return Limit(f"{name} ({why})", value, 1e-12, f"use {name} > 0", upper=False)


def resolved_width(width: str, coefficient: str, value: float, rate: float, grid: Grid) -> Limit:
    """A length scale ``sqrt(value / rate)`` (interface, front, pattern) spans at least half a grid cell.

    ``width`` names it in the message (``"front width sqrt(diffusivity / reactivity)"``), ``coefficient``
    is what the fix raises. A negative ``value`` reads as width 0 here: the family's ``nonnegative`` limit of
    it, listed before this one, is the one reported (naming the value and ``>= 0``), not a math domain error.
    """
    return Limit(
        f"{width} / dx",
        math.sqrt(max(value, 0.0) / max(rate, 1e-30)) / grid.dx,
        0.5,
        f"use {coefficient} >= {rate * (0.5 * grid.dx) ** 2:.3g} or more grid points",
        upper=False,
    )


def forcing_mode(injection_mode: float, grid: Grid) -> list[Limit]:
    """The forcing mode of the Kolmogorov families: at least 1, and resolved (at most n / 6)."""
    mode = round(injection_mode)
    return [
        Limit(
            "injection_mode", mode, grid.n // 6, f"use injection_mode <= {grid.n // 6} or more grid points"
        ),
        Limit("injection_mode", mode, 1, "use injection_mode >= 1", upper=False),
    ]


def check_limits(
    pde: PDE,
    grid: Grid,
    dt: float,
    order: int,
    ranges: Mapping[str, tuple[float, float]],
    amplitude: float | None = None,
    amplitude_source: str = "given",
) -> None:
    """Raise ``ValueError`` if any corner of the coefficient ``ranges`` (name -> (low, high)) breaks a limit.

    Limits that depend on the state's size (cell Reynolds number, CFL, reaction stiffness) assume max |u| =
    ``amplitude``, or the family's :attr:`PDE.amplitude` when None; ``amplitude_source`` says where the value
    came from, for the error message.
    """
    if amplitude is not None:
        pde = pde.with_amplitude(amplitude)
    state = "" if not amplitude else f", state amplitude max|u|={amplitude:.3g} ({amplitude_source})"
    if grid.num_spatial_dims not in pde.supported_dims:
        raise ValueError(
            f"PDE {pde.name!r} is defined for num_spatial_dims in {list(pde.supported_dims)}, "
            f"got {grid.num_spatial_dims}."
        )
    names = list(pde.coefficients)
    corners = itertools.product(*[sorted({float(ranges[k][0]), float(ranges[k][1])}) for k in names])
    for corner in corners:
        values = dict(zip(names, corner, strict=True))
        for limit in pde.limits(grid, dt, order, **values):
            if limit.violated:
                relation = "above the limit" if limit.upper else "below the limit"
                raise ValueError(
                    f"PDE {pde.name!r} with dt={dt:g}, n={grid.n}, length={grid.length:g}, "
                    f"coefficients { {k: float(f'{v:.6g}') for k, v in values.items()} }{state}: {limit.quantity} = {limit.value:.4g} is {relation} "
                    f"{limit.bound:.4g}. Fix: {limit.fix}."
                )


def register(cls: type[PDE]) -> type[PDE]:
    """Class decorator adding a PDE family to the registry under ``cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"PDE name {cls.name!r} is registered twice.")
    _REGISTRY[cls.name] = cls
    return cls


def known_pdes(num_spatial_dims: int | None = None) -> list[str]:
    """Sorted names of the registered PDE families (those defined in ``num_spatial_dims``, when given)."""
    return sorted(k for k, v in _REGISTRY.items() if num_spatial_dims in (None, *v.supported_dims))


def get_pde(name: str) -> PDE:
    """An instance of the PDE family ``name``; unknown names list the known ones."""
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise ValueError(
            f"Unknown PDE {name!r}. Known PDEs: {', '.join(known_pdes())}. "
            "To add one, write a module in datagen/pdes/ and a config in conf/data/pde/ (see docs/new_pde.md)."
        ) from None
