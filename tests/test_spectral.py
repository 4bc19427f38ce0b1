"""Spectral solver against analytic solutions and a fine-dt reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import rounding_tolerance

from datagen import get_pde, make_stepper
from datagen.ic import gaussian_random_field
from datagen.spectral import ETDRKStepper, Grid, etdrk_coefficients, spectral_ops

# small FFTs and models on a shared 2-core machine: one torch thread (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


def _field(grid: Grid, seed: int = 0) -> torch.Tensor:
    return gaussian_random_field(
        grid, 2, powerlaw_exponent=4.0, generator=torch.Generator().manual_seed(seed)
    )


def _stepper_rounding(v: torch.Tensor, steps: int, num_points: int) -> dict[str, float]:
    """A float32 stepper's rounding: per step 4 stages, each an FFT pair (log2 of the points sums each)."""
    return rounding_tolerance(v, terms=steps * 4 * (2 * round(math.log2(num_points)) + 9))


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_diffusion_matches_exact_fourier_decay(dim: int) -> None:
    n, nu, dt, steps = 16, 0.01, 0.01, 10
    grid = Grid(dim, n, 1.0)
    u = _field(grid)
    v = make_stepper("diffusion", dim=dim, n=n, dt=dt, diffusivity=nu)(u, steps)
    # exact in float64 (ETDRK is exact in time for a linear equation): v differs by float32 rounding only
    decay = torch.exp(nu * grid.laplacian_symbol().double() * dt * steps)
    exact = grid.ifft(grid.fft(u.double()) * decay)
    torch.testing.assert_close(v.double(), exact, **_stepper_rounding(v, steps, n**dim))


def test_diffusion_of_a_single_mode() -> None:
    grid = Grid(1, 32, 2 * math.pi)
    u = torch.sin(3 * grid.coordinates()[0])
    v = make_stepper("diffusion", dim=1, n=32, length=2 * math.pi, dt=0.1, diffusivity=0.5)(u, 4)
    exact = u.double() * math.exp(-0.5 * 9 * 0.4)
    torch.testing.assert_close(v.double(), exact, **_stepper_rounding(v, 4, 32))


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_advection_is_an_exact_shift(dim: int) -> None:
    n, c = 16, 0.5
    dt = 1.0 / n / c / 4  # four steps move the field by exactly one cell along every axis
    grid = Grid(dim, n, 1.0)
    # A real field's Nyquist mode cannot move by a fraction of a cell, so the solver keeps it; band-limit u.
    u = grid.ifft(grid.fft(_field(grid)) * grid.dealias_mask(0.99))
    v = make_stepper("advection", dim=dim, n=n, dt=dt, velocity=c)(u, 4)
    shifted = torch.roll(u, shifts=(1,) * dim, dims=tuple(range(2, 2 + dim)))
    torch.testing.assert_close(v, shifted, **_stepper_rounding(v, 4, n**dim))


def _run_double(order: int, dt: float, u0: torch.Tensor, t_end: float) -> torch.Tensor:
    """KS in float64 (to isolate the time-discretisation error from float32 round-off)."""
    stepper = make_stepper(
        "kuramoto_sivashinsky", dim=1, n=64, length=12 * math.pi, dt=dt, order=order, check=False
    )
    pde = get_pde("kuramoto_sivashinsky")
    ops = spectral_ops(stepper.grid, pde.dealias)
    linear = pde.linear(ops, **{k: torch.tensor(v) for k, v in pde.coefficients.items()})
    weights = etdrk_coefficients(linear.double(), dt, order, double=True)
    stepper = ETDRKStepper(stepper.grid, weights, stepper.nonlinear, dt, order, stepper.num_kept)
    u_hat = torch.fft.rfft(u0)
    for _ in range(round(t_end / dt)):
        u_hat = stepper.step_fourier(u_hat)
    return torch.fft.irfft(u_hat, n=64)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_etdrk_converges_at_its_order_on_kuramoto_sivashinsky(order: int) -> None:
    """Fit the slope of log(error) against log(dt) with a fine-dt ETDRK4 reference (nonlinear problem)."""
    x = Grid(1, 64, 12 * math.pi).coordinates()[0].double()
    u0 = (torch.cos(x / 6) * (1 + torch.sin(x / 6)))[None, None]
    t_end = 2.0
    reference = _run_double(4, t_end / 1000, u0, t_end)
    dts = [0.2, 0.1, 0.05]
    errors = [float((_run_double(order, dt, u0, t_end) - reference).abs().max()) for dt in dts]
    slope = np.polyfit(np.log(dts), np.log(errors), 1)[0]
    assert order - 0.3 < slope < order + 0.8, (errors, slope)


def test_contour_coefficients_match_closed_form_away_from_zero() -> None:
    linear = torch.tensor([-5.0, -1.0, 2.0 + 3.0j], dtype=torch.complex64)
    c = etdrk_coefficients(linear, 0.5, 1)
    z = (0.5 * linear).to(torch.complex128)
    torch.testing.assert_close(
        c["phi1"], (0.5 * (torch.exp(z) - 1) / z).to(torch.complex64), atol=1e-6, rtol=1e-5
    )


def test_real_symbols_give_real_weights() -> None:
    assert not etdrk_coefficients(-torch.rand(4), 0.1, 4)["f1"].is_complex()
    assert etdrk_coefficients(-torch.rand(4) + 1j * torch.rand(4), 0.1, 4)["f1"].is_complex()
