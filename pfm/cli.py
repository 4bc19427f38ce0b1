"""pfm: utilities around training (info, list, download, export, publish, and the subcommands below).

Each subcommand group lives beside the code it drives and registers itself through an ``add_parser(sub)``
function in a module listed in ``_SUBCOMMAND_MODULES``; this file only assembles them, so a new command is one
line here and one module there.
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["main"]

# Modules with ``add_parser(subparsers) -> None``; each adds its subcommands with ``set_defaults(func=...)``.
_SUBCOMMAND_MODULES: list[str] = [
    "pfm.checkpoints.commands",
    "pfm.launch",
    "pfm.embeddings.cli",
    "pfm.sample",
    "pfm.wellfmt.commands",
    "pfm.evaluate",
]


def build_parser() -> argparse.ArgumentParser:
    """The ``pfm`` argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="pfm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
