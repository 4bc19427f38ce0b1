"""PDE families: every config file builds a stable pool; physical invariants; bad-input errors.

Loops over the registry and over conf/data/pde/*.yaml, so a new family or config adds its own tests.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import rounding_tolerance
from omegaconf import OmegaConf

import datagen
from datagen import FamilySpec, PDEPool, get_pde, known_pdes, make_stepper
from datagen.ic import gaussian_random_field
from datagen.spectral import Grid, spectral_ops

# small FFTs and models on a shared 2-core machine: one torch thread (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


CONFIGS = sorted((Path(__file__).parents[1] / "conf" / "data" / "pde").glob("*.yaml"))


def _spec(path: Path) -> FamilySpec:
    return FamilySpec(**OmegaConf.to_container(OmegaConf.load(path), resolve=True))


def test_every_family_has_a_config_with_its_name() -> None:
    names = {p.stem for p in CONFIGS}
    assert names == set(known_pdes())
    for path in CONFIGS:
        assert _spec(path).name == path.stem


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_pool_is_finite_and_rejects_nothing(path: Path) -> None:
    spec = _spec(path)
    pde = get_pde(spec.name)
    d = 3 if 3 in pde.supported_dims else 2
    pool = PDEPool(
        [spec], num_spatial_dims=d, n=32 if d == 3 else 64, num_trajectories=2, refresh_fraction=0.0
    )
    for _ in range(4):
        pool.advance()
    fields = pool.families[0].current
    assert torch.isfinite(fields).all()
    assert pool.num_rejected == 0
    assert fields.abs().max() < 50


@pytest.mark.parametrize("name", known_pdes())
def test_docstring_states_equation_and_coefficients(name: str) -> None:
    pde = get_pde(name)
    doc = type(pde).__module__
    module_doc = __import__(doc, fromlist=["_"]).__doc__
    assert "=" in module_doc  # the equation
    for coefficient in pde.coefficients:
        assert coefficient in module_doc, f"{name}: docstring does not name {coefficient}"


def _smooth(grid: Grid, channels: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return gaussian_random_field(grid, 2, channels, powerlaw_exponent=4.0, generator=g)


def test_navier_stokes_stays_divergence_free() -> None:
    grid = Grid(3, 16, 1.0)
    pde = get_pde("navier_stokes_velocity")
    ops = spectral_ops(grid, pde.dealias)
    u = pde.admissible(_smooth(grid, 3), ops)
    step = make_stepper("navier_stokes_velocity", dim=3, n=16, dt=0.002, diffusivity=0.03)
    u = step(u, 20)
    div = grid.ifft((ops.ik * grid.fft(u)).sum(dim=1, keepdim=True))
    assert u.abs().max() > 0.1
    assert div.abs().max() < 1e-4 * u.abs().max() * grid.max_wavenumber()


@pytest.mark.parametrize(
    ("name", "dim", "n", "length", "dt", "coefficients"),
    [
        ("burgers_single_channel", 2, 32, 1.0, 0.002, {"diffusivity": 0.02}),
        ("korteweg_de_vries", 1, 64, 20.0, 0.005, {}),
        ("cahn_hilliard", 2, 32, 1.0, 5e-4, {"diffusivity": 0.003, "gamma": 5e-4}),
        ("navier_stokes_velocity", 3, 16, 1.0, 0.002, {"diffusivity": 0.03}),
        ("navier_stokes_vorticity", 2, 32, 1.0, 0.002, {"diffusivity": 1e-3}),
        ("advection_diffusion", 2, 32, 1.0, 0.005, {}),
    ],
)
def test_mean_is_conserved(name: str, dim: int, n: int, length: float, dt: float, coefficients: dict) -> None:
    """These equations are in divergence form (or have zero-mean forcing), so the mean of u is conserved."""
    pde = get_pde(name)
    grid = Grid(dim, n, length)
    u = pde.admissible(_smooth(grid, pde.num_channels(dim)), spectral_ops(grid, pde.dealias))
    u = u * (0.5 if name == "cahn_hilliard" else 1.0) + 0.3
    step = make_stepper(name, dim=dim, n=n, length=length, dt=dt, **coefficients)
    v = step(u, 30)
    dims = tuple(range(2, u.ndim))
    assert (v - u).abs().max() > 1e-3  # it did evolve
    # float32 rounding only: 30 steps of <= 4 stages, each an FFT pair (log2 of the points each) and a formula
    terms = 30 * 4 * (2 * round(math.log2(n**dim)) + 9)
    mean = u.mean(dim=dims)
    torch.testing.assert_close(
        v.mean(dim=dims), mean, **rounding_tolerance(mean, terms=terms, scale=u.abs().max())
    )


def test_inviscid_linear_advection_conserves_energy() -> None:
    grid = Grid(2, 32, 1.0)
    u = _smooth(grid)
    v = make_stepper("advection", dim=2, n=32, dt=0.005, velocity=0.7)(u, 50)
    # float32 rounding only: 50 steps of 4 stages, each a 2D FFT pair and a formula; squaring doubles the
    # relative error (4x the terms under rounding_tolerance's square root), then a mean over 32^2 points
    energy = u.square().mean()
    terms = 4 * 50 * 4 * (2 * 10 + 9) + 32**2
    torch.testing.assert_close(v.square().mean(), energy, **rounding_tolerance(energy, terms=terms))


def test_gray_scott_stays_bounded() -> None:
    spec = _spec(next(p for p in CONFIGS if p.stem == "gray_scott"))
    pool = PDEPool([spec], num_spatial_dims=2, n=64, num_trajectories=2, refresh_fraction=0.0)
    for _ in range(50):  # 200 solver steps, 100 time units
        pool.advance()
    fields = pool.families[0].current
    assert pool.num_rejected == 0
    assert fields.min() > -0.05 and fields.max() < 1.05
    assert fields[:, 1].max() > 0.05  # the v species did not simply die out


def test_unknown_pde_lists_known_ones() -> None:
    with pytest.raises(ValueError, match=r"burgers.*kuramoto_sivashinsky"):
        make_stepper("navier_stokes_3d", dim=3, n=16, dt=0.1)


def test_unknown_coefficient_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"viscosity.*diffusivity"):
        make_stepper("burgers", dim=1, n=64, dt=0.001, viscosity=0.1)


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("burgers", {"dt": 0.05, "diffusivity": 0.05}, r"CFL number.*above the limit 1.*dt <="),
        (
            "burgers",
            {"dt": 0.001, "diffusivity": 0.001},
            r"cell Reynolds.*above the limit 10.*diffusivity >=",
        ),
        ("diffusion", {"dt": 0.01, "diffusivity": -0.1}, r"diffusivity.*below the limit 0"),
        ("allen_cahn", {"dt": 1.0}, r"stiffness.*above the limit 2"),
        ("kuramoto_sivashinsky", {"dt": 0.05, "length": 200.0}, r"unstable band resolved.*below"),
        ("navier_stokes_velocity", {"dt": 0.002, "drag": 0.5}, r"drag.*above the limit 0"),
    ],
)
def test_out_of_range_input_names_value_and_limit(name: str, kwargs: dict, match: str) -> None:
    """Coefficient limits fail when the stepper is built; those that depend on the state's size (CFL, cell
    Reynolds number, reaction stiffness) on the first step, here for a state with max |u| = 3."""
    length = kwargs.pop("length", 1.0)
    pde = get_pde(name)
    dim = 3 if 3 in pde.supported_dims else 2
    grid = Grid(dim, 32, length)
    u = _smooth(grid, pde.num_channels(dim))
    with pytest.raises(ValueError, match=match):
        step = make_stepper(name, dim=dim, n=32, length=length, **kwargs)
        step(3.0 * u / u.abs().max())


def test_limits_use_the_amplitude_of_the_actual_state() -> None:
    """exponax runs this Burgers setup; for |u| <= 1 its cell Reynolds number is 4.4, below the limit 10."""
    setup = {"dim": 3, "n": 48, "length": 2 * math.pi, "dt": 0.005, "diffusivity": 0.03}
    grid = Grid(3, 48, 2 * math.pi)
    u = _smooth(grid, 3)
    u = u / u.abs().max()
    v = make_stepper("burgers", **setup)(u, 10)
    assert torch.isfinite(v).all() and 0.1 < v.abs().max() <= 1.0
    big = make_stepper("burgers", **setup)
    with pytest.raises(
        ValueError, match=r"max\|u\|=4 .*cell Reynolds number.* = 17.45 is above the limit 10\. Fix: use"
    ):
        big(4 * u)
    torch.testing.assert_close(big(u, 10), v)  # a refused state leaves the stepper usable
    with pytest.raises(ValueError, match=r"max_amplitude.*cell Reynolds number.*above the limit 10"):
        make_stepper("burgers", max_amplitude=4.0, **setup)
    make_stepper("burgers", max_amplitude=1.0, **setup)  # documented bound given up front: accepted


def test_a_state_with_nan_is_refused_on_the_first_step() -> None:
    grid = Grid(2, 16, 1.0)
    u = _smooth(grid)
    u[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        make_stepper("burgers_single_channel", dim=2, n=16, dt=0.001, diffusivity=0.05)(u)


def test_config_outside_limits_fails_when_the_pool_is_built() -> None:
    spec = FamilySpec("burgers", dt=0.05, coefficients={"diffusivity": [0.01, 0.03]})
    with pytest.raises(ValueError, match="CFL"):
        PDEPool([spec], n=32, num_trajectories=1)


def test_wrong_dimension_is_refused() -> None:
    with pytest.raises(ValueError, match="dim"):
        make_stepper("navier_stokes_vorticity", dim=3, n=16, dt=0.001)


def test_per_sample_coefficients_match_separate_runs() -> None:
    grid = Grid(2, 32, 1.0)
    u = _smooth(grid)
    both = make_stepper(
        "burgers_single_channel", dim=2, n=32, dt=0.002, diffusivity=torch.tensor([0.02, 0.04])
    )(u, 5)
    # float32 steppers: a batch and one row may sum in other orders; per step 4 stages, each a 2D FFT pair
    # (log2(32^2) sums each) and the stage formula's <= 9 terms
    terms = 5 * 4 * (2 * 10 + 9)
    for i, nu in enumerate([0.02, 0.04]):
        one = make_stepper("burgers_single_channel", dim=2, n=32, dt=0.002, diffusivity=nu)(u[i : i + 1], 5)
        torch.testing.assert_close(both[i : i + 1], one, **rounding_tolerance(one, terms=terms))


def test_public_api_exports() -> None:
    for name in datagen.__all__:
        assert hasattr(datagen, name)
    assert math.isfinite(get_pde("burgers").amplitude)


def test_new_pde_guide_example_runs() -> None:
    """docs/new_pde.md's module, config and usage snippets work as written (in a fresh interpreter)."""
    import subprocess
    import sys

    script = r"""
import re, torch, yaml
torch.set_num_threads(1)
doc = open("docs/new_pde.md").read()
code = re.findall(r"```python\n(.*?)```", doc, re.S)
exec(compile(code[0], "nagumo", "exec"), {"__name__": "nagumo_doc"})
import datagen
assert "nagumo" in datagen.known_pdes()
exec(code[2].replace("64", "16"), {})
from datagen import FamilySpec, PDEPool
spec = FamilySpec(**yaml.safe_load(re.findall(r"```yaml\n(.*?)```", doc, re.S)[0]))
pool = PDEPool([spec], n=32, num_trajectories=2)
for _ in range(3):
    pool.advance()
assert pool.num_rejected == 0 and torch.isfinite(pool.families[0].current).all()
"""
    root = Path(__file__).parents[1]
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]


