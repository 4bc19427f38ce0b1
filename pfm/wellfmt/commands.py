"""``pfm data check|stats|convert``: the data kit for datasets in The Well's layout (see docs/own_data.md).

    pfm data convert SPEC.yaml OUT     # plain .npy/.npz arrays + a small YAML -> OUT in The Well's layout, stats
    pfm data check PATH                # every problem, each with the file, the object and the fix; exit 1 if any
    pfm data stats PATH                # (re)write PATH/stats.yaml from the train split, streamed

Public names: ``add_parser``.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from pfm.wellfmt.check import check_dataset, check_file
from pfm.wellfmt.convert import convert
from pfm.wellfmt.layout import SPLITS, WellFile, split_files
from pfm.wellfmt.stats import write_stats

__all__ = ["add_parser"]


def _check(args: argparse.Namespace) -> int:
    path = Path(args.path)
    max_bytes = int(args.chunk_mb * (1 << 20))
    if path.is_file():
        findings = check_file(path, values=not args.no_values, max_bytes=max_bytes)[1]
    else:
        findings = check_dataset(path, values=not args.no_values, max_bytes=max_bytes)
    problems = [f for f in findings if f.is_problem or args.strict]
    warnings = [f for f in findings if f not in problems]
    for label, group in (("problem", problems), ("warning", warnings)):
        for finding in group:
            print(f"{label}: {finding}")
    if problems:
        kinds = Counter(f.kind for f in problems)
        print(
            f"pfm data check: {path}: {len(problems)} problem(s) ({', '.join(f'{k} x{n}' for k, n in kinds.items())}).",
            file=sys.stderr,
        )
        return 1
    print(f"OK: {_summary(path)}" + (f" ({len(warnings)} warning(s) above)" if warnings else ""))
    return 0


def _summary(path: Path) -> str:
    """One line: name, axes, grid, channels, trajectories per split."""
    files = [path] if path.is_file() else []
    counts = []
    for split in SPLITS:
        folder = path / "data" / split
        if folder.is_dir():
            found = split_files(folder)
            files += found
            counts.append(f"{split} {sum(WellFile(p).num_trajectories for p in found)}")
    first = WellFile(files[0])
    return (
        f"{path}: {first.dataset_name!r}, {first.num_spatial_dims}D ({', '.join(first.spatial_dims)}) grid "
        f"{'x'.join(map(str, first.grid))}, {first.num_steps} steps, channels {first.channels}"
        + (f"; trajectories: {', '.join(counts)}" if counts else "")
    )


def _stats(args: argparse.Namespace) -> int:
    stats = write_stats(args.path, max_bytes=int(args.chunk_mb * (1 << 20)))
    print(f"wrote {Path(args.path) / 'stats.yaml'}: {', '.join(stats)} of fields {list(stats['mean'])}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    summary = convert(args.spec, args.out, max_bytes=int(args.chunk_mb * (1 << 20)))
    print(
        f"wrote {summary['path']}: {summary['dataset_name']!r}, {len(summary['spatial_dims'])}D grid "
        f"{'x'.join(map(str, summary['grid']))}, {summary['steps']} steps, fields {summary['fields']} "
        f"(name: tensor order), trajectories per split {summary['splits']}, stats.yaml.\n"
        f"next: pfm data check {summary['path']}"
    )
    return 0


def _run(func):
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (ValueError, FileNotFoundError, FileExistsError) as err:
            print(f"pfm data {args.data_command}: {err}", file=sys.stderr)
            return 1

    return wrapped


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``pfm data check|stats|convert`` to the ``pfm`` parser."""
    data = sub.add_parser("data")
    cmds = data.add_subparsers(dest="data_command", required=True)
    chunk = {"type": float, "default": 256.0, "help": "read about this many MiB at a time (default 256)"}
    p = cmds.add_parser(
        "check",
        help="validate a dataset folder (or one HDF5 file); every problem with its fix; exit 1 if any",
    )
    p.add_argument("path", help="dataset folder holding data/{train,valid,test} and stats.yaml, or one file")
    p.add_argument(
        "--strict", action="store_true", help="refuse warnings too (what The Well's format asks for)"
    )
    p.add_argument("--no-values", action="store_true", help="skip reading the fields' values (NaN/Inf scan)")
    p.add_argument("--chunk-mb", **chunk)
    p.set_defaults(func=_run(_check))
    p = cmds.add_parser("stats", help="write PATH/stats.yaml from the train split, streamed in pieces")
    p.add_argument("path", help="dataset folder holding data/train")
    p.add_argument("--chunk-mb", **chunk)
    p.set_defaults(func=_run(_stats))
    p = cmds.add_parser(
        "convert", help="plain .npy/.npz arrays + a YAML spec -> a new dataset folder, with stats"
    )
    p.add_argument(
        "spec", help="YAML naming the fields' arrays, spatial axes, dt, boundary conditions, splits"
    )
    p.add_argument("out", help="output dataset folder (must not exist)")
    p.add_argument("--chunk-mb", **chunk)
    p.set_defaults(func=_run(_convert))
