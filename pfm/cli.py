"""pfm: utilities around training (``pfm info`` now; download, export and evaluate join as they land)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _info(_: argparse.Namespace) -> int:
    import torch

    import datagen
    import pfm

    print(f"pfm {pfm.__version__}, torch {torch.__version__}, cuda available: {torch.cuda.is_available()}")
    print(f"PDE families: {', '.join(datagen.known_pdes())}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand."""
    parser = argparse.ArgumentParser(prog="pfm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, devices and registered PDE families").set_defaults(func=_info)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
