"""Pool advance time without and with CUDA graphs (``PDEPool(graphs=False|True)``), side by side, in one run.

Builds two pools of the same families with the same seed (tadpole_pretrain's by default, each family's
conf/data/pde/<name>.yaml), advances both ``--advances`` times after ``--warmup`` advances (graph captures
happen there), and prints seconds per advance (refreshes included: that is what a training step pays), the
seconds of each family's step alone, the captures per family, and whether the two pools' frames are bitwise
equal (they must be: the graph replays the same kernels).

    python benchmarks/pool_graphs.py --device cuda                  # 128^3, 8 trajectories per family
    python benchmarks/pool_graphs.py --n 16 --advances 3            # CPU smoke run (graphs are a plain call)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# benchmarks/datagen.py is named like the package; keep this folder off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

from datagen import FamilySpec, PDEPool  # noqa: E402
from datagen.families import load_family  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"


def _experiment_families(experiment: str) -> list[str]:
    """The PDE families an experiment trains on: the non-null ``data.pdes`` entries of its composed config."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}"])
    pdes = cfg.data.get("pdes") or {}
    return [name for name, spec in pdes.items() if spec is not None]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_pool(specs: list[FamilySpec], args: argparse.Namespace, graphs: bool) -> dict[str, object]:
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    pool = PDEPool(
        specs,
        n=args.n,
        num_trajectories=args.num_trajectories,
        refresh_fraction=args.refresh_fraction,
        seed=args.seed,
        device=device,
        graphs=graphs,
    )
    for _ in range(args.warmup):
        pool.advance()
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.advances):
        pool.advance()
    _sync(device)
    per_advance = (time.perf_counter() - start) / args.advances
    steps = {}
    for fam in pool.families:  # the step alone (no refresh), on a copy so the pool's frames stay comparable
        u = fam.current.clone()
        fam.step_all(u, fam.spec.substeps)
        _sync(device)
        start = time.perf_counter()
        for _ in range(args.advances):
            fam.step_all(u, fam.spec.substeps)
        _sync(device)
        steps[fam.spec.name] = (time.perf_counter() - start) / args.advances
    return {
        "per_advance": per_advance,
        "steps": steps,
        "captures": {f.spec.name: getattr(f.step_all, "num_captures", 0) for f in pool.families},
        "frames": [f.frames for f in pool.families],
        "reserved": torch.cuda.max_memory_reserved(device) if device.type == "cuda" else 0,
    }


def main() -> None:
    """Parse arguments, time both pools, print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--experiment", default="tadpole_pretrain", help="take the PDE families from this config"
    )
    parser.add_argument(
        "--n", type=int, default=None, help="grid points per axis (default 128 on CUDA, 32 on CPU)"
    )
    parser.add_argument("--num-trajectories", type=int, default=8)
    parser.add_argument("--refresh-fraction", type=float, default=0.05)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--advances", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.n is None:
        args.n = 128 if torch.device(args.device).type == "cuda" else 32
    names = _experiment_families(args.experiment)
    if not names:
        raise SystemExit(f"experiment={args.experiment} trains on no PDE families (data.pdes); pick another.")
    specs: list[FamilySpec] = [load_family(name) for name in names]  # conf/data/pde/<name>.yaml
    print(
        f"{args.experiment}: {len(specs)} families, n={args.n}, {args.num_trajectories} trajectories each, "
        f"refresh {args.refresh_fraction}, device {args.device}"
        + (
            f" ({torch.cuda.get_device_name(args.device)})"
            if torch.device(args.device).type == "cuda"
            else ""
        )
    )
    plain = _time_pool(specs, args, graphs=False)
    graphed = _time_pool(specs, args, graphs=True)
    equal = all(torch.equal(a, b) for a, b in zip(plain["frames"], graphed["frames"], strict=True))
    print(f"{'family':26s} {'plain s/step':>13s} {'graph s/step':>13s} {'speed-up':>9s} {'captures':>9s}")
    for name in plain["steps"]:
        a, b = plain["steps"][name], graphed["steps"][name]
        print(f"{name:26s} {a:13.5f} {b:13.5f} {a / b:8.2f}x {graphed['captures'][name]:9d}")
    a, b = plain["per_advance"], graphed["per_advance"]
    print(f"{'pool.advance() (refreshes)':26s} {a:13.5f} {b:13.5f} {a / b:8.2f}x")
    if plain["reserved"]:
        gib = plain["reserved"] / 2**30, graphed["reserved"] / 2**30
        print(f"peak CUDA memory reserved: plain {gib[0]:.2f} GiB, graphs {gib[1]:.2f} GiB")
    print(f"frames bitwise equal with and without graphs: {equal}")


if __name__ == "__main__":
    main()
