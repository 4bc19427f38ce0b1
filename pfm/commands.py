"""The command lines of ``pfm sample`` and ``pfm evaluate``: their arguments, apart from their code.

``pfm sample --help`` and ``pfm evaluate --help`` (and a mistyped flag) answer from here without loading torch,
Lightning or Hydra: each command's ``func`` names its code as ``"module:function"``, which :func:`pfm.cli.main`
imports only when the command runs (:func:`pfm.sample.run`, :func:`pfm.evaluate.run`).
:func:`pfm.evaluate.evaluate_checkpoint` parses its options with the same arguments.
"""

from __future__ import annotations

import argparse

from datagen.argtypes import at_least, positive

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `pfm sample` and `pfm evaluate`."""
    _add_sample(sub)
    _add_evaluate(sub)


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample")
    p.add_argument("checkpoint", help="official .ckpt, pfm training .ckpt, or `pfm export` folder")
    p.add_argument("--pdb", required=True, help="start structure (its C-alpha atoms and sequence)")
    p.add_argument("--embeddings", help="per-residue pLM table (`pfm embed` .safetensors or official .pt)")
    p.add_argument("--name", help="entry name in an official .pt table (default: the only entry)")
    p.add_argument("--lag", type=positive(1.0), default=1.0, help="lag per transition, ns")
    p.add_argument("--temperature", type=positive(300.0), default=300.0, help="K")
    p.add_argument("--steps", type=at_least(1, 1000), default=1000, help="transitions per trajectory")
    p.add_argument("--flow-steps", type=at_least(1, 50), default=50, help="Euler steps per transition")
    p.add_argument(
        "--trajectories", type=at_least(1, 100), default=100, help="trajectories, all sampled as one batch"
    )
    p.add_argument(
        "--pdb-trajectories",
        type=at_least(0, 1),
        default=1,
        help="how many trajectories to also write as PDB",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func="pfm.sample:run")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate")
    p.add_argument("checkpoint", help="pfm-train .ckpt, `pfm export` folder or registry name")
    p.add_argument(
        "overrides", nargs="*", help="data=<choice>, data.KEY=VALUE, evaluation.KEY=VALUE (chains)"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--split", default="test", help="split of a Well-layout dataset (train, valid, test)")
    p.add_argument("--context", type=int, help="context frames (default: the data's num_frames)")
    p.add_argument("--start", type=int, default=0, help="first frame of each trajectory used (Well layout)")
    p.add_argument("--steps", type=int, help="rollout steps (default: the last window's end, as data allow)")
    p.add_argument("--windows", default=None, help="rollout windows, e.g. 1,2-5,6-12,13-30 (the default)")
    p.add_argument("--num-trajectories", type=int, help="at most this many (Well) / this many (online, 16)")
    p.add_argument("--batch-size", type=int, default=4, help="trajectories rolled out together")
    p.add_argument("--seed", type=int, help="seed of held-out online data (default: derived from the run's)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func="pfm.evaluate:run")
