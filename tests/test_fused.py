"""datagen.fused: ETDRK stages compiled with torch.compile (inductor) against the plain path.

Tolerance: fused and plain run the same float32 operations in the same order, but a compiled kernel may
contract ``a * b + c`` into one fused multiply-add (rounded once instead of twice), so the two are not
bitwise equal. ``conftest.rounding_tolerance`` bounds that: per step and stage, the sums of a forward and an
inverse FFT (log2 of the grid's points each) and the stage formula's few terms; these stable, smooth
problems do not amplify it. One wrong weight or stage moves the state by 1e-3 or more of its size
(``test_a_weight_updated_in_place_is_seen`` checks such a change is caught).
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import rounding_tolerance

from datagen import fused as fused_module
from datagen import get_pde, make_stepper
from datagen.ic import gaussian_random_field
from datagen.spectral import ETDRKStepper, Grid, etdrk_coefficients, spectral_ops

# small FFTs on a shared 2-core machine: one torch thread (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")

N, BATCH, NUM_STEPS = 16, 2, 10

# name -> (length, dt, shared coefficients, per-row coefficients); Burgers and KS have real symbols (float32
# weights), KdV a dispersive, complex one (complex64 weights).
CASES = {
    "burgers": (1.0, 0.001, {"diffusivity": 0.02}, {"diffusivity": [0.02, 0.04]}),
    "kuramoto_sivashinsky": (10.0, 0.005, {}, {"second_order_scale": [1.0, 0.8]}),
    "korteweg_de_vries": (20.0, 0.005, {}, {"dispersivity": [1.0, 0.5]}),
}
NUM_STAGES = {1: 1, 2: 2, 3: 3, 4: 4}  # compiled kernels per step


def _pair(
    name: str, order: int, per_row: bool, device: str = "cpu"
) -> tuple[ETDRKStepper, ETDRKStepper, torch.Tensor]:
    """A plain and a fused stepper with the same weights, and a state ``(BATCH, channels, N, N, N)``."""
    length, dt, shared, rows = CASES[name]
    kwargs = dict(
        dim=3,
        n=N,
        length=length,
        dt=dt,
        order=order,
        check=False,
        device=device,
        **(rows if per_row else shared),
    )
    plain, fused = make_stepper(name, **kwargs), make_stepper(name, **kwargs)
    fused.fuse = True
    assert plain.num_rows == (BATCH if per_row else 1) and not plain.fuse
    channels = get_pde(name).num_channels(3)
    u = gaussian_random_field(
        Grid(3, N, length), BATCH, channels, powerlaw_exponent=4.0, generator=torch.Generator().manual_seed(0)
    ).to(device)
    return plain, fused, u


def _tolerance(plain: torch.Tensor, order: int = 4) -> dict[str, float]:
    """Rounding's: NUM_STEPS steps of ``order`` stages, each a 3D FFT pair and a stage formula of <= 9 terms."""
    per_stage = 2 * round(math.log2(N**3)) + 9
    return rounding_tolerance(plain, terms=NUM_STEPS * NUM_STAGES[order] * per_stage)


def _check_close(fused: torch.Tensor, plain: torch.Tensor, order: int = 4) -> None:
    assert torch.isfinite(plain).all()
    torch.testing.assert_close(fused, plain, **_tolerance(plain, order))


@pytest.fixture(autouse=True)
def no_eager_fallback():
    """Past dynamo's recompile limit a formula would run uncompiled; here that fails instead of passing."""
    import torch._dynamo

    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        yield


@pytest.fixture
def stage_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the compiled stage formulas called, in order (the real ones run: this only records)."""
    calls: list[str] = []
    real = fused_module._run

    def record(name: str, *args: torch.Tensor) -> torch.Tensor:
        calls.append(name)
        return real(name, *args)

    monkeypatch.setattr(fused_module, "_run", record)
    return calls


def _num_compiled(formula: str) -> int:
    """How many compiled variants (shapes) dynamo holds for a stage formula."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    return len(_debug_get_cache_entry_list(fused_module._FORMULAS[formula].__code__))