EXPONAX_CASES = [
    # (pfm name, exponax stepper path, dim, n, length, dt, channels)
    ("burgers", "Burgers", 3, 16, 1.0, 1e-3, 3),
    ("burgers_single_channel", "Burgers(single_channel)", 2, 32, 1.0, 1e-3, 1),
    ("kuramoto_sivashinsky", "KuramotoSivashinsky", 2, 32, 30.0, 0.05, 1),
    # Not korteweg_de_vries: exponax keeps only the real part of the contour-averaged ETDRK weights, which is
    # inaccurate for dispersive (complex) symbols; see test_korteweg_de_vries_converges_to_fine_dt_reference.
    ("navier_stokes_velocity", "NavierStokesVelocity", 3, 16, 1.0, 1e-3, 3),
    # Not kolmogorov_flow_velocity: exponax 0.2 documents f0 = gamma sin(m k0 x1) but injects one real
    # coefficient at +m (a cosine); pfm implements the documented sine.
    ("navier_stokes_vorticity", "NavierStokesVorticity", 2, 32, 1.0, 1e-3, 1),
    ("kolmogorov_flow_vorticity", "KolmogorovFlowVorticity", 2, 32, 6.28, 1e-2, 1),
    ("advection_diffusion", "AdvectionDiffusion", 2, 32, 1.0, 1e-2, 1),
    ("dispersion", "Dispersion", 2, 32, 1.0, 1e-5, 1),
    ("hyper_diffusion", "HyperDiffusion", 2, 32, 1.0, 1e-2, 1),
    ("fisher_kpp", "reaction.FisherKPP", 2, 32, 1.0, 1e-2, 1),
    ("allen_cahn", "reaction.AllenCahn", 2, 32, 1.0, 1e-2, 1),
    ("cahn_hilliard", "reaction.CahnHilliard", 2, 32, 1.0, 1e-4, 1),
    ("swift_hohenberg", "reaction.SwiftHohenberg", 2, 32, 20.0, 0.05, 1),
]


