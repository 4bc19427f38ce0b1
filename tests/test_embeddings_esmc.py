"""The ESM C provider end to end: a tiny ESM C with random weights, built from the `esm` package's classes.

`esm` is an optional dependency installed without its own dependencies (it pins other torch and
transformers versions; docs/tito.md), so these tests need it and are skipped where it is absent, saying so.
The message an absent package gives is tested without it (tests/test_embeddings.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import rounding_tolerance

pytest.importorskip(
    "esm.models.esmc", reason="needs `pip install -e .[esmc] && pip install --no-deps esm==3.2.1.post1`"
)

from pfm.embeddings import EmbeddingTable, sequence_key
from pfm.embeddings.providers import ESMCEmbedding

SEQUENCES = ["MKTAYIAKQR", "LLLK", "ACDEFGHIKLMNPQRSTVWY"]
WIDTH, LAYERS = 128, 3  # 2 heads of 64, as ESM C's heads are


@pytest.fixture(scope="module")
def tiny_esmc(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A 3-block, 128-wide ESM C with random weights, saved as the Hugging Face repository lays it out."""
    from esm.models.esmc import ESMC
    from esm.tokenization import get_esmc_model_tokenizers

    torch.manual_seed(0)
    model = ESMC(WIDTH, 2, LAYERS, tokenizer=get_esmc_model_tokenizers(), use_flash_attn=False).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # non-trivial norms and biases
    folder = tmp_path_factory.mktemp("esmc")
    (folder / "data" / "weights").mkdir(parents=True)
    torch.save(model.state_dict(), folder / "data" / "weights" / "esmc_tiny_v0.pth")
    return folder, model


def _rounding(reference: torch.Tensor, num_tokens: int = max(map(len, SEQUENCES)) + 2) -> dict[str, float]:
    """Padded batch vs one sequence: float32 orders; per block its qkv, attention, output and SwiGLU sums."""
    return rounding_tolerance(reference, terms=LAYERS * (10 * WIDTH + num_tokens))


def _alone(model: torch.nn.Module, sequence: str) -> object:
    with torch.no_grad():
        return model(sequence_tokens=model._tokenize([sequence]))


def test_layer_and_final_embeddings_equal_the_model_run_alone(tiny_esmc) -> None:
    folder, model = tiny_esmc
    final = ESMCEmbedding(folder, layer=None)
    middle = ESMCEmbedding(folder, layer=1)
    assert final.dim == middle.dim == WIDTH
    out, out1 = final.embed(SEQUENCES), middle.embed(SEQUENCES)
    assert [o.shape for o in out] == [(len(s), WIDTH) for s in SEQUENCES]
    for seq, emb, emb1 in zip(SEQUENCES, out, out1, strict=True):
        ref = _alone(model, seq)
        assert ref.hidden_states.shape[0] == LAYERS
        want, want1 = ref.embeddings[0, 1:-1], ref.hidden_states[1][0, 1:-1]
        torch.testing.assert_close(emb, want, **_rounding(want))
        torch.testing.assert_close(emb1, want1, **_rounding(want1))
        assert not torch.allclose(emb, emb1, atol=1e-3)  # the layer setting selects another tensor
    last = ESMCEmbedding(folder, layer=-1).embed(SEQUENCES[:1])[0]
    want = _alone(model, SEQUENCES[0]).hidden_states[-1][0, 1:-1]
    torch.testing.assert_close(last, want, **_rounding(want))


def test_a_padded_batch_equals_one_by_one(tiny_esmc) -> None:
    folder, _ = tiny_esmc
    provider = ESMCEmbedding(folder, layer=2)
    batched = provider.embed(SEQUENCES)  # lengths 10, 4, 20: two of three are padded
    for seq, emb in zip(SEQUENCES, batched, strict=True):
        (alone,) = provider.embed([seq])
        torch.testing.assert_close(emb, alone, **_rounding(alone))


def test_bad_settings_are_named(tiny_esmc, tmp_path: Path) -> None:
    folder, _ = tiny_esmc
    with pytest.raises(ValueError, match=f"layer=3; this ESM C has {LAYERS} transformer blocks"):
        ESMCEmbedding(folder, layer=3)
    with pytest.raises(ValueError, match="cannot have 3 heads; pass num_heads"):
        ESMCEmbedding(folder, num_heads=3)
    with pytest.raises(FileNotFoundError, match=r"No \.pth weights"):
        ESMCEmbedding(tmp_path)
    torch.save({"w": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"no 'embed\.weight'"):
        ESMCEmbedding(tmp_path)


def test_pfm_embed_with_esmc_writes_the_provider_s_embeddings(tiny_esmc, tmp_path: Path) -> None:
    from pfm.cli import main

    folder, _ = tiny_esmc
    fasta = tmp_path / "s.fasta"
    fasta.write_text("".join(f">s{i}\n{s}\n" for i, s in enumerate(SEQUENCES)))
    out = tmp_path / "esmc.safetensors"
    args = ["embed", "--provider", "esmc", "--weights", str(folder), "--layer", "1", "--fasta", str(fasta)]
    assert main([*args, "--out", str(out), "--batch-size", "2"]) == 0
    table = EmbeddingTable(out)
    assert table.dim == WIDTH and table.provider == "esmc" and len(table) == 3
    expected = ESMCEmbedding(folder, layer=1).embed(SEQUENCES)
    for seq, emb in zip(SEQUENCES, expected, strict=True):
        torch.testing.assert_close(table.get(sequence_key(seq)), emb, **_rounding(emb))
