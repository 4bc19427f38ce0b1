"""pfm-datagen: list PDE families, write webdataset shards, print generation throughput.

Examples:
    pfm-datagen list
    pfm-datagen write --pde burgers --samples 1024 --out data/burgers --n 64 --crop 32
    pfm-datagen write --pde navier_stokes_velocity --kind pairs --lag 2 --crop 0 --n 32 --samples 64 --out d
    pfm-datagen bench --pde kuramoto_sivashinsky --n 64 --batch 4 --steps 20

This module holds the arguments; each command names its code in :mod:`datagen.families` as ``"module:function"``,
imported only when the command runs, so ``--help`` (and a mistyped flag) loads no torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from datagen.argtypes import at_least
from datagen.lazy import import_function

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand."""
    parser = argparse.ArgumentParser(
        prog="pfm-datagen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="registered PDE families").set_defaults(func="datagen.families:list_families")
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
    write.add_argument("--config-dir", type=Path, default=None, help="default: pfm's conf/data/pde")
    write.set_defaults(func="datagen.families:write")
    bench = sub.add_parser("bench", help="print generation throughput")
    bench.add_argument("--pde", nargs="+", default=None, help="default: every family with a 3D config")
    bench.add_argument("--n", type=at_least(2, 32), default=32)
    bench.add_argument("--batch", type=at_least(1, 4), default=4)
    bench.add_argument("--steps", type=at_least(1, 10), default=10)
    bench.add_argument("--crop", type=at_least(1, 16), default=16)
    bench.add_argument(
        "--threads", type=at_least(1, 2), default=None, help="torch threads (default: torch's)"
    )
    bench.add_argument("--config-dir", type=Path, default=None, help="default: pfm's conf/data/pde")
    bench.set_defaults(func="datagen.families:bench")
    args = parser.parse_args(argv)

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
    return import_function(args.func)(args)


if __name__ == "__main__":
    sys.exit(main())
