"""Pool nonlinear terms read live coefficients (one term per family, no rebuild per refresh), so the pool can
step through a CUDA graph captured once.

For every registered nonlinear family: after ``reset(rows)`` draws new coefficients, the pool's term (the same
object as before) gives what a term freshly built from the new values gives. A term that caches a tensor
derived from a coefficient at build time fails this (checked on a deliberately caching term). The graph
replay itself needs a GPU: the CUDA test below (run by ``benchmarks/gpu_checks.sh``) checks that a pool with
graphs makes bitwise the frames of one without, across refreshes and a resume, with one capture per family.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from conftest import rounding_tolerance

from datagen import FamilySpec, PDEPool
from datagen.cuda_graphs import CudaGraphStepper, _same
from datagen.pdes import get_pde, known_pdes
from datagen.pdes.kolmogorov_flow_velocity import KolmogorovFlowVelocity
from datagen.pdes.korteweg_de_vries import KortewegDeVries
from datagen.stepper import build_stepper

pytestmark = pytest.mark.usefixtures("one_thread")

NONLINEAR = [name for name in known_pdes() if not get_pde(name).is_linear]
ROWS = [1, 3]  # refreshed rows; 0 and 2 keep their coefficients


def _varying_spec(name: str) -> FamilySpec:
    """Every coefficient drawn per trajectory from [0.5, 1.5] x its default ([-0.5, 0.5] for a zero default).

    Stability is not checked (``check=False``): the test evaluates the nonlinear term and one step, nothing more.
    """
    ranges = {}
    for key, default in get_pde(name).coefficients.items():
        low, high = (0.5 * default, 1.5 * default) if default else (-0.5, 0.5)
        ranges[key] = sorted([low, high])
    return FamilySpec(name, dt=1e-3, coefficients=ranges)


def _pool(name: str, **kwargs) -> PDEPool:
    pde = get_pde(name)
    d = 2 if 2 in pde.supported_dims else pde.supported_dims[0]
    base = {"num_spatial_dims": d, "n": 16, "num_trajectories": 4, "refresh_fraction": 0.0, "check": False}
    return PDEPool([_varying_spec(name)], **(base | kwargs))


def _uses_coefficients(name: str) -> bool:
    """Whether the family's nonlinear term names any coefficient (NS velocity's takes none)."""
    params = inspect.signature(get_pde(name).nonlinear).parameters.values()
    return any(p.name != "ops" and p.kind is p.POSITIONAL_OR_KEYWORD for p in params)


def _check_term_follows_refresh(name: str) -> None:
    """Refresh rows of a one-family pool; its term must be the same object and match a freshly built one."""
    pool = _pool(name)
    fam = pool.families[0]
    term = fam.stepper.nonlinear
    before = {k: v.clone() for k, v in fam.values.items()}
    fam.reset(torch.tensor(ROWS), torch.Generator().manual_seed(7))
    kept = [r for r in range(fam.count) if r not in ROWS]
    for key, value in fam.values.items():
        assert not torch.equal(value[ROWS], before[key][ROWS]), f"{name}: {key} was not redrawn"
        assert torch.equal(value[kept], before[key][kept]), f"{name}: {key} changed in rows not refreshed"
    assert fam.stepper.nonlinear is term, (
        f"{name}: the nonlinear term was rebuilt (a CUDA graph would recapture)"
    )

    slab = (fam.count, fam.num_channels, *fam.grid.fourier_shape[:-1], fam.ops.num_kept)
    g = torch.Generator().manual_seed(0)
    u_hat = torch.complex(torch.randn(slab, generator=g), torch.randn(slab, generator=g)) * fam.ops.mask_slab
    fresh = fam.pde.nonlinear(fam.ops, **fam.values)(u_hat.clone())
    got = term(u_hat.clone())
    scale = float(fresh.abs().max())
    assert torch.isfinite(fresh).all() and scale > 0
    # the same float32 term, built twice: at most rounding apart (an FFT pair, log2 of the points sums each,
    # and the term's few products)
    fft_pair = 2 * round(math.log2(math.prod(fam.grid.spatial_shape)))
    tolerance = rounding_tolerance(fresh, terms=fft_pair + 9)
    torch.testing.assert_close(got, fresh, **tolerance, msg=lambda m: f"{name}: {m}")
    if _uses_coefficients(name):  # otherwise a stale term could not be told from a live one
        stale = fam.pde.nonlinear(fam.ops, **before)(u_hat.clone())
        assert not torch.allclose(stale, fresh, rtol=1e-4, atol=1e-4 * scale), (
            f"{name}: the new coefficients do not change the nonlinear term; the test would not see a stale one"
        )

    # The whole step (linear weights updated in place by set_rows, nonlinear term live) matches a stepper
    # built from scratch with the new values.
    u = 0.1 * torch.randn(fam.count, fam.num_channels, *fam.grid.spatial_shape, generator=g)
    rebuilt = build_stepper(fam.pde, fam.grid, fam.values, fam.spec.dt, fam.spec.order)
    expected = rebuilt(u, 1)
    tolerance = rounding_tolerance(expected, terms=fam.spec.order * (fft_pair + 9))  # one step's stages
    torch.testing.assert_close(fam.stepper(u, 1), expected, **tolerance, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("name", NONLINEAR)
def test_nonlinear_term_reads_live_coefficients(name: str) -> None:
    _check_term_follows_refresh(name)


def test_a_term_that_caches_a_derived_coefficient_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above fails on the form the terms had before: ``-b/2 * sum(ik)`` computed at build time."""

    def caching(self, ops, convection_scale, **_):
        weight = -0.5 * convection_scale * ops.ik_slab.sum(dim=1, keepdim=True)
        return lambda u_hat: weight * ops.fft_slab(ops.ifft_slab(u_hat * ops.mask_slab) ** 2)

    monkeypatch.setattr(KortewegDeVries, "nonlinear", caching)
    with pytest.raises(AssertionError, match="korteweg_de_vries: Tensor-likes are not close"):
        _check_term_follows_refresh("korteweg_de_vries")


