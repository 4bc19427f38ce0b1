"""Per-residue embeddings of the sequences of a FASTA file, written to a resumable table: the code of ``pfm embed``.

Its arguments live in :mod:`pfm.embeddings.cli`, which names :func:`run` as ``"pfm.embeddings.fasta:run"`` so that
``pfm embed --help`` loads no torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm.auto import tqdm

from pfm.embeddings.providers import PROVIDERS
from pfm.embeddings.table import EmbeddingTable, sequence_key, write_table

__all__ = ["embed_fasta", "read_fasta", "run"]


def read_fasta(path: str | Path) -> list[tuple[str, str]]:
    """``[(name, sequence)]`` of a FASTA file (names up to the first space; sequences upper-cased)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FASTA file {path} does not exist.")
    records: list[tuple[str, list[str]]] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith(">"):
            records.append((line[1:].split()[0] if len(line) > 1 else f"seq{len(records)}", []))
        elif not records:
            raise ValueError(f"{path}:{number}: sequence before the first '>' header; expected FASTA.")
        else:
            records[-1][1].append(line.upper())
    out = [(name, "".join(parts)) for name, parts in records]
    empty = [name for name, seq in out if not seq]
    if not out or empty:
        raise ValueError(f"{path}: no sequences, or empty records {empty[:5]}; expected FASTA.")
    return out


def embed_fasta(
    fasta: str | Path,
    out: str | Path,
    provider: str,
    *,
    weights: str | None = None,
    layer: int | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    progress: bool = True,
) -> Path:
    """Embed every sequence of ``fasta`` not yet in ``out``; the table is rewritten atomically per batch."""
    if provider not in PROVIDERS:
        raise ValueError(f"Unknown provider {provider!r}; expected one of {sorted(PROVIDERS)}.")
    records = read_fasta(fasta)
    out = Path(out)
    embeddings, sequences = {}, {}
    if out.exists():  # resume: keep what an earlier (possibly interrupted) run wrote
        table = EmbeddingTable(out)
        if table.provider != provider:
            raise ValueError(
                f"{out} was written by provider {table.provider!r}, not {provider!r}; use another --out."
            )
        embeddings = dict(table.items())
        sequences = dict(table.sequences)
    todo = sorted({seq for _, seq in records if sequence_key(seq) not in embeddings}, key=len)
    if not todo:
        return out
    kwargs = {} if provider == "identity" else {"weights": weights, "layer": layer, "device": device}
    model = PROVIDERS[provider](**kwargs)

    bar = tqdm(total=len(todo), desc=f"pfm embed ({provider})", unit="seq", disable=not progress)
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        for seq, emb in zip(batch, model.embed(batch), strict=True):
            embeddings[sequence_key(seq)] = emb
            sequences[sequence_key(seq)] = seq
        write_table(out, embeddings, sequences, provider)
        bar.update(len(batch))
    bar.close()
    return out


def run(args: argparse.Namespace) -> int:
    """Run ``pfm embed`` with the arguments :mod:`pfm.embeddings.cli` parsed."""
    out = embed_fasta(
        args.fasta,
        args.out,
        args.provider,
        weights=args.weights,
        layer=args.layer,
        batch_size=args.batch_size,
        device=args.device,
    )
    table = EmbeddingTable(out)
    print(f"{out}: {len(table)} sequences, {table.dim} wide ({table.provider})")
    return 0
