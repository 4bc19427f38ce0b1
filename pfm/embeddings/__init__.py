"""Protein language model embeddings: providers (ESM-2, ESM C, identity) and per-residue tables.

Public names: ``EmbeddingTable`` (read pfm ``.safetensors`` tables and official ``.pt`` dicts),
``write_table``, ``sequence_key``, ``PROVIDERS``, ``ESM2Embedding``, ``ESMCEmbedding``, ``IdentityEmbedding``,
``residue_ids``, ``embed_fasta``, ``read_fasta``. ``pfm embed`` is registered from :mod:`pfm.embeddings.cli`.
"""

from pfm.embeddings.cli import embed_fasta, read_fasta
from pfm.embeddings.providers import PROVIDERS, ESM2Embedding, ESMCEmbedding, IdentityEmbedding, residue_ids
from pfm.embeddings.table import EmbeddingTable, sequence_key, write_table

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