@pytest.mark.parametrize("case", EXPONAX_CASES, ids=[c[0] for c in EXPONAX_CASES])
def test_matches_exponax_with_the_same_coefficients(case: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same defaults, same equation: 5 ETDRK4 steps agree with exponax to float32 round-off.

    exponax keeps modes |m| <= f n/2 - 1 where pfm keeps |m| < f n/2 (the textbook rule, one more mode);
    the test sets pfm's fraction so that both keep the same modes.
    """
    pytest.importorskip("exponax")
    import exponax
    import jax.numpy as jnp
    import numpy as np

    name, path, dim, n, length, dt, channels = case
    pde_cls = type(get_pde(name))
    fraction = pde_cls.dealias
    monkeypatch.setattr(pde_cls, "dealias", (math.ceil(fraction * (n // 2) - 1 + 1e-9) - 0.5) / (n // 2))
    spectral_ops.cache_clear()
    kwargs = {"single_channel": True} if "single_channel" in path else {}
    cls = exponax.stepper
    for part in path.split("(")[0].split("."):
        cls = getattr(cls, part)
    options = {} if get_pde(name).is_linear else {"order": 4}
    theirs = cls(dim, length, n, dt, **options, **kwargs)
    grid = Grid(dim, n, length)
    # Band-limited (no Nyquist modes): exponax keeps odd-derivative symbols at the Nyquist mode, pfm zeroes them.
    u0 = grid.ifft(grid.fft(_smooth(grid, channels)) * grid.dealias_mask(0.99))[0]
    x = jnp.asarray(u0.numpy())
    for _ in range(5):
        x = theirs(x)
    ours = make_stepper(name, dim=dim, n=n, length=length, dt=dt, check=False)(u0[None], 5)[0]
    expected = torch.from_numpy(np.array(x))
    error = float((ours - expected).abs().max() / expected.abs().max())
    assert error < (1e-4 if "kolmogorov" in name else 2e-5), error
    spectral_ops.cache_clear()


def test_korteweg_de_vries_converges_to_fine_dt_reference() -> None:
    """Dispersive (complex) symbols need the complex contour average: 5 steps of 0.01 vs 100 of 5e-4."""
    grid = Grid(1, 64, 20.0)
    u0 = grid.ifft(grid.fft(_smooth(grid)) * grid.dealias_mask(0.99))[:1]
    fine = make_stepper("korteweg_de_vries", dim=1, n=64, length=20.0, dt=5e-4)(u0, 100)
    coarse = make_stepper("korteweg_de_vries", dim=1, n=64, length=20.0, dt=0.01, check=False)(u0, 5)
    assert (coarse - fine).abs().max() < 1e-3 * fine.abs().max()
