"""pfm: utilities around training (info, list, download, export, publish, and the subcommands below).

Each subcommand group lives beside the code it drives and registers itself through an ``add_parser(sub)``
function in its module; ``COMMANDS`` below names that module and the one-line help of each subcommand, so a
new command is one entry here and one module there. Only the chosen subcommand's module is imported: ``pfm
--help`` imports no torch, Lightning or Hydra, and ``pfm data check`` only what ``pfm.wellfmt`` needs. A
command whose code loads them (``pfm sample``, ``pfm evaluate``: :mod:`pfm.commands`; ``pfm embed``) sets ``func``
to a ``"module:function"`` string, which is imported only when the command runs
(:func:`datagen.lazy.import_function`), so its ``--help`` stays cheap.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from datagen.lazy import import_function

__all__ = ["COMMANDS", "build_parser", "main"]

# subcommand -> (module with ``add_parser(subparsers)``, which adds it with ``set_defaults(func=...)``; help)
COMMANDS: dict[str, tuple[str, str]] = {
    "list": ("pfm.checkpoints.commands", "hosted checkpoints in the registry, and whether each is cached"),
    "download": ("pfm.checkpoints.commands", "fetch and verify a registry entry's files; prints their paths"),
    "info": (
        "pfm.checkpoints.commands",
        "versions and PDE families; with NAME, a registry entry and its cache state",
    ),
    "registry": ("pfm.checkpoints.commands", "edit the user registry"),
    "export": (
        "pfm.checkpoints.commands",
        "turn a training checkpoint (file or ZeRO shards) into safetensors, config, model card",
    ),
    "publish": (
        "pfm.checkpoints.commands",
        "upload an export folder to the Hugging Face Hub; prints its registry entry",
    ),
    "launch": ("pfm.launch", "submit a training run to a cluster scheduler (SLURM)"),
    "embed": ("pfm.embeddings.cli", "per-residue pLM embeddings of a FASTA file -> .safetensors table"),
    "sample": ("pfm.commands", "roll out TITO/PLaTITO trajectories from a start structure"),
    "data": ("pfm.wellfmt.commands", "check, convert and compute stats of datasets in The Well's layout"),
    "evaluate": (
        "pfm.commands",
        "score a checkpoint: rollouts vs the truth, persistence and mean baselines (docs/evaluate.md)",
    ),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``pfm`` parser: ``command``'s module registers its subcommands, the others are named with their help.

    ``command=None`` imports no subcommand module (``pfm --help``); choosing a name among the placeholders
    is what imports its module (:func:`main` parses again with it).
    """
    parser = argparse.ArgumentParser(prog="pfm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    chosen = COMMANDS[command][0] if command in COMMANDS else None
    for name, (module, text) in COMMANDS.items():
        if module != chosen:
            sub.add_parser(name, help=text, add_help=False)  # a placeholder: parsing stops at it
    if chosen is not None:
        importlib.import_module(chosen).add_parser(sub)
    return parser


def _command(argv: list[str]) -> str | None:
    """The subcommand named in ``argv``: its first word that is not an option."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_command(argv)).parse_args(argv)
    return import_function(args.func)(args)


if __name__ == "__main__":
    sys.exit(main())
