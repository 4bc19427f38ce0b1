"""``pfm`` subcommands for checkpoints: list, download, info [NAME], registry pin, export, publish.

Registered through ``add_parser`` (pfm/cli.py lists this module). Commands that produce paths print them last,
one per line, so scripts can take ``pfm download NAME | tail -n 2``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

import datagen
import pfm
from pfm.checkpoints.download import DownloadError, cached_file, fetch, recorded_hash, sha256_file
from pfm.checkpoints.registry import (
    entry_yaml,
    export_entry,
    get_entry,
    load_registry,
    user_registry_path,
    verify_export,
)
from pfm.io import atomic_path

__all__ = ["add_parser"]


def _human(count: int | None) -> str:
    if count is None:
        return "?"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f}{unit}"
    return str(count)


def _cached_state(entry: Any, revision: str | None = None) -> str:
    found = [cached_file(f, revision or f.revision or entry.revision) is not None for f in entry.files]
    return "yes" if all(found) else ("partial" if any(found) else "no")


def _list(args: argparse.Namespace) -> int:
    entries = load_registry()
    rows = [("name", "family", "size", "parameters", "license", "status", "cached")]
    for name, e in entries.items():
        rows.append(
            (
                name,
                e.family,
                e.size or "-",
                _human(e.num_parameters),
                e.license or "?",
                e.status,
                _cached_state(e),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip())
    return 0


def _download(args: argparse.Namespace) -> int:
    entry = get_entry(args.name)
    paths = fetch(entry, revision=args.revision, progress=not args.quiet)
    for path in paths:
        print(path)
    return 0


def _info(args: argparse.Namespace) -> int:
    if args.name is None:
        # imported when asked for: torch takes seconds; `pfm list`, `pfm download`, `pfm info NAME` start without it
        import torch

        print(
            f"pfm {pfm.__version__}, torch {torch.__version__}, cuda available: {torch.cuda.is_available()}"
        )
        print(f"PDE families: {', '.join(datagen.known_pdes())}")
        return 0

    entry = get_entry(args.name)
    print(f"# from {entry.source}")
    print(entry_yaml(entry.name, entry.to_dict()), end="")
    print(
        f"# loadable by pfm: {'yes' if entry.status == 'supported' else 'no (status: ' + entry.status + ')'}"
    )
    for spec in entry.files:
        rev = spec.revision or entry.revision
        path = cached_file(spec, rev)
        recorded = "" if spec.sha256 else recorded_hash(spec, rev)
        note = f" (sha256 recorded on first download: {recorded})" if recorded else ""
        print(f"# {spec.filename}: {'cached at ' + str(path) if path else 'not cached'}{note}")
    return 0


def _pin(args: argparse.Namespace) -> int:
    entry = get_entry(args.name)
    paths = fetch(entry, revision=args.revision, progress=not args.quiet)
    data = entry.to_dict()
    commits = set()
    for raw, path in zip(data["files"], paths, strict=False):
        raw["sha256"] = sha256_file(path)
        raw["num_bytes"] = path.stat().st_size
        # huggingface_hub keeps files under snapshots/<commit>/: pin the commit, not a moving branch
        parts = Path(path).parts
        if "snapshots" in parts and len(parts[parts.index("snapshots") + 1]) == 40:
            commits.add(parts[parts.index("snapshots") + 1])
    if len(commits) == 1:
        data["revision"] = commits.pop()
    elif args.revision:
        data["revision"] = args.revision
    target = user_registry_path()
    current = (yaml.safe_load(target.read_text()) or {}) if target.is_file() else {}
    current.setdefault("models", {})
    current["models"] = dict(current["models"] or {})
    current["models"][entry.name] = data
    with atomic_path(target) as tmp:
        tmp.write_text(yaml.safe_dump(current, sort_keys=False, width=110))
    print(f"# pinned in {target}:")
    print(entry_yaml(entry.name, data), end="")
    return 0


_PUBLISHED = ("model.safetensors", "config.yaml", "README.md", "SHA256SUMS")


def _publish(args: argparse.Namespace) -> int:
    folder = Path(args.export_dir)
    missing = [n for n in _PUBLISHED if not (folder / n).is_file()]
    if missing:
        raise SystemExit(
            f"pfm publish: {folder} lacks {missing}; give a folder written by `pfm export CKPT --out DIR`."
        )
    if args.repo.count("/") != 1:
        raise SystemExit(f"pfm publish: --repo {args.repo!r} must be ORG/NAME (e.g. my-lab/tadpole-s-ns).")

    verify_export(folder)
    name = args.name or args.repo.split("/")[1]
    if args.dry_run:
        print(
            f"# dry run: would upload to https://huggingface.co/{args.repo} ({'private' if args.private else 'public'}):"
        )
        for n in _PUBLISHED:
            print(f"#   {n} ({(folder / n).stat().st_size} bytes)")
        entry = export_entry(folder, url_prefix=f"hf://{args.repo}")
        entry["revision"] = "main"
    else:
        # imported when uploading: huggingface_hub reads the HF_* variables (token, endpoint) when imported
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(args.repo, private=args.private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            repo_id=args.repo,
            folder_path=str(folder),
            allow_patterns=list(_PUBLISHED),
            commit_message=f"pfm publish {folder.name}",
        )
        entry = export_entry(folder, url_prefix=f"hf://{args.repo}")
        entry["revision"] = getattr(commit, "oid", None) or "main"
        print(f"# uploaded to {getattr(commit, 'commit_url', args.repo)}")
    print("# registry entry (add it under `models:` of a registry file):")
    print(entry_yaml(name, entry), end="")
    return 0


def _run(func: Any) -> Any:
    """Wrap a command so that expected failures print one clear line and exit 1 instead of a traceback."""

    def wrapped(args: argparse.Namespace) -> int:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        try:
            return func(args)
        except (DownloadError, KeyError, ValueError, FileNotFoundError) as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
            print(f"pfm {args.command}: {message}", file=sys.stderr)
            return 1

    return wrapped


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add list, download, info, registry, export and publish to the ``pfm`` parser."""
    sub.add_parser("list").set_defaults(func=_run(_list))
    p = sub.add_parser("download")
    p.add_argument("name", help="registry name, e.g. tadpole-s (see `pfm list`)")
    p.add_argument("--revision", help="Hub branch, tag or commit instead of the registry's pinned one")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run(_download))
    p = sub.add_parser("info")
    p.add_argument("name", nargs="?", help="registry name (optional)")
    p.set_defaults(func=_run(_info))
    reg = sub.add_parser("registry").add_subparsers(dest="registry_command", required=True)
    p = reg.add_parser(
        "pin", help="download NAME and write its sha256, sizes and Hub commit into the user registry"
    )
    p.add_argument("name")
    p.add_argument("--revision", help="Hub branch, tag or commit to pin instead of the registry's")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run(_pin))
    p = sub.add_parser("export")
    p.add_argument("checkpoint", help="a step*.ckpt / last.ckpt file or DeepSpeed checkpoint folder")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--name", help="name for the printed registry entry (default: the folder's name)")
    p.set_defaults(func="pfm.checkpoints.export:run")  # its module loads torch: imported when it runs
    p = sub.add_parser("publish")
    p.add_argument("export_dir", help="a folder written by `pfm export`")
    p.add_argument("--repo", required=True, help="ORG/NAME of the Hub model repository (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument(
        "--dry-run", action="store_true", help="check and print what would be uploaded; upload nothing"
    )
    p.add_argument("--name", help="name for the printed registry entry (default: NAME of --repo)")
    p.set_defaults(func=_run(_publish))
