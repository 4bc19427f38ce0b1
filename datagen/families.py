"""What ``pfm-datagen`` runs: the PDE family configs (:func:`load_family`) and its list, write and bench commands.

Its arguments live in :mod:`datagen.cli`, which names these functions as ``"datagen.families:<name>"`` so that
``pfm-datagen --help`` loads no torch.
"""

from __future__ import annotations

import argparse
import os
from importlib.resources import files
from pathlib import Path

import torch
import yaml

from datagen.bench import TABLE_HEADER, family_row
from datagen.pdes import get_pde, known_pdes
from datagen.pool import FamilySpec
from datagen.shards import write_shards

__all__ = ["bench", "list_families", "load_family", "write"]

# The PDE family configs ship inside pfm's config package (pfm.conf, the repository's conf/); read as package
# data (as pfm.paths.CONF_DIR does), so datagen imports no pfm code
_CONF = Path(os.environ.get("PFM_CONFIG_DIR") or str(files("pfm.conf"))) / "data" / "pde"


def load_family(name: str, config_dir: Path | None = None) -> FamilySpec:
    """The :class:`FamilySpec` of ``name`` from ``conf/data/pde/<name>.yaml`` (or the folder ``config_dir``)."""
    get_pde(name)  # unknown names list the known ones
    path = (config_dir or _CONF) / f"{name}.yaml"
    if path.is_file():
        # the family configs are plain YAML (no interpolation), so no Hydra is needed here
        return FamilySpec(**yaml.safe_load(path.read_text()))
    raise ValueError(
        f"No config {path} for PDE {name!r}; write one (see docs/new_pde.md) or pass --config-dir."
    )


def list_families(args: argparse.Namespace) -> int:
    """``pfm-datagen list``: the registered PDE families, one a line."""
    print("\n".join(known_pdes()))
    return 0


def write(args: argparse.Namespace) -> int:
    """``pfm-datagen write``: webdataset tar shards of the families' samples."""
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


def bench(args: argparse.Namespace) -> int:
    """``pfm-datagen bench``: the generation throughput of each family, one table row a family."""
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
