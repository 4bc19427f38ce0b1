"""Generation throughput per PDE family, side by side with exponax (JAX, CPU) and torchfsm.

Same equation, grid, dt, step count and batch for each library; prints M grid-point updates/s and the
ratios pfm/exponax and pfm/torchfsm for diffusion, Burgers and Kuramoto-Sivashinsky in 3D, then pfm's own
figures (solver gp-updates/s, pool crops/s, pool memory per sample) for every 3D family.

    python benchmarks/datagen.py --n 64 --batch 4 --steps 20         # needs the `bench` extra
    python benchmarks/datagen.py --n 64 128 --families-only
    python benchmarks/datagen.py --device cuda --n 64 128 --compare-only   # adds pfm replayed from a CUDA graph
    python benchmarks/datagen.py --n 64 --compare-only --fuse --cases burgers kuramoto_sivashinsky --threads 2

``--fuse`` adds pfm with each ETDRK stage compiled into one kernel (``datagen/fused.py``; on CUDA also fused
stages replayed from a CUDA graph), its ratios to plain pfm and exponax, and the largest |fused - plain| of
the final state beside the largest |plain| (float32 round-off, not bitwise: fused multiply-adds).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

# This file is named like the package it measures; keep its folder off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from datagen.bench import TABLE_HEADER, _sync, family_row, solver_throughput  # noqa: E402
from datagen.families import load_family  # noqa: E402
from datagen.pdes import check_limits, get_pde, known_pdes  # noqa: E402
from datagen.spectral import Grid  # noqa: E402

# name -> (coefficients, domain length, dt); the same equation in all three libraries.
CASES = {
    "diffusion": ({"diffusivity": 0.01}, 1.0, 0.01),
    "burgers": ({"diffusivity": 0.02, "convection_scale": 1.0}, 1.0, 0.001),
    "kuramoto_sivashinsky": ({}, 20.0, 0.005),
}


def _exponax(
    name: str, n: int, length: float, dt: float, batch: int, steps: int, coefficients: dict
) -> float:
    import exponax as ex
    import jax
    import jax.numpy as jnp

    if name == "diffusion":
        stepper = ex.stepper.Diffusion(3, length, n, dt, diffusivity=coefficients["diffusivity"])
        channels = 1
    elif name == "burgers":
        stepper = ex.stepper.Burgers(3, length, n, dt, diffusivity=coefficients["diffusivity"], order=4)
        channels = 3
    else:
        stepper = ex.stepper.KuramotoSivashinsky(3, length, n, dt, order=4)
        channels = 1
    run = jax.jit(jax.vmap(lambda u: jax.lax.fori_loop(0, steps, lambda _, v: stepper(v), u)))
    u = jnp.asarray(
        np.random.default_rng(0).standard_normal((batch, channels, n, n, n)).astype(np.float32) * 0.1
    )
    run(u).block_until_ready()
    best = math.inf
    for _ in range(2):
        start = time.perf_counter()
        run(u).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return batch * n**3 * steps / best


def _torchfsm(
    name: str,
    n: int,
    length: float,
    dt: float,
    batch: int,
    steps: int,
    coefficients: dict,
    device: str = "cpu",
) -> float:
    from torchfsm import pde
    from torchfsm.operator import Laplacian

    if name == "diffusion":
        op, channels = coefficients["diffusivity"] * Laplacian(), 1
    elif name == "burgers":
        op, channels = pde.Burgers(coefficients["diffusivity"]), 3
    else:
        op, channels = pde.KuramotoSivashinskyHighDim(), 1
    mesh = [(0, length, n)] * 3
    u = torch.randn(batch, channels, n, n, n, device=device) * 0.1
    op.integrate(u, dt=dt, step=1, mesh=mesh)
    best = math.inf
    for _ in range(2):
        _sync(device)
        start = time.perf_counter()
        op.integrate(u, dt=dt, step=steps, mesh=mesh)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return batch * n**3 * steps / best


def _fused_header(graphs: bool) -> str:
    head = f"  | {'fused':>8s} {'/plain':>7s} {'/exponax':>9s} {'max|fused-plain|':>16s} {'max|plain|':>10s}"
    if graphs:
        head += f"  | {'fused+graph':>11s} {'/exponax':>9s} {'max|f+g-plain|':>14s}"
    return head


def _fused_runs(name: str, common: dict, graphs: bool) -> dict[str, dict | str]:
    """Fused ETDRK stages (and fused + CUDA graph on CUDA): label -> solver_throughput result, or the error."""
    runs = [("fused", {})] + ([("fused+graph", {"cuda_graph": True})] if graphs else [])
    out: dict[str, dict | str] = {}
    for label, options in runs:
        try:
            out[label] = solver_throughput(name, fuse=True, **options, **common)
        except RuntimeError as error:  # a compile failure names its fix; keep the other rows going
            print(f"{name} {common['n']}: {label} failed: {str(error)[:400]}", file=sys.stderr, flush=True)
            out[label] = str(error)
    return out


def _fused_columns(runs: dict[str, dict | str], plain: dict, theirs: float) -> str:
    """Rate, ratios and max |fused - plain| of the final state, per fused run."""
    scale = plain["final"].abs().max().item()
    out = ""
    for label, fused in runs.items():
        if isinstance(fused, str):
            out += f"  | {label} failed"
            continue
        rate = fused["gp_updates_per_s"]
        diff = (fused["final"] - plain["final"]).abs().max().item()
        if label == "fused":
            out += f"  | {rate / 1e6:8.2f} {rate / plain['gp_updates_per_s']:7.2f} {rate / theirs:9.2f}"
            out += f" {diff:16.2e} {scale:10.2e}"
        else:
            out += f"  | {rate / 1e6:11.2f} {rate / theirs:9.2f} {diff:14.2e}"
    return out


def main() -> None:
    """Parse arguments and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, nargs="+", default=[64])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="pfm and torchfsm device; exponax uses JAX's default")
    parser.add_argument("--families-only", action="store_true", help="skip the exponax/torchfsm comparison")
    parser.add_argument("--compare-only", action="store_true", help="skip the per-family table")
    parser.add_argument(
        "--cases", nargs="+", default=list(CASES), choices=list(CASES), help="compared equations"
    )
    parser.add_argument(
        "--fuse",
        action="store_true",
        help="add pfm with fused ETDRK stages (torch.compile, datagen/fused.py), and fused + CUDA graph on CUDA",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}, batch {args.batch}, steps {args.steps}")
    if not args.families_only:
        graphs = torch.device(args.device).type == "cuda"
        print(
            f"{'pde':24s} {'n':>4s} {'pfm':>8s} {'exponax':>8s} {'torchfsm':>9s} {'/exponax':>9s} {'/torchfsm':>9s}  (M gp-updates/s)"
            + ("  | pfm+graph /exponax  max|graph-plain|" if graphs else "")
            + (_fused_header(graphs) if args.fuse else "")
        )
        for n in args.n:
            for name in args.cases:
                coefficients, length, dt = CASES[name]
                common = dict(
                    n=n,
                    batch=args.batch,
                    num_steps=args.steps,
                    dt=dt,
                    length=length,
                    coefficients=coefficients,
                    device=args.device,
                )
                linear = get_pde(name).is_linear
                plain = solver_throughput(name, **common)
                ours = plain["gp_updates_per_s"]
                extra = ""
                if graphs:  # the same steps replayed from a CUDA graph (datagen/cuda_graphs.py)
                    graphed = solver_throughput(name, cuda_graph=True, **common)
                    diff = (graphed["final"] - plain["final"]).abs().max().item()
                    extra = f"  | {graphed['gp_updates_per_s'] / 1e6:9.2f}"
                # fused right after plain (before exponax and torchfsm), so both meet the same machine state
                fused_runs = _fused_runs(name, common, graphs) if args.fuse and not linear else {}
                try:
                    theirs = _exponax(name, n, length, dt, args.batch, args.steps, coefficients)
                except ImportError:  # the `bench` extra is not installed
                    theirs = math.nan
                try:
                    fsm = _torchfsm(name, n, length, dt, args.batch, args.steps, coefficients, args.device)
                except ImportError:
                    fsm = math.nan
                if graphs:
                    extra += f" {graphed['gp_updates_per_s'] / theirs:9.2f}  {diff:.2e}"
                if fused_runs:
                    extra += _fused_columns(fused_runs, plain, theirs)
                elif args.fuse:  # one multiply per step: nothing to fuse
                    extra += "  | (linear: nothing to fuse)"
                print(
                    f"{name:24s} {n:4d} {ours / 1e6:8.2f} {theirs / 1e6:8.2f} {fsm / 1e6:9.2f} {ours / theirs:9.2f} {ours / fsm:9.2f}"
                    + extra,
                    flush=True,
                )
    if args.compare_only:
        return
    print(f"\n{TABLE_HEADER}")
    for n in args.n:
        for name in known_pdes(3):
            spec = load_family(name)
            try:  # a config's ranges are chosen for some grid sizes; say so instead of failing the table
                check_limits(
                    get_pde(name), Grid(3, n, spec.length or 1.0), spec.dt, spec.order, spec.ranges()
                )
            except ValueError as error:
                print(
                    f"{name:28s} {n:4d}   skipped: conf/data/pde/{name}.yaml is outside its limits at this n "
                    f"({str(error).split(': ', 1)[1][:80]}...)"
                )
                continue
            row = family_row(
                spec,
                n=n,
                batch=args.batch,
                num_steps=max(2, args.steps // 4),
                crop=32,
                num_batches=2,
                repeats=1,
                device=args.device,
            )
            print(row, flush=True)


if __name__ == "__main__":
    main()
