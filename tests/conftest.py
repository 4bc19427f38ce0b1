"""Shared fixtures: the config folder, tiny-run overrides, and quiet offline loggers."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
import yaml

if TYPE_CHECKING:
    from pfm.data import OnlineFieldDataModule

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"

# Small enough that a full train/validate/checkpoint cycle takes seconds on 2 CPU cores.
TINY_RUN = [
    "data.n=16",
    "data.crop=16",
    "data.batch_size=2",
    "data.num_trajectories=2",
    "data.num_val_batches=1",
    "trainer.max_steps=3",
    "trainer.val_check_interval=3",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "checkpoint_every_n_steps=3",
]


# Two small online PDE families for the pool and data-stream tests: one scalar (diffusion), one vector (Burgers).
DIFFUSION = {
    "name": "diffusion",
    "dt": 0.01,
    "coefficients": {"diffusivity": [5e-4, 5e-3]},
    "log_uniform": ["diffusivity"],
}
BURGERS = {"name": "burgers", "dt": 0.002, "coefficients": {"diffusivity": [0.04, 0.06]}}


def family_config(name: str, **overrides: object) -> dict:
    """The shipped family config ``conf/data/pde/<name>.yaml`` as a dict, with ``overrides`` on top."""
    return {**yaml.safe_load((CONF_DIR / "data" / "pde" / f"{name}.yaml").read_text()), **overrides}


def small_gray_scott() -> dict:
    """Gray-Scott on a box of 0.5, one step a frame, no warm-up: a cheap two-field family for data tests."""
    return family_config("gray_scott", length=0.5, warmup_steps=0, substeps=1)


def online_gray_scott(**kwargs: object) -> OnlineFieldDataModule:
    """An online source of 2-frame windows of :func:`small_gray_scott` on a 16^2 grid (mixed-source tests)."""
    from pfm.data import OnlineFieldDataModule  # imported here: most tests never load pfm.data

    return OnlineFieldDataModule({"g": small_gray_scott()}, num_spatial_dims=2, n=16, num_frames=2, **kwargs)


# ------------------------------------------------------------------ every test starts from the same state
# Each test (and each module- or session-scoped fixture) starts from the same seed, with the session's torch
# thread count and an environment that earlier tests cannot have changed; so a test gives the same result
# alone (`-k`), in any order, and after any other test. Comparisons of two evaluation orders of one float
# computation take their tolerance from `rounding_tolerance`, never from what one CPU happened to give.

SEED = int(os.environ.get("PFM_TEST_SEED", "0"))  # another value runs the suite on other random inputs
# What torch chose at start-up (OMP_NUM_THREADS, else the cores); every test begins with it, so that a run
# with OMP_NUM_THREADS=2 tests 2-thread float reduction orders in every test that does not opt out.
SESSION_THREADS = torch.get_num_threads()


def seed_everything(seed: int = SEED) -> None:
    """Seed torch, numpy and random: what every test and every wider-scoped fixture starts from."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef, request: pytest.FixtureRequest) -> object:
    """A module- or session-scoped fixture draws from SEED, wherever in the run it is first set up."""
    if fixturedef.scope != "function":
        seed_everything()
    return (yield)


@pytest.fixture(autouse=True, scope="module")
def _restore_environment_after_module() -> Iterator[None]:
    """Environment variables a module-scoped fixture sets end with the module."""
    before = dict(os.environ)
    yield
    _restore_environment(before)


@pytest.fixture(autouse=True)
def _same_start_for_every_test() -> Iterator[None]:
    """Seeded generators, the session's torch threads, and os.environ restored after the test."""
    before = dict(os.environ)
    torch.set_num_threads(SESSION_THREADS)
    seed_everything()
    yield
    torch.set_num_threads(SESSION_THREADS)
    _restore_environment(before)


