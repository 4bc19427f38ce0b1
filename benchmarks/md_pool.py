"""Coarse-grained chain dynamics (datagen/md): Langevin steps per second, hand-written forces vs autograd.

The reference computes the forces the generic way, as -grad U by autograd of ``datagen.md.energy``; pfm uses
the hand-written ``datagen.md.forces`` (checked against autograd in tests/test_md.py). Same chains, same
random stream, one run. Also the pool: training batches per second of ``ChainDataModule`` as configured in
``experiment=platito_demo``.

    OMP_NUM_THREADS=1 python benchmarks/md_pool.py                     # CPU
    python benchmarks/md_pool.py --device cuda --num-chains 1024 --residues 40
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# benchmarks/datagen.py would shadow the datagen package: keep this folder off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

from datagen.md import ForceField, energy, forces, make_chains  # noqa: E402
from datagen.md.chains import BOLTZMANN_KJ  # noqa: E402
from datagen.seeding import generator  # noqa: E402


def autograd_forces(x: torch.Tensor, system, ff: ForceField) -> torch.Tensor:
    """The reference: -grad U by autograd."""
    with torch.enable_grad():
        y = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(energy(y, system, ff).sum(), y)
    return -grad * system.mask[..., None]


def run(force_fn, x, system, ff, step_size, num_steps, device) -> tuple[float, float, torch.Tensor]:
    """(wall seconds, CPU seconds, final coordinates) of ``num_steps`` overdamped Langevin steps."""
    g = generator(0, "bench", device=device)
    kt = BOLTZMANN_KJ * system.temperature[:, None, None]
    noise = torch.sqrt(2.0 * kt * step_size)
    mask = system.mask[..., None]
    for warm in (True, False):
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        y = x.clone()
        for _ in range(3 if warm else num_steps):
            y = y + step_size * force_fn(y, system, ff)
            y = y + noise * torch.randn(y.shape, generator=g, device=device) * mask
        if device.type == "cuda":
            torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu, y


def main() -> None:
    """Print steps/s and chain-frames/s of both force implementations, and the pool's batches/s."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num-chains", type=int, default=32)
    parser.add_argument("--residues", type=int, default=12)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--pool-batches", type=int, default=10)
    args = parser.parse_args()
    device = torch.device(args.device)
    ff = ForceField()
    g = generator(1, "bench-chains", device=device)
    lengths = torch.full((args.num_chains,), args.residues, device=device)
    system = make_chains(lengths, args.residues, torch.full((args.num_chains,), 350.0), g, ff)
    x = system.native.clone()
    print(
        f"device {device}, threads {torch.get_num_threads()}, {args.num_chains} chains x {args.residues} "
        f"residues, {args.steps} Langevin steps"
    )
    results = {}
    for name, fn in (("autograd forces (reference)", autograd_forces), ("hand-written forces (pfm)", forces)):
        wall, cpu, y = run(fn, x, system, ff, 2e-4, args.steps, device)
        results[name] = (wall, y)
        print(
            f"  {name:30s} {args.steps / wall:9.1f} steps/s  {args.steps * args.num_chains / wall:11.0f} "
            f"chain-steps/s  (wall {wall:.2f} s, CPU {cpu:.2f} s)"
        )
    (w_ref, y_ref), (w_pfm, y_pfm) = results.values()
    diff = float((y_ref - y_pfm).abs().max())
    print(f"  speed-up {w_ref / w_pfm:.2f}x; max |x_ref - x_pfm| after {args.steps} steps: {diff:.2e} nm")

    from pfm.data.chains import ChainDataModule

    dm = ChainDataModule(
        min_residues=8, max_residues=12, num_chains=16, substeps=10, batch_size=16, embeddings="identity"
    )
    dm.setup()
    dm.next_batch()
    wall = time.perf_counter()
    for _ in range(args.pool_batches):
        dm.next_batch()
    wall = time.perf_counter() - wall
    print(
        f"  ChainDataModule (platito_demo settings, CPU): {args.pool_batches / wall:.1f} batches/s of 16 pairs"
    )


if __name__ == "__main__":
    main()