def test_kolmogorov_forcing_buffer_is_refreshed_row_by_row() -> None:
    """The forcing (an FFT of the coefficients) is a buffer; the pool rewrites the refreshed rows in place."""
    pool = _pool("kolmogorov_flow_velocity")
    fam = pool.families[0]
    forcing = fam.stepper.nonlinear.buffers["forcing"]
    before = forcing.clone()
    fam.reset(torch.tensor(ROWS), torch.Generator().manual_seed(3))
    assert fam.stepper.nonlinear.buffers["forcing"] is forcing
    assert torch.equal(forcing[[0, 2]], before[[0, 2]])
    for row in ROWS:
        one = {k: v[row : row + 1] for k, v in fam.values.items()}
        assert torch.equal(forcing[row], fam.pde.nonlinear(fam.ops, **one).buffers["forcing"][0])


def test_a_buffer_without_a_row_per_trajectory_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A buffer shared by all rows cannot take one row's new coefficients: refused, naming the fix."""
    original = KolmogorovFlowVelocity.nonlinear

    def shared_buffer(self, ops, **values):
        fn = original(self, ops, **values)
        fn.buffers = {"forcing": fn.buffers["forcing"][:1]}
        return fn

    monkeypatch.setattr(KolmogorovFlowVelocity, "nonlinear", shared_buffer)
    with pytest.raises(RuntimeError, match=r"buffer 'forcing' has 1 rows; expected one per trajectory \(4\)"):
        _pool("kolmogorov_flow_velocity")