def _compare(name: str, order: int, per_row: bool, stage_calls: list[str], device: str = "cpu") -> None:
    plain, fused, u = _pair(name, order, per_row, device)
    expected = plain(u, NUM_STEPS)
    got = fused(u, NUM_STEPS)
    assert len(stage_calls) == NUM_STAGES[order] * NUM_STEPS, stage_calls  # the fused path ran
    # ... through compiled code (for real weights fused and plain agree bitwise on CPU, so check this way)
    assert all(_num_compiled(formula) > 0 for formula in set(stage_calls)), set(stage_calls)
    _check_close(got, expected, order)
    # It is a real evolution, not a state that barely moved (which any path would match).
    assert float((expected - u).abs().max()) > 100 * _tolerance(expected, order)["atol"]


@pytest.mark.parametrize("weights_complex", [False, True], ids=["real_weights", "complex_weights"])
def test_formulas_on_real_views_match_complex_arithmetic(weights_complex: bool) -> None:
    """The stage formulas, run eagerly (uncompiled) on real views, against complex torch arithmetic.

    In double precision (the formulas take any dtype): real views and complex arithmetic order the same
    products differently, so only rounding may differ.
    """
    g = torch.Generator().manual_seed(0)

    def state() -> torch.Tensor:
        return torch.randn(2, 3, 4, 5, generator=g, dtype=torch.complex128)

    def weight(rows: int) -> torch.Tensor:
        dtype = torch.complex128 if weights_complex else torch.float64
        return torch.randn(rows, 1, 4, 5, generator=g, dtype=dtype)

    e, f1, f2, f3 = weight(2), weight(1), weight(2), weight(1)  # per-row and shared weights mixed
    u, nu, na, nb, nc = (state() for _ in range(5))
    w = fused_module._weight_view
    s = fused_module._state_view
    formulas = fused_module._FORMULAS
    got = {
        "sum": formulas["_weighted_sum"](w(e), s(u), w(f1), s(nu)),
        "difference": formulas["_weighted_difference"](w(e), s(u), w(f1), s(na), s(nu)),
        "order2": formulas["_order2_final"](s(u), w(f2), s(na), s(nu)),
        "order3": formulas["_order3_final"](w(e), s(u), w(f1), s(nu), w(f2), s(na), w(f3), s(nb)),
        "order4": formulas["_order4_final"](w(e), s(u), w(f1), s(nu), w(f2), s(na), s(nb), w(f3), s(nc)),
    }
    expected = {
        "sum": e * u + f1 * nu,
        "difference": e * u + f1 * (2 * na - nu),
        "order2": u + f2 * (na - nu),
        "order3": e * u + f1 * nu + f2 * (4 * na) + f3 * nb,
        "order4": e * u + f1 * nu + f2 * (2 * (na + nb)) + f3 * nc,
    }
    for key, value in expected.items():
        # at most 9 terms (order 4), each a complex product of 2 real ones
        tolerance = rounding_tolerance(value, terms=18, scale=_largest_term(value, e, u, nu, na, nb, nc))
        torch.testing.assert_close(
            torch.view_as_complex(got[key]), value, **tolerance, msg=lambda m, k=key: f"{k}: {m}"
        )


def _largest_term(value: torch.Tensor, *factors: torch.Tensor) -> float:
    """The size of the summed terms: the largest value or product of two largest factors, whichever is larger."""
    sizes = sorted((float(f.abs().max()) for f in factors), reverse=True)
    return max(float(value.abs().max()), 4 * sizes[0] * sizes[1])


def test_fused_order4_per_row_kuramoto_sivashinsky(stage_calls: list[str]) -> None:
    _compare("kuramoto_sivashinsky", 4, True, stage_calls)


def test_fused_is_as_accurate_as_plain_against_float64() -> None:
    """Both float32 paths against the same scheme in float64: fused round-off is plain's, not larger."""
    plain, fused, u = _pair("kuramoto_sivashinsky", 4, True)
    pde, grid = get_pde("kuramoto_sivashinsky"), plain.grid
    ops = spectral_ops(grid, pde.dealias)
    values = {"gradient_norm_scale": 1.0, "second_order_scale": [1.0, 0.8], "fourth_order_scale": 1.0}
    # float32 values widened, so that the coefficients are exactly those of the float32 steppers
    values = {k: torch.tensor(v).double().reshape(-1, 1, 1, 1, 1) for k, v in values.items()}
    linear = torch.broadcast_to(pde.linear(ops, **values), (BATCH, 1, *grid.fourier_shape))
    dt = CASES["kuramoto_sivashinsky"][1]
    weights = etdrk_coefficients(linear, dt, 4, double=True)
    double = ETDRKStepper(grid, weights, pde.nonlinear(ops, **values), dt, 4, ops.num_kept)
    reference = grid.ifft(double.step_fourier(torch.fft.rfftn(u.double(), dim=grid.spatial_axes), NUM_STEPS))
    plain_error = float((plain(u, NUM_STEPS).double() - reference).abs().max())
    fused_error = float((fused(u, NUM_STEPS).double() - reference).abs().max())
    assert 0 < plain_error < 1e-4 * float(reference.abs().max()), plain_error  # float32 round-off only
    assert fused_error < 3 * plain_error, (fused_error, plain_error)


