"""Per-residue embedding tables: safetensors keyed by a hash of the sequence, and the official ``.pt`` format.

A pfm table is one ``.safetensors`` file: tensor ``<key>`` of shape ``(L, D)`` for every sequence, where
``key = sequence_key(sequence)``; its metadata holds ``format``, ``dim``, ``provider`` and ``sequences`` (a
JSON object key -> sequence), so the table also serves as a library of sequences. The official PLaTITO format,
a ``.pt`` dict from a name (e.g. an mdCATH domain) to an ``(L, D)`` tensor, is read under pfm's one unpickling
allowlist (:mod:`pfm.unpickle`): no pickled code runs, and another global fails naming file and global.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pfm.io import atomic_path
from pfm.unpickle import check_safetensors, safe_load

__all__ = ["EmbeddingTable", "sequence_key", "write_table"]

FORMAT = "pfm-embeddings-v1"


def sequence_key(sequence: str) -> str:
    """The table key of ``sequence``: the first 32 hex digits of its SHA-256 (upper-cased one-letter codes)."""
    return hashlib.sha256(sequence.strip().upper().encode()).hexdigest()[:32]


def write_table(
    path: str | Path, embeddings: Mapping[str, torch.Tensor], sequences: Mapping[str, str], provider: str
) -> Path:
    """Write ``{key: (L, D)}`` and ``{key: sequence}`` atomically as a pfm table; returns the path."""
    dims = {int(t.shape[-1]) for t in embeddings.values()}
    if len(dims) > 1:
        raise ValueError(f"Embeddings of different widths {sorted(dims)} cannot share one table.")
    metadata = {
        "format": FORMAT,
        "dim": str(dims.pop() if dims else 0),
        "provider": provider,
        "sequences": json.dumps({k: sequences[k] for k in embeddings}),
    }
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in embeddings.items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


class EmbeddingTable:
    """Read-only per-residue embeddings: look up by sequence (pfm tables) or by name (official ``.pt``).

    Tensors are loaded lazily from safetensors (one at a time), so a table larger than memory can serve a run.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"Embedding table {self.path} does not exist; write one with `pfm embed --provider ... "
                f"--fasta FILE --out {self.path}`, or pass the official .pt file."
            )
        self.sequences: dict[str, str] = {}
        self._tensors: dict[str, torch.Tensor] | None = None
        if self.path.suffix == ".safetensors":
            check_safetensors(self.path)  # safetensors' own error for a truncated file names no file
            self._file = safe_open(str(self.path), framework="pt")
            meta = self._file.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(
                    f"{self.path} is not a pfm embedding table (metadata format={meta.get('format')!r}, "
                    f"expected {FORMAT!r}); write it with `pfm embed`."
                )
            self.sequences = json.loads(meta.get("sequences", "{}"))
            self.keys = list(self._file.keys())
            self.dim = int(meta["dim"])
            self.provider = meta.get("provider", "")
        elif self.path.suffix in {".pt", ".pth"}:
            data = safe_load(self.path, strict=True)  # errors name the file, and a refused global
            if not isinstance(data, Mapping) or not all(torch.is_tensor(v) for v in data.values()):
                raise ValueError(
                    f"{self.path} holds {type(data).__name__}; expected a dict name -> (L, D) tensor."
                )
            self._tensors = {str(k): (v[0] if v.ndim == 3 else v).float() for k, v in data.items()}
            self.keys = list(self._tensors)
            dims = {int(v.shape[-1]) for v in self._tensors.values()}
            if len(dims) != 1:
                raise ValueError(f"{self.path}: embeddings of widths {sorted(dims)}; expected one width.")
            self.dim = dims.pop()
            self.provider = "official"
        else:
            raise ValueError(
                f"{self.path}: unknown table type; expected .safetensors (pfm) or .pt (official)."
            )

    def __contains__(self, key: str) -> bool:
        return key in self.keys

    def __len__(self) -> int:
        return len(self.keys)

    def get(self, key: str) -> torch.Tensor:
        """The ``(L, D)`` embedding stored under ``key`` (a sequence hash, or a name in official files)."""
        if key not in self.keys:
            raise KeyError(
                f"{key!r} is not in embedding table {self.path} ({len(self.keys)} entries); add its sequence "
                "with `pfm embed` (tables are resumable: existing entries are kept)."
            )
        if self._tensors is not None:
            return self._tensors[key]
        return self._file.get_tensor(key)

    def for_sequence(self, sequence: str, name: str | None = None) -> torch.Tensor:
        """The ``(L, D)`` embedding of ``sequence`` (by hash), or of ``name`` in an official file; L checked."""
        key = sequence_key(sequence)
        if key not in self.keys and name is not None and name in self.keys:
            key = name
        emb = self.get(key)
        if emb.shape[0] != len(sequence):
            raise ValueError(
                f"Embedding {key!r} in {self.path} has {emb.shape[0]} residues; the sequence has "
                f"{len(sequence)}. The table was made for another sequence; re-embed it."
            )
        return emb

    def library(self) -> list[str]:
        """The sequences of a pfm table (empty for official files, which store none)."""
        return [self.sequences[k] for k in self.keys if k in self.sequences]

    def items(self) -> Iterable[tuple[str, torch.Tensor]]:
        """Every ``(key, (L, D))`` pair (loads each tensor)."""
        for key in self.keys:
            yield key, self.get(key)
