"""Protein language model embeddings: providers (ESM-2, ESM C, identity) and per-residue tables.

Public names: ``EmbeddingTable`` (read pfm ``.safetensors`` tables and official ``.pt`` dicts),
``write_table``, ``sequence_key``, ``PROVIDERS``, ``ESM2Embedding``, ``ESMCEmbedding``, ``IdentityEmbedding``,
``residue_ids``, ``embed_fasta``, ``read_fasta``. ``pfm embed`` is registered from :mod:`pfm.embeddings.cli`.

Each name is imported from its module on first use (``_HOMES``), so that ``pfm embed --help`` loads no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from datagen.lazy import lazy_names

if TYPE_CHECKING:
    from pfm.embeddings.fasta import embed_fasta, read_fasta
    from pfm.embeddings.providers import (
        PROVIDERS,
        ESM2Embedding,
        ESMCEmbedding,
        IdentityEmbedding,
        residue_ids,
    )
    from pfm.embeddings.table import EmbeddingTable, sequence_key, write_table

# public name -> the module that defines it
_HOMES: dict[str, str] = {
    "PROVIDERS": "pfm.embeddings.providers",
    "ESM2Embedding": "pfm.embeddings.providers",
    "ESMCEmbedding": "pfm.embeddings.providers",
    "EmbeddingTable": "pfm.embeddings.table",
    "IdentityEmbedding": "pfm.embeddings.providers",
    "embed_fasta": "pfm.embeddings.fasta",
    "read_fasta": "pfm.embeddings.fasta",
    "residue_ids": "pfm.embeddings.providers",
    "sequence_key": "pfm.embeddings.table",
    "write_table": "pfm.embeddings.table",
}

__all__ = [
    "PROVIDERS",
    "ESM2Embedding",
    "ESMCEmbedding",
    "EmbeddingTable",
    "IdentityEmbedding",
    "embed_fasta",
    "read_fasta",
    "residue_ids",
    "sequence_key",
    "write_table",
]

__getattr__ = lazy_names(__name__, _HOMES)
