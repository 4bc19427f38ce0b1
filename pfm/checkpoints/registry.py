"""The registry of hosted checkpoints: ``checkpoints/registry.yaml`` plus the user's own registry on top.

Schema (bundled and user files alike)::

    models:
      <name>:                      # e.g. tadpole-s; what `pfm download`, `pfm info` and init_from= take
        family: tadpole            # required: one of FAMILIES (any name when status: unsupported)
        model: tadpole_s           # required: the conf/model choice the weights load into (of that family)
        files:                     # required: one or more
          - url: hf://<org>/<repo>/<file> | https://...
            sha256: <64 hex> | ""   # "" = unknown: hashed on first download (trust on first use)
            num_bytes: 123          # optional
        revision: <commit> | main  # optional, for hf:// files (default main)
        size: S                    # optional descriptive fields: size, num_parameters, license, paper,
        status: supported          #   trained_on, spec (data shapes the model is built with), status

The user registry is ``$PFM_REGISTRY`` or ``~/.config/pfm/registry.yaml``; an entry there replaces the bundled
entry of the same name. Public names: :class:`Entry`, :class:`FileSpec`, :func:`load_registry`,
:func:`get_entry`, :func:`user_registry_path`, :func:`entry_yaml`, :func:`export_entry` and :func:`verify_export`
(an export folder's entry and its ``SHA256SUMS`` check; no torch), :data:`STATUSES`.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from safetensors import safe_open

from pfm.io import read_sha256sums, sha256_file
from pfm.paths import BUNDLED_REGISTRY, CONF_DIR

__all__ = [
    "BUNDLED_REGISTRY",
    "FAMILIES",
    "NAME_PATTERN",
    "STATUSES",
    "Entry",
    "FileSpec",
    "entry_yaml",
    "export_entry",
    "get_entry",
    "load_registry",
    "user_registry_path",
    "verify_export",
]

# supported: pfm builds the model and loads these weights; unsupported: listed, pfm cannot build it yet
STATUSES = ("supported", "unsupported")
# the model families pfm builds; a supported entry's model (a conf/model choice) is named after its family
FAMILIES = ("conv_vae", "gphyt", "platito", "tadpole", "tito")
_REQUIRED = ("family", "model", "files")
_OPTIONAL = (
    "size",
    "num_parameters",
    "license",
    "paper",
    "trained_on",
    "revision",
    "spec",
    "status",
    "notes",
)
_FILE_KEYS = ("url", "sha256", "num_bytes", "revision")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# a registry entry's name: checked when a registry file is read, and by pfm.checkpoints.pretrained on a source
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class FileSpec:
    """One file of an entry: where it lives, and its sha256 and size when known."""

    url: str
    sha256: str = ""
    num_bytes: int | None = None
    revision: str | None = None

    @property
    def filename(self) -> str:
        """The file's base name (last path segment of the URL)."""
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def is_hf(self) -> bool:
        """Whether the file is hosted on the Hugging Face Hub (``hf://org/repo/path``)."""
        return self.url.startswith("hf://")

    def hf_parts(self) -> tuple[str, str]:
        """``(repo_id, path_in_repo)`` of an ``hf://org/repo/path`` URL."""
        parts = self.url.removeprefix("hf://").split("/")
        return "/".join(parts[:2]), "/".join(parts[2:])