@pytest.mark.slow
@pytest.mark.parametrize("per_row", [False, True], ids=["shared", "per_row"])
@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("name", list(CASES))
def test_fused_matches_plain(name: str, order: int, per_row: bool, stage_calls: list[str]) -> None:
    """Every ETDRK order, real (Burgers, KS) and complex (KdV) weights, shared and per-row weights."""
    _compare(name, order, per_row, stage_calls)


def test_a_weight_updated_in_place_is_seen() -> None:
    """``set_rows`` rewrites weight rows in place; the compiled kernels read them, not a captured copy."""
    length, dt = 1.0, 0.001
    kwargs = dict(dim=3, n=N, length=length, dt=dt, check=False)
    stepper = make_stepper("burgers", diffusivity=[0.02, 0.04], **kwargs)
    stepper.fuse = True
    u = gaussian_random_field(
        Grid(3, N, length), BATCH, 3, powerlaw_exponent=4.0, generator=torch.Generator().manual_seed(1)
    )
    before = stepper(u, NUM_STEPS)  # compiles with the old weights
    pde, grid = get_pde("burgers"), stepper.grid
    ops = spectral_ops(grid, pde.dealias)
    scalar = torch.tensor(0.5).reshape(1, 1, 1, 1, 1)
    stepper.set_rows([1], pde.linear(ops, diffusivity=scalar, convection_scale=scalar))
    after = stepper(u, NUM_STEPS)
    # What a plain stepper built with the new value computes.
    reference = make_stepper("burgers", diffusivity=[0.02, 0.5], **kwargs)(u, NUM_STEPS)
    _check_close(after, reference)
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=0)  # row 0 untouched
    assert float((after[1] - before[1]).abs().max()) > 1e-3 * float(before[1].abs().max())


def test_select_keeps_fuse() -> None:
    stepper = make_stepper("burgers", dim=3, n=N, dt=0.001, diffusivity=[0.02, 0.04], check=False)
    stepper.fuse = True
    assert stepper.select(torch.tensor([1]), stepper.nonlinear).fuse
    assert not ETDRKStepper.__new__(ETDRKStepper).fuse


def test_a_failing_compiler_raises_naming_the_fix() -> None:
    """No C++ compiler for inductor: a RuntimeError that names fuse=False, not a silent plain step."""
    import torch._inductor.config as inductor_config

    # A shape no other test compiles (1D, 12 points, batch 3), so that inductor must run the compiler.
    grid = Grid(1, 12, 10.0)
    stepper = make_stepper("kuramoto_sivashinsky", dim=1, n=12, length=10.0, dt=0.01, order=1, check=False)
    stepper.fuse = True
    u = gaussian_random_field(grid, 3, generator=torch.Generator().manual_seed(0))
    patch = {"cpp.cxx": ("/nonexistent/pfm-test-cxx",), "fx_graph_cache": False}
    with inductor_config.patch(patch), pytest.raises(RuntimeError, match="fuse=False"):
        stepper(u, 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (benchmarks/gpu_checks.sh runs it)")
@pytest.mark.parametrize(
    ("name", "per_row"), [("burgers", False), ("kuramoto_sivashinsky", True), ("korteweg_de_vries", True)]
)
def test_fused_matches_plain_on_cuda(name: str, per_row: bool, stage_calls: list[str]) -> None:
    """On a GPU (triton kernels, which do contract FMAs): ETDRK4, real and complex weights, same tolerance."""
    _compare(name, 4, per_row, stage_calls, device="cuda")