def test_graph_signature_is_stable_across_refresh_and_resume_and_changes_on_replacement() -> None:
    """CPU stand-in for "one capture": the key the graph is captured under survives refreshes and a resume."""
    pool = _pool("kolmogorov_flow_velocity", refresh_fraction=0.5, num_trajectories=3)
    fam = pool.families[0]
    assert isinstance(fam.step_all, CudaGraphStepper)
    key = fam.step_all._signature(fam.current, fam.spec.substeps)
    saved = pool.snapshot()
    for _ in range(3):
        pool.advance()
    pool.load_state_dict(saved)
    assert _same(key, fam.step_all._signature(fam.current, fam.spec.substeps))
    # a replaced coefficient tensor, nonlinear buffer or weight tensor must force a new capture
    fam.values["drag"] = fam.values["drag"].clone()
    assert not _same(key, fam.step_all._signature(fam.current, fam.spec.substeps))
    key = fam.step_all._signature(fam.current, fam.spec.substeps)
    fam.stepper.nonlinear.buffers["forcing"] = fam.stepper.nonlinear.buffers["forcing"].clone()
    assert not _same(key, fam.step_all._signature(fam.current, fam.spec.substeps))
    shared = PDEPool(
        [FamilySpec("burgers", dt=0.002, coefficients={"diffusivity": 0.05})], n=8, num_spatial_dims=2
    )
    stepper = shared.families[0].stepper
    key = shared.families[0].step_all._signature(shared.families[0].current, 1)
    stepper.expand_rows(shared.families[0].count)  # shared weights replaced by per-row copies
    assert not _same(key, shared.families[0].step_all._signature(shared.families[0].current, 1))


# Families with per-trajectory coefficients in every part the pool refreshes: linear weights (diffusivity),
# a live scale (burgers, KS, fisher), a forcing buffer (Kolmogorov). Valid on a 2D 32^2 grid (checked).
GRAPH_FAMILIES = [
    {
        "name": "burgers",
        "dt": 0.002,
        "coefficients": {"diffusivity": [0.04, 0.06], "convection_scale": [0.5, 1.0]},
    },
    {
        "name": "kolmogorov_flow_velocity",
        "dt": 0.002,
        "coefficients": {
            "diffusivity": [0.01, 0.03],
            "drag": [-0.1, 0.0],
            "injection_mode": [1, 4],
            "injection_scale": [0.5, 2.0],
        },
        "substeps": 2,
    },
    {
        "name": "kuramoto_sivashinsky",
        "dt": 0.025,
        "length": 20.0,
        "coefficients": {"gradient_norm_scale": [0.5, 1.5]},
        "warmup_steps": 4,
    },
    {
        "name": "fisher_kpp",
        "dt": 0.01,
        "coefficients": {"diffusivity": [2e-3, 4e-3], "reactivity": [1.0, 5.0]},
    },
]


def _graph_pool(device: str, graphs: bool) -> PDEPool:
    specs = [FamilySpec(**spec) for spec in GRAPH_FAMILIES]
    return PDEPool(
        specs,
        num_spatial_dims=2,
        n=32,
        num_trajectories=4,
        refresh_fraction=0.5,
        seed=5,
        device=device,
        graphs=graphs,
    )


def test_graphs_option_is_a_pass_through_off_cuda() -> None:
    with_graphs, without = _graph_pool("cpu", True), _graph_pool("cpu", False)
    assert not isinstance(without.families[0].step_all, CudaGraphStepper)
    for _ in range(2):
        with_graphs.advance()
        without.advance()
    for a, b in zip(with_graphs.families, without.families, strict=True):
        assert torch.equal(a.frames, b.frames) and a.step_all.num_captures == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_pool_with_graphs_matches_plain_bitwise_with_one_capture() -> None:
    graphed, plain = _graph_pool("cuda", True), _graph_pool("cuda", False)
    for step in range(6):  # refresh_fraction 0.5: every advance redraws coefficients of about half the rows
        if step == 2:
            early = plain.snapshot()
        graphed.advance()
        plain.advance()
        for a, b in zip(graphed.families, plain.families, strict=True):
            assert torch.equal(a.frames, b.frames), f"{a.spec.name}: frames differ at step {step}"
    captures = {f.spec.name: f.step_all.num_captures for f in graphed.families}
    assert all(n == 1 for n in captures.values()), captures
    # A resume writes coefficients, weights and buffers in place: the same graphs replay it, bitwise.
    graphed.load_state_dict(early)
    for _ in range(4):
        graphed.advance()
    for a, b in zip(graphed.families, plain.families, strict=True):
        assert torch.equal(a.frames, b.frames), f"{a.spec.name}: frames differ after the resume"
    captures = {f.spec.name: f.step_all.num_captures for f in graphed.families}
    assert all(n == 1 for n in captures.values()), captures
