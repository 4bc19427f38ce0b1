"""pfm: utilities around training (``pfm info``, ``pfm export CKPT --out DIR``, and the subcommands below).

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
_SUBCOMMAND_MODULES: list[str] = ["pfm.embeddings.cli", "pfm.launch"]


def _info(_: argparse.Namespace) -> int:
    import torch

    import datagen
    import pfm

    print(f"pfm {pfm.__version__}, torch {torch.__version__}, cuda available: {torch.cuda.is_available()}")
    print(f"PDE families: {', '.join(datagen.known_pdes())}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from pfm.checkpoints import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out)
    for name in ("model.safetensors", "config.yaml", "README.md", "SHA256SUMS"):
        print(out / name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``pfm`` argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="pfm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, devices and registered PDE families").set_defaults(func=_info)
    export = sub.add_parser(
        "export", help="turn a training checkpoint (file or ZeRO shards) into safetensors, config, model card"
    )
    export.add_argument("checkpoint", help="a step*.ckpt / last.ckpt file or DeepSpeed checkpoint folder")
    export.add_argument("--out", required=True, help="output folder (created if missing)")
    export.set_defaults(func=_export)
    for name in _SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