def _restore_environment(before: dict[str, str]) -> None:
    for name in set(os.environ) - set(before):
        del os.environ[name]
    for name, value in before.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Small FFTs on a shared 2-core machine: one torch thread avoids OpenMP contention (restored after).

    An opt-in on top of the session's count, not the default: the default keeps OMP_NUM_THREADS=2 meaningful.
    """
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(SESSION_THREADS)


ROUNDING_LAMBDA = 6.0  # rounding_tolerance's confidence factor; see there


def rounding_tolerance(
    reference: torch.Tensor, *, terms: int, scale: float | None = None
) -> dict[str, float]:
    """``assert_close`` tolerances for two evaluation orders of one computation whose result is ``reference``.

    For orders that differ only in rounding (padded vs unpadded, batched vs one by one, fused vs plain,
    compiled vs eager, split over processes), in ``reference``'s precision (float64 where the code allows).
    Error model: Higham and Mary's probabilistic rounding error analysis (SIAM J. Sci. Comput. 41(5), 2019):
    with rounding errors of mean zero, a sum of n terms, in any order, with or without FMA, is off by at most
    lambda * sqrt(n) * u * S, u = eps / 2, S = the size of the summed terms, except with a probability below
    2n exp(-lambda^2 / 2) (2e-5 for lambda = 6 and n = 600). Two orders of one computation then differ by at
    most 2 * lambda * sqrt(n) * u * S = lambda * sqrt(n) * eps * S, the ``atol`` returned (``rtol`` 0: the
    error follows the size of the values, not of each element). The worst case (n instead of sqrt(n)) is
    never reached by the reductions of BLAS or FFT libraries; it would also hide leaks 30x larger.

    - ``terms`` (n): the number of terms summed along the longest chain of the computation; for a network,
      the sum over its layers (and passes) of each layer's reduction lengths (normalised layers pass errors
      on unamplified);
    - ``scale`` (S): by default ``max|reference|``; pass the size of the summed terms when they are larger
      than the result (cancellation).

    A real bug (leaked padding, a wrong row, a missed term) moves results by far more than this.
    """
    eps = torch.finfo(reference.real.dtype).eps
    size = float(reference.detach().abs().max()) if scale is None else float(scale)
    if terms < 1:
        raise ValueError(f"terms={terms}; expected the number of summed terms, at least 1")
    return {"rtol": 0.0, "atol": ROUNDING_LAMBDA * terms**0.5 * eps * size}


# ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def conf_dir() -> Path:
    """The repository's Hydra config folder."""
    return CONF_DIR


@pytest.fixture
def tiny_run() -> list[str]:
    """Overrides that shrink any autoencoder experiment to a few-second run."""
    return list(TINY_RUN)


def pfm_train(
    args: Sequence[str],
    out: Path,
    *,
    full_error: bool = False,
    timeout: int = 900,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``python -m pfm.train *args`` with run folder and working directory ``out``; wandb offline.

    ``env``: variables added to this process's environment for the run (os.environ itself is left alone).
    """
    out.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        **(env or {}),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "HYDRA_FULL_ERROR": "1" if full_error else "0",
    }
    cmd = [sys.executable, "-m", "pfm.train", *args, f"hydra.run.dir={out}"]
    return subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=timeout)


def resume_run(steps: int, keep_last: int | None) -> list[str]:
    """A conv_vae run of ``steps`` steps, checkpointed every 3, as the resume and SLURM preemption tests use it."""
    return [
        "model=conv_vae",  # small and fast; pinned, since test_resume's mismatch test names one of its keys
        "data.n=16",
        "data.crop=16",
        "data.batch_size=2",
        "data.num_trajectories=2",
        "data.num_val_batches=1",
        f"trainer.max_steps={steps}",
        "trainer.val_check_interval=4",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "checkpoint_every_n_steps=3",
        f"checkpoint_keep_last={'null' if keep_last is None else keep_last}",
        "plots=false",
        "logger=csv",
    ]
