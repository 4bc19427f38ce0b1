"""pfm-datagen: list PDE families, write webdataset shards, print generation throughput.

Examples:
    pfm-datagen list
    pfm-datagen write --pde burgers --samples 1024 --out data/burgers --n 64 --crop 32
    pfm-datagen write --pde navier_stokes_velocity --kind pairs --lag 2 --crop 0 --n 32 --samples 64 --out d
    pfm-datagen bench --pde kuramoto_sivashinsky --n 64 --batch 4 --steps 20
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib.resources import files
from pathlib import Path

import torch
import yaml

from datagen.argtypes import at_least
from datagen.bench import TABLE_HEADER, family_row
from datagen.pdes import get_pde, known_pdes
from datagen.pool import FamilySpec
from datagen.shards import write_shards

__all__ = ["load_family", "main"]

# The PDE family configs ship inside pfm's config package (pfm.conf, the repository's conf/); read as package
# data (as pfm.paths.CONF_DIR does), so datagen imports no pfm code
_CONF = Path(os.environ.get("PFM_CONFIG_DIR") or str(files("pfm.conf"))) / "data" / "pde"


def load_family(name: str, config_dir: Path = _CONF) -> FamilySpec:
    """The :class:`FamilySpec` of ``name`` from ``conf/data/pde/<name>.yaml`` (or the family defaults)."""
    get_pde(name)  # unknown names list the known ones
    path = config_dir / f"{name}.yaml"
    if path.is_file():
        # the family configs are plain YAML (no interpolation), so no Hydra is needed here
        return FamilySpec(**yaml.safe_load(path.read_text()))
    raise ValueError(
        f"No config {path} for PDE {name!r}; write one (see docs/new_pde.md) or pass --config-dir."
    )


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand."""
    parser = argparse.ArgumentParser(
        prog="pfm-datagen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="registered PDE families")
    write = sub.add_parser("write", help="write webdataset tar shards")
    write.add_argument("--pde", nargs="+", required=True, help="family names (configs from conf/data/pde)")
    write.add_argument("--samples", type=at_least(1, 1024), required=True)
    write.add_argument("--out", required=True)
    write.add_argument("--kind", choices=["crops", "windows", "pairs"], default="crops")
    write.add_argument("--n", type=at_least(2, 64), default=64)
    write.add_argument("--dims", type=at_least(1, 3), default=3, help="num_spatial_dims")
    write.add_argument(
        "--crop", type=at_least(0, 32), default=32, help="crop size; 0 keeps whole fields (windows/pairs)"
    )
    write.add_argument("--window", type=at_least(1, 4), default=4)
    write.add_argument("--lag", type=at_least(1, 1), default=1)
    write.add_argument("--batch", type=at_least(1, 8), default=8, help="samples drawn per pool step")
    write.add_argument("--num-trajectories", type=at_least(1, 8), default=8)
    write.add_argument("--samples-per-shard", type=at_least(1, 256), default=256)
    write.add_argument("--seed", type=int, default=0)
    write.add_argument(
        "--pool-index", type=at_least(0, 0), default=0, help="pool index (disjoint random streams)"
    )
    # the flag's name before "shard" came to mean only a tar file: refused below, naming --pool-index
    write.add_argument("--shard", type=int, default=None, help=argparse.SUPPRESS)
    write.add_argument("--config-dir", type=Path, default=_CONF)
    bench = sub.add_parser("bench", help="print generation throughput")
    bench.add_argument("--pde", nargs="+", default=None, help="default: every family with a 3D config")
    bench.add_argument("--n", type=at_least(2, 32), default=32)
    bench.add_argument("--batch", type=at_least(1, 4), default=4)
    bench.add_argument("--steps", type=at_least(1, 10), default=10)
    bench.add_argument("--crop", type=at_least(1, 16), default=16)
    bench.add_argument(
        "--threads", type=at_least(1, 2), default=None, help="torch threads (default: torch's)"
    )
    bench.add_argument("--config-dir", type=Path, default=_CONF)
    args = parser.parse_args(argv)

    if args.command == "list":
        print("\n".join(known_pdes()))
        return 0
    if args.command == "write":
        if args.shard is not None:
            parser.error(
                f"--shard {args.shard}: the pool index is now --pool-index (a shard is one of the tar files "
                f"written). Fix: --pool-index {args.shard}."
            )
        if Path(args.out).exists() and not Path(args.out).is_dir():
            parser.error(
                f"--out {args.out} is an existing file; expected a folder for the shards (new, or one of "
                f"earlier shards). Fix: pass another path, e.g. --out {args.out}_shards, or move the file away."
            )
        families = [load_family(name, args.config_dir) for name in args.pde]
        paths = write_shards(
            families,
            args.out,
            num_samples=args.samples,
            samples_per_shard=args.samples_per_shard,
            kind=args.kind,
            crop=args.crop or None,
            window=args.window,
            lag=args.lag,
            batch=args.batch,
            pool_kwargs={
                "n": args.n,
                "num_spatial_dims": args.dims,
                "num_trajectories": args.num_trajectories,
                "seed": args.seed,
                "pool_index": args.pool_index,
            },
        )
        print(f"wrote {args.samples} samples in {len(paths)} shards to {args.out}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    print(TABLE_HEADER)
    for name in args.pde or known_pdes(3):
        spec = load_family(name, args.config_dir)
        print(
            family_row(
                spec,
                n=args.n,
                batch=args.batch,
                num_steps=args.steps,
                crop=min(args.crop, args.n),
                num_batches=3,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
