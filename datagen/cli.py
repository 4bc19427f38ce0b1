"""pfm-datagen: generate PDE data outside training (``list`` now; shard writing and benchmarks follow)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand."""
    from datagen.pdes import known_pdes

    parser = argparse.ArgumentParser(prog="pfm-datagen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="registered PDE families")
    args = parser.parse_args(argv)
    if args.command == "list":
        print("\n".join(known_pdes()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
