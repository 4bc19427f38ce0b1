"""``pfm embed``'s arguments, apart from its code (:func:`pfm.embeddings.fasta.run`, which loads torch).

``func`` names the code as ``"pfm.embeddings.fasta:run"``, which :func:`pfm.cli.main` imports only when the
command runs, so ``pfm embed --help`` (and a mistyped flag) answers without loading torch.
"""

from __future__ import annotations

import argparse

from datagen.argtypes import at_least

__all__ = ["PROVIDER_NAMES", "add_parser"]

# the keys of pfm.embeddings.providers.PROVIDERS, whose module loads torch (a test keeps the two equal)
PROVIDER_NAMES = ("esm2", "esmc", "identity")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``pfm embed``."""
    p = sub.add_parser("embed")
    p.add_argument("--provider", required=True, choices=PROVIDER_NAMES)
    p.add_argument("--fasta", required=True, help="sequences to embed (one-letter codes)")
    p.add_argument("--out", required=True, help="table to write (.safetensors); existing entries are kept")
    p.add_argument("--weights", help="LOCAL folder of the pLM (esm2: transformers folder; esmc: .pth)")
    p.add_argument("--layer", type=int, default=None, help="hidden layer to read (default: final embeddings)")
    p.add_argument("--batch-size", type=at_least(1, 8), default=8)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func="pfm.embeddings.fasta:run")
