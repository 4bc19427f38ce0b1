"""pLM embeddings: a tiny random ESM-2 saved locally, tables (pfm and official), `pfm embed` resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import rounding_tolerance

from pfm.embeddings import EmbeddingTable, IdentityEmbedding, embed_fasta, sequence_key, write_table
from pfm.embeddings.providers import ESM2Embedding, ESMCEmbedding

ESM_VOCAB = [
    "<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N",
    "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>",
]  # fmt: skip
SEQUENCES = {"a": "MKTAYIAKQR", "b": "GSHMLEDPVA", "c": "ACDEFGHIKLMNPQRSTVWY", "d": "LLLK"}


@pytest.fixture(scope="module")
def tiny_esm2(tmp_path_factory) -> Path:
    """A 2-layer, 16-wide ESM-2 with random weights and its tokenizer, saved to a local folder."""
    from transformers import EsmConfig, EsmModel, EsmTokenizer

    folder = tmp_path_factory.mktemp("esm2")
    (folder / "vocab.txt").write_text("\n".join(ESM_VOCAB) + "\n")
    config = EsmConfig(
        vocab_size=len(ESM_VOCAB),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        pad_token_id=1,
        mask_token_id=32,
        position_embedding_type="rotary",
        token_dropout=False,
    )
    torch.manual_seed(0)
    EsmModel(config, add_pooling_layer=False).save_pretrained(folder)
    EsmTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    return folder


def _rounding(reference: torch.Tensor) -> dict[str, float]:
    """Padded batch vs one sequence: float32 orders; per layer (2 of width 16, MLP 32) its sums, <= 64 tokens."""
    return rounding_tolerance(reference, terms=2 * (4 * 16 + 64 + 2 * 32))


def _fasta(path: Path, names: list[str]) -> Path:
    path.write_text("".join(f">{n} description\n{SEQUENCES[n][:6]}\n{SEQUENCES[n][6:]}\n" for n in names))
    return path


def test_esm2_layer_and_final_embeddings_match_the_model(tiny_esm2: Path) -> None:
    from transformers import EsmModel, EsmTokenizer

    final = ESM2Embedding(tiny_esm2)
    layer1 = ESM2Embedding(tiny_esm2, layer=1)
    seqs = [SEQUENCES["a"], SEQUENCES["d"]]  # different lengths: padding must not leak into either
    out, out1 = final.embed(seqs), layer1.embed(seqs)
    assert [o.shape for o in out] == [(10, 16), (4, 16)]
    model = EsmModel.from_pretrained(tiny_esm2, add_pooling_layer=False).eval()
    tok = EsmTokenizer.from_pretrained(tiny_esm2)
    with torch.no_grad():
        alone = model(**tok([seqs[1]], return_tensors="pt"), output_hidden_states=True)
    want, want1 = alone.last_hidden_state[0, 1:-1], alone.hidden_states[1][0, 1:-1]
    torch.testing.assert_close(out[1], want, **_rounding(want))
    torch.testing.assert_close(out1[1], want1, **_rounding(want1))
    assert not torch.allclose(out[1], out1[1])


def test_missing_weights_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        ESM2Embedding(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="--weights"):
        ESM2Embedding(None)


def test_esmc_without_the_package_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "esm.models.esmc", None)  # as if `esm` were not installed
    with pytest.raises(ImportError, match="pip install --no-deps esm=="):
        ESMCEmbedding(tmp_path)


def test_identity_is_one_hot_and_rejects_unknown_letters() -> None:
    (emb,) = IdentityEmbedding().embed(["ACY"])
    assert emb.shape == (3, 20) and torch.equal(emb.sum(1), torch.ones(3))
    assert emb[0, 0] == 1 and emb[1, 1] == 1 and emb[2, 19] == 1
    with pytest.raises(ValueError, match="'J'"):
        IdentityEmbedding().embed(["AJ"])


def test_pfm_embed_writes_a_resumable_table(tiny_esm2: Path, tmp_path: Path) -> None:
    from pfm.cli import main

    out = tmp_path / "table.safetensors"
    fasta = _fasta(tmp_path / "two.fasta", ["a", "b"])
    assert main(["embed", "--provider", "esm2", "--weights", str(tiny_esm2), "--fasta", str(fasta),
                 "--out", str(out), "--batch-size", "1", "--layer", "2"]) == 0  # fmt: skip
    first = EmbeddingTable(out)
    assert len(first) == 2 and first.dim == 16
    kept = first.for_sequence(SEQUENCES["a"]).clone()
    # resume with more sequences: old entries are kept byte for byte, new ones added
    fasta = _fasta(tmp_path / "four.fasta", ["a", "b", "c", "d"])
    embed_fasta(fasta, out, "esm2", weights=str(tiny_esm2), layer=2, batch_size=3, progress=False)
    table = EmbeddingTable(out)
    assert len(table) == 4
    assert torch.equal(table.for_sequence(SEQUENCES["a"]), kept)
    expected = ESM2Embedding(tiny_esm2, layer=2).embed([SEQUENCES["c"]])[0]
    torch.testing.assert_close(table.for_sequence(SEQUENCES["c"]), expected, **_rounding(expected))
    assert sorted(table.library()) == sorted(SEQUENCES.values())
    assert sequence_key(SEQUENCES["d"]) in table
    with pytest.raises(ValueError, match="provider 'esm2'"):
        embed_fasta(fasta, out, "identity", progress=False)
    assert not list(tmp_path.glob(".table.safetensors.*"))  # no temporary file left behind


def test_table_lookups_fail_clearly(tmp_path: Path) -> None:
    seq = SEQUENCES["a"]
    path = write_table(
        tmp_path / "t.safetensors", {sequence_key(seq): torch.ones(10, 4)}, {sequence_key(seq): seq}, "x"
    )
    table = EmbeddingTable(path)
    with pytest.raises(KeyError, match="pfm embed"):
        table.for_sequence("MKT")
    with pytest.raises(FileNotFoundError, match="pfm embed"):
        EmbeddingTable(tmp_path / "missing.safetensors")


def test_official_pt_tables_are_read_without_pickled_code(tmp_path: Path) -> None:
    path = tmp_path / "embeddings.pt"
    torch.save({"1abcA00": torch.randn(1, 10, 8), "2xyzB01": torch.randn(4, 8)}, path)
    table = EmbeddingTable(path)
    assert table.dim == 8 and table.get("1abcA00").shape == (10, 8)
    assert table.for_sequence(SEQUENCES["a"], name="1abcA00").shape == (10, 8)

    class Payload:  # an object whose unpickling would run code: pfm's unpickling allowlist refuses it
        def __reduce__(self):
            return (print, ("pickled code ran",))

    bad = tmp_path / "bad.pt"
    torch.save({"x": Payload()}, bad)
    with pytest.raises(ValueError, match=r"bad\.pt names builtins\.print"):
        EmbeddingTable(bad)