@dataclass(frozen=True)
class Entry:
    """One published model: the files to fetch and the pfm model config they load into."""

    name: str
    family: str
    model: str
    files: tuple[FileSpec, ...]
    size: str | None = None
    num_parameters: int | None = None
    license: str | None = None
    paper: str | None = None
    trained_on: str | None = None
    revision: str = "main"
    spec: Mapping[str, Any] = field(default_factory=dict)
    status: str = "supported"
    notes: str | None = None
    source: str = ""  # the registry file it came from

    def to_dict(self) -> dict[str, Any]:
        """The entry as the YAML mapping it was read from (without its name and source)."""
        out: dict[str, Any] = {"family": self.family, "model": self.model}
        for key in ("size", "num_parameters", "license", "paper", "trained_on"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["revision"] = self.revision
        if self.spec:
            out["spec"] = dict(self.spec)
        out["status"] = self.status
        if self.notes:
            out["notes"] = self.notes
        out["files"] = [
            {
                k: v
                for k, v in (("url", f.url), ("sha256", f.sha256), ("num_bytes", f.num_bytes))
                if v is not None
            }
            | ({"revision": f.revision} if f.revision else {})
            for f in self.files
        ]
        return out


def user_registry_path() -> Path:
    """``$PFM_REGISTRY`` if set, else ``$XDG_CONFIG_HOME/pfm/registry.yaml`` (``~/.config/pfm/...``)."""
    if os.environ.get("PFM_REGISTRY"):
        return Path(os.environ["PFM_REGISTRY"]).expanduser()
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "pfm" / "registry.yaml"


def _fail(source: Path, name: str, problem: str, fix: str) -> ValueError:
    return ValueError(f"{source}: entry {name!r}: {problem}; {fix}")


def _parse_file(source: Path, name: str, index: int, raw: Any) -> FileSpec:
    where = f"files[{index}]"
    if isinstance(raw, str):
        raw = {"url": raw}
    if not isinstance(raw, Mapping):
        raise _fail(
            source, name, f"{where} is {raw!r}", "write each file as a mapping {url: ..., sha256: ...}"
        )
    unknown = sorted(set(raw) - set(_FILE_KEYS))
    if unknown:
        raise _fail(source, name, f"{where} has unknown key(s) {unknown}", f"use only {list(_FILE_KEYS)}")
    url = raw.get("url")
    if not isinstance(url, str) or not re.match(r"^(hf://[^/]+/[^/]+/.+|https?://.+|file://.+)$", url):
        raise _fail(
            source,
            name,
            f"{where}.url is {url!r}",
            "give hf://<org>/<repo>/<path in repo> or an http(s):// URL",
        )
    sha = raw.get("sha256") or ""
    if not isinstance(sha, str) or (sha and not _SHA256.match(sha.lower())):
        raise _fail(
            source,
            name,
            f"{where}.sha256 is {sha!r}, not 64 hex digits",
            "paste the file's sha256 (sha256sum FILE), or leave it empty to record it on first download",
        )
    num_bytes = raw.get("num_bytes")
    if num_bytes is not None and (not isinstance(num_bytes, int) or num_bytes < 0):
        raise _fail(source, name, f"{where}.num_bytes is {num_bytes!r}", "give the size in bytes, or omit it")
    revision = raw.get("revision")
    return FileSpec(
        url=url, sha256=sha.lower(), num_bytes=num_bytes, revision=str(revision) if revision else None
    )


def _family_of(model: str) -> str | None:
    """The family a conf/model choice belongs to (``tadpole_s`` -> ``tadpole``), or None."""
    found = [f for f in FAMILIES if model == f or model.startswith(f + "_")]
    return max(found, key=len) if found else None


def _check_family(source: Path, name: str, family: str, model: str) -> None:
    """A supported entry names a family pfm builds and a model of that family (else it fails at download)."""
    if family not in FAMILIES:
        raise _fail(
            source,
            name,
            f"family is {family!r}, not a family pfm builds",
            f"use one of {list(FAMILIES)}"
            + (f" (model {model!r} is a {_family_of(model)} model)" if _family_of(model) else "")
            + ", or status: unsupported for a model pfm cannot build yet",
        )
    if _family_of(model) != family:
        raise _fail(
            source,
            name,
            f"model is {model!r}, not a conf/model choice of family {family!r}",
            f"give the conf/model choice the weights load into ({family} or {family}_<size>, see conf/model)",
        )


def _parse_entry(source: Path, name: Any, raw: Any) -> Entry:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValueError(
            f"{source}: entry name {name!r} is not valid; use letters, digits, '.', '_' and '-' (e.g. tadpole-s)."
        )
    if not isinstance(raw, Mapping):
        raise _fail(source, name, f"it is {raw!r}", "write it as a mapping with family, model and files")
    missing = [k for k in _REQUIRED if raw.get(k) in (None, "", [])]
    if missing:
        raise _fail(
            source,
            name,
            f"missing required key(s) {missing}",
            "the smallest entry is {family: <family>, model: <conf/model choice>, files: [{url: ..., sha256: ...}]}",
        )
    unknown = sorted(set(raw) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise _fail(
            source,
            name,
            f"unknown key(s) {unknown}",
            f"use only {list(_REQUIRED) + list(_OPTIONAL)} (check spelling)",
        )
    files = raw["files"]
    if not isinstance(files, list):
        raise _fail(source, name, f"files is {files!r}", "give a list: files: [{url: ..., sha256: ...}]")
    status = raw.get("status", "supported")
    if status not in STATUSES:
        raise _fail(source, name, f"status is {status!r}", f"use one of {list(STATUSES)}")
    spec = raw.get("spec") or {}
    if not isinstance(spec, Mapping):
        raise _fail(source, name, f"spec is {spec!r}", "give a mapping of data shapes, e.g. {crop_size: 64}")
    num_parameters = raw.get("num_parameters")
    if num_parameters is not None and not isinstance(num_parameters, int):
        raise _fail(source, name, f"num_parameters is {num_parameters!r}", "give an integer, e.g. 8800000")
    text = {
        k: (None if raw.get(k) is None else str(raw[k])) for k in ("size", "license", "paper", "trained_on")
    }
    parsed_files = tuple(_parse_file(source, name, i, f) for i, f in enumerate(files))
    if status == "supported":
        _check_family(source, name, str(raw["family"]), str(raw["model"]))
    return Entry(
        name=name,
        family=str(raw["family"]),
        model=str(raw["model"]),
        files=parsed_files,
        num_parameters=num_parameters,
        revision=str(raw.get("revision") or "main"),
        spec=dict(spec),
        status=status,
        notes=raw.get("notes"),
        source=str(source),
        **text,
    )


def _read(source: Path) -> dict[str, Entry]:
    try:
        data = yaml.safe_load(source.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{source} is not valid YAML ({err}); fix the syntax or remove the file.") from err
    if not isinstance(data, Mapping) or not isinstance(data.get("models", {}), Mapping):
        raise ValueError(
            f"{source} must be a mapping with a 'models' key (models: {{<name>: {{family: ..., model: ..., "
            f"files: [...]}}}}); got {type(data).__name__}."
        )
    others = sorted(map(str, set(data) - {"models"}))
    if others:
        raise ValueError(
            f"{source} has top-level key(s) {others[:5]} beside 'models'; expected every entry under 'models:'. "
            "Fix: add a line `models:` at the top and indent the entries under it (see docs/checkpoints.md)."
        )
    return {name: _parse_entry(source, name, raw) for name, raw in (data.get("models") or {}).items()}


def load_registry(user: str | Path | None = None) -> dict[str, Entry]:
    """All entries: the bundled registry, then the user registry (``user`` or the default path) on top."""
    entries = _read(BUNDLED_REGISTRY) if BUNDLED_REGISTRY.is_file() else {}
    path = Path(user) if user is not None else user_registry_path()
    if path.is_file():
        entries.update(_read(path))
    elif user is not None or os.environ.get("PFM_REGISTRY"):
        raise FileNotFoundError(
            f"The user registry {path} (PFM_REGISTRY) does not exist; create it or unset it."
        )
    return entries


def get_entry(name: str, entries: Mapping[str, Entry] | None = None) -> Entry:
    """The entry called ``name``; a KeyError lists the known names and the closest match."""
    entries = load_registry() if entries is None else entries
    if name in entries:
        return entries[name]
    close = difflib.get_close_matches(name, list(entries), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise KeyError(
        f"No registry entry {name!r}.{hint} Known: {', '.join(sorted(entries))}. Add your own to "
        f"{user_registry_path()} (see docs/checkpoints.md)."
    )


def entry_yaml(name: str, entry: Mapping[str, Any]) -> str:
    """A registry entry as YAML, ready to paste under ``models:`` of a registry file."""
    return yaml.safe_dump({name: dict(entry)}, sort_keys=False, width=110)


def export_entry(export_dir: str | Path, url_prefix: str | None = None) -> dict[str, Any]:
    """The registry entry for a ``pfm export`` folder: its files with sha256 and size, and its model config.

    ``url_prefix`` is where the folder will be hosted (``hf://org/repo`` or an https folder); without it the
    URLs are local ``file://`` paths, which ``pfm download`` also accepts.
    """
    export_dir = Path(export_dir).resolve()
    config = OmegaConf.to_container(OmegaConf.load(export_dir / "config.yaml"))
    sums = read_sha256sums(export_dir)
    model_cfg = config.get("model") or {}
    target = str(model_cfg.get("_target_", "?"))
    files = []
    for file_name in ("model.safetensors", "config.yaml"):
        digest = sums.get(file_name) or sha256_file(export_dir / file_name)
        url = f"{url_prefix.rstrip('/')}/{file_name}" if url_prefix else (export_dir / file_name).as_uri()
        files.append({"url": url, "sha256": digest, "num_bytes": (export_dir / file_name).stat().st_size})
    with safe_open(str(export_dir / "model.safetensors"), "pt") as f:
        num_parameters = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
    choice = _model_choice(model_cfg)
    family = (_family_of(choice) if choice else None) or target.rsplit(".", 1)[-1].lower()
    return {
        "family": family,
        # an export folder carries its own model config; `model` names the conf/model choice for humans and
        # for init_from (the export's config.yaml wins when it is loaded)
        "model": choice or family,
        "size": model_cfg.get("size"),
        "num_parameters": num_parameters,
        "license": None,
        "trained_on": "pfm-train run exported with pfm export",
        "spec": config.get("data_spec") or {},
        "status": "supported",
        "files": files,
    }


def _numel(shape: list[int]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def _model_choice(model_cfg: Mapping[str, Any]) -> str | None:
    """The conf/model file whose ``_target_`` (and size, if any) match ``model_cfg``, if there is one."""
    for path in sorted((CONF_DIR / "model").glob("*.yaml")):
        try:
            cfg = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            continue
        if cfg.get("_target_") == model_cfg.get("_target_") and cfg.get("size") == model_cfg.get("size"):
            return path.stem
    return None


def verify_export(directory: str | Path) -> None:
    """Check every file listed in an export folder's ``SHA256SUMS``; a mismatch raises naming both hashes."""
    directory = Path(directory)
    for name, digest in read_sha256sums(directory).items():
        actual = sha256_file(directory / name)
        if actual != digest:
            raise ValueError(
                f"{directory / name} has SHA-256 {actual}, expected {digest}; re-export or re-download."
            )
