"""Generation throughput: solver steps and pool crops per second, and pool memory per sample."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping

import torch

from datagen.cuda_graphs import CudaGraphStepper
from datagen.ic import gaussian_random_field
from datagen.pdes import get_pde
from datagen.pool import FamilySpec, PDEPool
from datagen.spectral import Grid
from datagen.stepper import make_stepper

__all__ = ["TABLE_HEADER", "family_row", "pool_throughput", "solver_throughput"]


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def solver_throughput(
    name: str,
    *,
    n: int,
    batch: int,
    num_steps: int,
    dt: float,
    dim: int = 3,
    length: float = 1.0,
    coefficients: Mapping[str, float] | None = None,
    repeats: int = 2,
    device: str = "cpu",
    cuda_graph: bool = False,
    fuse: bool = False,
) -> dict[str, float]:
    """Best-of-``repeats`` wall time of ``num_steps`` steps of ``batch`` fields; grid-point updates/s.

    With ``cuda_graph`` the steps replay a captured CUDA graph (:class:`datagen.cuda_graphs.CudaGraphStepper`).
    With ``fuse`` each ETDRK stage is one compiled kernel (:mod:`datagen.fused`; the warm-up call compiles).
    ``final`` is the state after the last timed call, for comparing the paths.
    """
    pde = get_pde(name)
    stepper = make_stepper(
        name, dim=dim, n=n, length=length, dt=dt, check=False, device=device, **dict(coefficients or {})
    )
    stepper.fuse = fuse
    grid = Grid(dim, n, length, torch.device(device))
    u = gaussian_random_field(
        grid, batch, pde.num_channels(dim), generator=torch.Generator(device).manual_seed(0)
    )
    if cuda_graph:
        stepper = CudaGraphStepper(stepper)
    stepper(u, num_steps if cuda_graph else 1)  # warm-up (allocator, FFT plans, graph capture)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        final = stepper(u, num_steps)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    updates = batch * n**dim * num_steps
    return {"seconds": best, "gp_updates_per_s": updates / best, "final": final}


def pool_throughput(
    spec: FamilySpec,
    *,
    n: int,
    crop: int,
    batch: int,
    num_trajectories: int,
    num_batches: int,
    device: str = "cpu",
) -> dict[str, float]:
    """Crops/s of a one-family pool advanced once per batch (all trajectories stepped), and bytes per sample."""
    # Steady state: no warm-up at start and no refresh, so that every batch costs one step of every trajectory.
    spec = dataclasses.replace(spec, warmup_steps=0)
    pool = PDEPool([spec], n=n, num_trajectories=num_trajectories, refresh_fraction=0.0, device=device)
    pool.advance()
    _sync(device)
    start = time.perf_counter()
    for _ in range(num_batches):
        pool.advance()
        pool.sample_crops(batch, crop)
    _sync(device)
    seconds = time.perf_counter() - start
    return {
        "crops_per_s": batch * num_batches / seconds,
        "bytes_per_sample": pool.memory_bytes() / num_trajectories,
    }


# The family table of `pfm-datagen bench` and benchmarks/datagen.py: a header, then one family_row a family.
TABLE_HEADER = f"{'pde':28s} {'n':>4s} {'M gp-updates/s':>15s} {'crops/s':>9s} {'MiB/sample':>10s}"


def family_row(
    spec: FamilySpec,
    *,
    n: int,
    batch: int,
    num_steps: int,
    crop: int,
    num_batches: int,
    repeats: int = 2,
    device: str = "cpu",
) -> str:
    """One row under :data:`TABLE_HEADER`: the solver at each coefficient range's low end, a one-family pool."""
    solver = solver_throughput(
        spec.name,
        n=n,
        batch=batch,
        num_steps=num_steps,
        dt=spec.dt,
        length=spec.length or 1.0,
        coefficients={k: (v[0] if isinstance(v, (list, tuple)) else v) for k, v in spec.coefficients.items()},
        repeats=repeats,
        device=device,
    )
    pool = pool_throughput(
        spec, n=n, crop=crop, batch=batch, num_trajectories=batch, num_batches=num_batches, device=device
    )
    return (
        f"{spec.name:28s} {n:4d} {solver['gp_updates_per_s'] / 1e6:15.2f} {pool['crops_per_s']:9.1f} "
        f"{pool['bytes_per_sample'] / 2**20:10.2f}"
    )
