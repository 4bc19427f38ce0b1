"""Pseudo-spectral building blocks on periodic boxes: grids, cached operators, dealiasing and ETDRK stepping.

Everything here works in float32 / complex64 on whatever device the fields live on, with real FFTs over the
trailing ``num_spatial_dims`` axes of tensors shaped ``(batch, channels, *grid)``.

The exponential time-differencing Runge-Kutta (ETDRK) coefficients are evaluated with the contour-integral
form of Kassam & Trefethen (2005): the phi-functions are averaged over points on a circle around each
``dt * L`` so that they stay accurate where ``dt * L`` is close to zero (where the closed forms cancel
catastrophically). The circle is sampled fully, not as a half circle, so complex (dispersive or advective)
symbols are handled as well as real (diffusive) ones.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from datagen import fused

__all__ = ["ETDRKStepper", "Grid", "SpectralOps", "as_coefficient", "etdrk_coefficients", "spectral_ops"]


@dataclass(frozen=True)
class Grid:
    """A periodic box ``[0, length)^num_spatial_dims`` with ``n`` points per axis.

    Wavenumber tensors are shaped to broadcast against rfft output of ``(batch, channels, *grid)`` fields,
    i.e. ``(1, 1, n, ..., n // 2 + 1)``.
    """

    num_spatial_dims: int
    n: int
    length: float
    device: torch.device = torch.device("cpu")  # noqa: RUF009  (immutable)

    def __post_init__(self) -> None:
        if self.num_spatial_dims not in (1, 2, 3):
            raise ValueError(f"num_spatial_dims={self.num_spatial_dims}; expected 1, 2 or 3.")
        if self.n < 4 or self.n % 2:
            raise ValueError(f"n={self.n} grid points per axis; expected an even number >= 4.")
        if not self.length > 0:
            raise ValueError(f"length={self.length}; expected a positive domain extent.")

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape of a field on this grid, without batch and channel axes."""
        return (self.n,) * self.num_spatial_dims

    @property
    def fourier_shape(self) -> tuple[int, ...]:
        """Shape of the rfft of a field on this grid."""
        return (self.n,) * (self.num_spatial_dims - 1) + (self.n // 2 + 1,)

    @property
    def dx(self) -> float:
        """Grid spacing."""
        return self.length / self.n

    @property
    def spatial_axes(self) -> tuple[int, ...]:
        """Tensor dims of the spatial axes of ``(batch, channels, *grid)``: ``(-d, ..., -1)``."""
        return tuple(range(-self.num_spatial_dims, 0))

    def max_wavenumber(self, dealias: float = 2.0 / 3.0) -> float:
        """Largest angular wavenumber per axis kept by the dealiasing rule."""
        return 2 * math.pi / self.length * dealias * (self.n // 2)

    def coordinates(self) -> list[torch.Tensor]:
        """Cell-left coordinates per axis, each broadcastable to ``(1, 1, *grid)``."""
        x = torch.arange(self.n, device=self.device, dtype=torch.float32) * self.dx
        out = []
        for axis in range(self.num_spatial_dims):
            shape = [1, 1] + [1] * self.num_spatial_dims
            shape[2 + axis] = self.n
            out.append(x.reshape(shape))
        return out

    def wavenumbers(self) -> list[torch.Tensor]:
        """Angular wavenumbers ``k_j`` per axis, each broadcastable to ``(1, 1, *fourier_shape)``."""
        scale = 2 * math.pi / self.length
        full = torch.fft.fftfreq(self.n, d=1.0 / self.n, device=self.device) * scale
        half = torch.fft.rfftfreq(self.n, d=1.0 / self.n, device=self.device) * scale
        out = []
        for axis in range(self.num_spatial_dims):
            k = half if axis == self.num_spatial_dims - 1 else full
            shape = [1, 1] + [1] * self.num_spatial_dims
            shape[2 + axis] = k.numel()
            out.append(k.reshape(shape).to(torch.float32))
        return out

    def laplacian_symbol(self) -> torch.Tensor:
        """``-|k|^2``, the Fourier symbol of the Laplacian, shape ``(1, 1, *fourier_shape)``."""
        return -sum(k**2 for k in self.wavenumbers())

    def derivative_operators(self) -> list[torch.Tensor]:
        """``i k_j`` per axis: Fourier symbols of the first derivatives (Nyquist mode zeroed for odd orders)."""
        ops = []
        for axis, k in enumerate(self.wavenumbers()):
            k = k.clone()
            # The Nyquist mode of an odd derivative has no real counterpart; zeroing it keeps results real.
            index = [slice(None)] * k.ndim
            index[2 + axis] = self.n // 2
            k[tuple(index)] = 0.0
            ops.append(1j * k)
        return ops

    def dealias_mask(self, fraction: float = 2.0 / 3.0) -> torch.Tensor:
        """Boolean mask keeping modes with ``|m_j| < fraction * n / 2`` on every axis (the 2/3 rule)."""
        cutoff = fraction * (self.n // 2)
        full = torch.fft.fftfreq(self.n, d=1.0 / self.n, device=self.device).abs()
        half = torch.fft.rfftfreq(self.n, d=1.0 / self.n, device=self.device)
        mask = torch.ones((1, 1, *self.fourier_shape), dtype=torch.bool, device=self.device)
        for axis in range(self.num_spatial_dims):
            m = half if axis == self.num_spatial_dims - 1 else full
            shape = [1, 1] + [1] * self.num_spatial_dims
            shape[2 + axis] = m.numel()
            mask = mask & (m.reshape(shape) < cutoff)
        return mask

    def fft(self, u: torch.Tensor) -> torch.Tensor:
        """Real FFT over the spatial axes of ``(batch, channels, *grid)``."""
        return torch.fft.rfftn(u, dim=self.spatial_axes)

    def ifft(self, u_hat: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`fft`: ``(batch, channels, *fourier_shape)`` to ``(batch, channels, *grid)``.

        Complex inverse transforms over the leading axes, then one real inverse over the last: on CPU this
        is 2-3x faster than ``irfftn``, whose multi-axis real path copies its input several times.
        """
        if self.num_spatial_dims == 1:
            return torch.fft.irfft(u_hat, n=self.n, dim=-1)
        return torch.fft.irfft(torch.fft.ifftn(u_hat, dim=self.spatial_axes[:-1]), n=self.n, dim=-1)


def as_coefficient(value: float | Sequence[float] | torch.Tensor, grid: Grid) -> torch.Tensor:
    """A scalar or per-sample ``(batch,)`` value as a float32 tensor ``(batch|1, 1, 1, ...)`` on the grid."""
    t = torch.as_tensor(value, dtype=torch.float32, device=grid.device)
    if t.ndim > 1:
        raise ValueError(f"Coefficient of shape {tuple(t.shape)}; expected a scalar or a (batch,) vector.")
    return t.reshape(-1, *([1] * (1 + grid.num_spatial_dims)))


@dataclass(frozen=True)
class SpectralOps:
    """Operators of one grid, built once and shared by every PDE on it (see :func:`spectral_ops`).

    Full-spectrum tensors (for linear symbols), each broadcastable to ``(batch, channels, *fourier_shape)``:
    ``k`` the wavenumbers ``(1, d, ...)`` (Nyquist kept, for even derivatives), ``ik`` the first-derivative
    symbols ``(1, d, ...)`` (Nyquist zeroed), ``mask`` the float dealiasing mask ``(1, 1, ...)``,
    ``laplacian`` ``-|k|^2`` and ``inverse_laplacian`` its inverse with the mean mode set to 0.

    Nonlinear terms work on the *slab*: the first ``num_kept`` modes of the last Fourier axis, the only
    ones the dealiasing mask keeps there. The ``*_slab`` tensors are the same operators cut to it
    (``ik_masked_slab`` differentiates and dealiases in one multiply). Since dealiasing zeroes the nonlinear
    term outside the mask (as in exponax: inputs and outputs are masked), the rest of the spectrum evolves
    by the linear part alone, and all nonlinear FFT work runs on 2/3 (or 1/2) of the last axis.
    """

    grid: Grid
    num_kept: int
    k: torch.Tensor
    ik: torch.Tensor
    mask: torch.Tensor
    laplacian: torch.Tensor
    inverse_laplacian: torch.Tensor
    ik_slab: torch.Tensor
    ik_masked_slab: torch.Tensor
    mask_slab: torch.Tensor
    laplacian_slab: torch.Tensor
    inverse_laplacian_slab: torch.Tensor

    def slab(self, u_hat: torch.Tensor) -> torch.Tensor:
        """The first ``num_kept`` modes of the last axis of ``(..., *fourier_shape)`` (a view)."""
        return u_hat[..., : self.num_kept]

    def ifft_slab(self, u_slab: torch.Tensor) -> torch.Tensor:
        """Real field ``(batch, channels, *grid)`` from a slab ``(batch, channels, ..., num_kept)``.

        Modes outside the slab are taken as zero. The complex transforms over the leading axes run on the
        slab only; one real inverse over the padded last axis finishes (2-3x faster on CPU than
        ``irfftn``, whose multi-axis real path copies its input several times).
        """
        grid = self.grid
        if grid.num_spatial_dims > 1:
            u_slab = torch.fft.ifftn(u_slab, dim=grid.spatial_axes[:-1])
        padded = torch.nn.functional.pad(u_slab, (0, grid.fourier_shape[-1] - u_slab.shape[-1]))
        return torch.fft.irfft(padded, n=grid.n, dim=-1)

    def fft_slab(self, u: torch.Tensor) -> torch.Tensor:
        """Dealiased slab ``(batch, channels, ..., num_kept)`` of the real FFT of ``(batch, channels, *grid)``."""
        grid = self.grid
        u_hat = torch.fft.rfft(u, dim=-1)[..., : self.num_kept]
        if grid.num_spatial_dims > 1:
            u_hat = torch.fft.fftn(u_hat, dim=grid.spatial_axes[:-1])
        return u_hat.mul_(self.mask_slab)


@functools.lru_cache(maxsize=32)
def spectral_ops(grid: Grid, dealias: float = 2.0 / 3.0) -> SpectralOps:
    """The cached :class:`SpectralOps` of ``grid`` (computed once per grid, device and dealias fraction)."""
    shape = (1, 1, *grid.fourier_shape)
    ik = torch.cat([op.expand(shape) for op in grid.derivative_operators()], dim=1).to(torch.complex64)
    mask = grid.dealias_mask(dealias).to(torch.float32)
    laplacian = grid.laplacian_symbol()
    safe = torch.where(laplacian == 0, torch.ones_like(laplacian), laplacian)
    inverse = torch.where(laplacian == 0, torch.zeros_like(laplacian), 1.0 / safe)
    k = torch.cat([kj.expand(shape) for kj in grid.wavenumbers()], dim=1)
    num_kept = int(mask[(0, 0, *([0] * (grid.num_spatial_dims - 1)))].sum())

    def cut(t: torch.Tensor) -> torch.Tensor:
        return t[..., :num_kept].contiguous()

    return SpectralOps(
        grid,
        num_kept,
        k,
        ik,
        mask,
        laplacian,
        inverse,
        cut(ik),
        cut(ik * mask),
        cut(mask),
        cut(laplacian),
        cut(inverse),
    )


def etdrk_coefficients(
    linear: torch.Tensor,
    dt: float,
    order: int,
    num_circle_points: int = 32,
    radius: float = 1.0,
    double: bool = False,
) -> dict[str, torch.Tensor]:
    """ETDRK coefficients for the diagonal linear operator ``linear`` (a Fourier symbol) and step ``dt``.

    The phi-functions are averaged over ``num_circle_points`` on a circle of ``radius`` around ``dt * L``
    (contour-integral form), in complex128, and returned as tensors of ``linear``'s shape: complex64, or
    float32 when the symbol is real (purely diffusive/reactive), which halves the cost of every multiply.
    ``double`` keeps float64/complex128 (for convergence studies).
    """
    if order not in (1, 2, 3, 4):
        raise ValueError(f"ETDRK order={order}; expected 1, 2, 3 or 4.")
    real = not torch.is_complex(linear) or bool((linear.imag == 0).all())
    hl = (dt * linear).to(torch.complex128)
    theta = torch.arange(num_circle_points, dtype=torch.float64, device=hl.device) + 0.5
    roots = radius * torch.exp(2j * math.pi * theta / num_circle_points)
    lr = hl.unsqueeze(-1) + roots  # (..., M)

    def mean(values: torch.Tensor) -> torch.Tensor:
        return values.mean(dim=-1)

    exp_lr = torch.exp(lr)
    c: dict[str, torch.Tensor] = {"E": torch.exp(hl)}
    if order == 1:
        c["phi1"] = dt * mean((exp_lr - 1) / lr)
    elif order == 2:
        c["phi1"] = dt * mean((exp_lr - 1) / lr)
        c["phi2"] = dt * mean((exp_lr - 1 - lr) / lr**2)
    else:
        # ETD3RK and ETDRK4 of Cox & Matthews share these weights.
        exp_half = torch.exp(lr / 2)
        c["E2"] = torch.exp(hl / 2)
        c["Q"] = dt * mean((exp_half - 1) / lr)
        c["f1"] = dt * mean((-4 - lr + exp_lr * (4 - 3 * lr + lr**2)) / lr**3)
        c["f2"] = dt * mean((2 + lr + exp_lr * (-2 + lr)) / lr**3)
        c["f3"] = dt * mean((-4 - 3 * lr - lr**2 + exp_lr * (4 - lr)) / lr**3)
        if order == 3:
            c["phi1"] = dt * mean((exp_lr - 1) / lr)
    if real:
        return {name: value.real.to(torch.float64 if double else torch.float32) for name, value in c.items()}
    return {name: value.to(torch.complex128 if double else torch.complex64) for name, value in c.items()}


NonlinearFn = Callable[[torch.Tensor], torch.Tensor]


class ETDRKStepper:
    """Advances ``u_t = L u + N(u)`` by one ``dt`` with ETDRK of order 1-4 in Fourier space.

    ``coefficients`` are the ETDRK weights of :func:`etdrk_coefficients`, ``(batch|1, channels|1,
    *fourier_shape)`` (a leading batch axis carries per-sample coefficients). ``nonlinear`` maps the slab
    ``u_hat[..., :num_kept]`` to the dealiased slab of ``FFT(N(u))`` (see :class:`SpectralOps`); modes
    beyond ``num_kept`` on the last axis then evolve by ``E`` alone. The weights are stored that way too:
    ``weights`` holds contiguous slab copies (what every step reads) and ``e_rest`` the rest of ``E``.
    ``None`` for ``nonlinear`` means a purely linear PDE, stepped exactly (one multiply per step).
    ``fuse=True`` (opt-in, also settable later as ``stepper.fuse``) runs each stage's element-wise
    arithmetic as one ``torch.compile``d kernel (:mod:`datagen.fused`): the same numerics to float32
    round-off, one compile per shape on first use; it changes nothing for a linear PDE.
    """

    _fuse: bool = False  # the class default, so that steppers made by __new__ start plain

    def __init__(
        self,
        grid: Grid,
        coefficients: Mapping[str, torch.Tensor],
        nonlinear: NonlinearFn | None,
        dt: float,
        order: int = 4,
        num_kept: int | None = None,
        fuse: bool = False,
    ) -> None:
        self.grid = grid
        self.dt = dt
        self.order = 1 if nonlinear is None else order
        self.nonlinear = nonlinear
        self.num_kept = grid.fourier_shape[-1] if num_kept is None else num_kept
        if nonlinear is None:
            self.weights = {"E": coefficients["E"]}
            self.e_rest = None
        else:
            self.weights = {k: v[..., : self.num_kept].contiguous() for k, v in coefficients.items()}
            self.e_rest = coefficients["E"][..., self.num_kept :].contiguous()
        self.fuse = fuse

    @classmethod
    def from_linear(
        cls,
        grid: Grid,
        linear: torch.Tensor,
        nonlinear: NonlinearFn | None,
        dt: float,
        order: int = 4,
        num_kept: int | None = None,
        fuse: bool = False,
    ) -> ETDRKStepper:
        """A stepper from the Fourier symbol ``linear`` of ``L``, ``(batch|1, channels|1, *fourier_shape)``."""
        order = 1 if nonlinear is None else order
        linear = torch.broadcast_to(linear, (*linear.shape[:2], *grid.fourier_shape))
        return cls(grid, etdrk_coefficients(linear, dt, order), nonlinear, dt, order, num_kept, fuse)

    @property
    def fuse(self) -> bool:
        """Whether each ETDRK stage's element-wise arithmetic runs as one compiled kernel (datagen/fused.py)."""
        return self._fuse

    @fuse.setter
    def fuse(self, value: bool) -> None:
        if value:  # fail here, naming the fix, rather than on the first step
            fused.check_fusable(self.weights["E"].device)
        self._fuse = bool(value)

    @property
    def num_rows(self) -> int:
        """1 when all samples share the weights, else the number of samples with their own."""
        return self.weights["E"].shape[0]

    def tensors(self) -> list[torch.Tensor]:
        """Every weight tensor (for memory accounting)."""
        return [*self.weights.values(), *([] if self.e_rest is None else [self.e_rest])]

    def expand_rows(self, count: int) -> None:
        """Give each of ``count`` samples its own copy of the weights (before per-row updates)."""
        if self.num_rows == 1:
            self.weights = {k: v.expand(count, *v.shape[1:]).clone() for k, v in self.weights.items()}
            if self.e_rest is not None:
                self.e_rest = self.e_rest.expand(count, *self.e_rest.shape[1:]).clone()

    def set_rows(self, rows: list[int], linear: torch.Tensor) -> None:
        """Recompute the weights of samples ``rows`` from their symbols ``linear`` ``(len(rows), ...)``.

        One row at a time: vectorized complex kernels can round differently with the batch size, and a
        resumed pool recomputes these weights, so a row's weights must not depend on its neighbours.
        """
        k = self.num_kept
        for i, row in enumerate(rows):
            fresh = etdrk_coefficients(linear[i : i + 1], self.dt, self.order)
            for name, target in self.weights.items():
                target[row] = fresh[name][0, ..., : target.shape[-1]]
            if self.e_rest is not None:
                self.e_rest[row] = fresh["E"][0, ..., k:]

    def _step_slab(self, u: torch.Tensor) -> torch.Tensor:
        """One ETDRK step of the slab ``(batch, channels, ..., num_kept)``."""
        if self._fuse:
            return fused.fused_step_slab(self.weights, self.nonlinear, self.order, u)
        c = self.weights
        n = self.nonlinear
        nu = n(u)
        if self.order == 1:
            return c["E"] * u + c["phi1"] * nu
        if self.order == 2:
            a = c["E"] * u + c["phi1"] * nu
            return a.add_(c["phi2"] * (n(a) - nu))
        e2u = c["E2"] * u
        a = e2u + c["Q"] * nu
        na = n(a)
        if self.order == 3:
            b = c["E"] * u + c["phi1"] * (2 * na - nu)
            nb = n(b)
            out = c["E"] * u
            out += c["f1"] * nu
            out += c["f2"] * (4 * na)
            out += c["f3"] * nb
            return out
        b = e2u.add_(c["Q"] * na)  # e2u is not needed any more; reuse its memory
        nb = n(b)
        cc = c["E2"] * a
        cc += c["Q"] * (2 * nb - nu)
        nc = n(cc)
        out = c["E"] * u
        out += c["f1"] * nu
        out += c["f2"] * (2 * (na + nb))
        out += c["f3"] * nc
        return out

    def step_fourier(self, u_hat: torch.Tensor, num_steps: int = 1) -> torch.Tensor:
        """``num_steps`` steps on Fourier coefficients ``(batch, channels, *fourier_shape)``."""
        if self.nonlinear is None:
            e = self.weights["E"]
            for _ in range(num_steps):
                u_hat = e * u_hat
            return u_hat
        k = self.num_kept
        low, high = u_hat[..., :k], u_hat[..., k:]
        for _ in range(num_steps):
            low = self._step_slab(low)
            high = self.e_rest * high
        return torch.cat((low, high), dim=-1)

    def __call__(self, u: torch.Tensor, num_steps: int = 1) -> torch.Tensor:
        """Advance a real field ``(batch, channels, *grid)`` by ``num_steps * dt``."""
        return self.grid.ifft(self.step_fourier(self.grid.fft(u.to(torch.float32)), num_steps))

    def select(self, rows: torch.Tensor, nonlinear: NonlinearFn | None) -> ETDRKStepper:
        """A stepper for the samples ``rows`` only (per-sample weights indexed, shared ones kept)."""
        out = ETDRKStepper.__new__(ETDRKStepper)
        out.grid, out.dt, out.order, out.num_kept = self.grid, self.dt, self.order, self.num_kept
        out.nonlinear, out._fuse = nonlinear, self._fuse
        out.weights = {k: v[rows] if v.shape[0] > 1 else v for k, v in self.weights.items()}
        rest = self.e_rest
        out.e_rest = rest[rows] if rest is not None and rest.shape[0] > 1 else rest
        return out
