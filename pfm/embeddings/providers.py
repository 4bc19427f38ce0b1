"""Protein language model embedding providers: ESM-2 (``transformers``), ESM C (``esm``), identity.

Every provider maps a list of one-letter sequences to per-residue embeddings ``[(L, D)]`` and has ``dim``.
pLM providers read weights from a LOCAL folder only (nothing is downloaded at run time) and read the hidden
states of a chosen ``layer`` (``None``: the final embeddings). PLaTITO-3M uses ESM C 300M layer 20 (960 wide);
PLaTITO-19M/36M the final embeddings of ESM C 6B (2560 wide). Training reads tables made from these
(``pfm embed``), never the pLM itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from datagen.md import AMINO_ACIDS
from pfm.extras import require_extra

__all__ = ["PROVIDERS", "ESM2Embedding", "ESMCEmbedding", "IdentityEmbedding", "residue_ids"]


def residue_ids(sequence: str) -> torch.Tensor:
    """Residue indices ``(L,)`` in ``AMINO_ACIDS`` order; unknown letters are an error naming them."""
    lookup = {a: i for i, a in enumerate(AMINO_ACIDS)}
    unknown = sorted({a for a in sequence.upper() if a not in lookup})
    if unknown:
        raise ValueError(f"Sequence has letters {unknown} outside the 20 amino acids {AMINO_ACIDS}.")
    return torch.tensor([lookup[a] for a in sequence.upper()], dtype=torch.long)


def _local_folder(weights: str | Path | None, what: str) -> Path:
    if weights is None:
        raise ValueError(
            f"The {what} provider needs --weights <local folder>; nothing is downloaded at run time."
        )
    path = Path(weights)
    if not path.exists():
        raise FileNotFoundError(
            f"{what} weights folder {path} does not exist; download the model once (e.g. with "
            "`huggingface-cli download ... --local-dir <folder>`) and pass that folder."
        )
    return path


class IdentityEmbedding:
    """Amino-acid identity as a one-hot ``(L, 20)`` embedding (TITO's input, and a pLM-free baseline)."""

    dim = len(AMINO_ACIDS)

    def __init__(self, **_: object) -> None:
        pass

    def embed(self, sequences: Sequence[str]) -> list[torch.Tensor]:
        """One-hot embeddings ``[(L, 20)]``."""
        return [torch.nn.functional.one_hot(residue_ids(s), self.dim).float() for s in sequences]


class ESM2Embedding:
    """ESM-2 through ``transformers`` from a local folder (config, weights and tokenizer vocabulary)."""

    def __init__(
        self, weights: str | Path | None = None, layer: int | None = None, device: str = "cpu"
    ) -> None:
        require_extra("transformers", "esm2", "The ESM-2 provider (pfm embed --provider esm2)")
        from transformers import EsmModel, EsmTokenizer  # the optional esm2 extra (seconds to import)

        folder = _local_folder(weights, "ESM-2")
        self.model = EsmModel.from_pretrained(str(folder), local_files_only=True, add_pooling_layer=False)
        self.model = self.model.to(device).eval()
        self.tokenizer = EsmTokenizer.from_pretrained(str(folder), local_files_only=True)
        num_layers = self.model.config.num_hidden_layers
        if layer is not None and not -num_layers - 1 <= layer <= num_layers:
            raise ValueError(f"layer={layer}; this ESM-2 has {num_layers} layers (0 = token embeddings).")
        self.layer = layer
        self.device = device
        self.dim = self.model.config.hidden_size

    @torch.no_grad()
    def embed(self, sequences: Sequence[str]) -> list[torch.Tensor]:
        """Hidden states of ``layer`` (or the final ones) without the BOS/EOS tokens, ``[(L, D)]``."""
        tokens = self.tokenizer(list(sequences), return_tensors="pt", padding=True).to(self.device)
        out = self.model(**tokens, output_hidden_states=self.layer is not None)
        hidden = out.last_hidden_state if self.layer is None else out.hidden_states[self.layer]
        return [hidden[i, 1 : len(s) + 1].float().cpu() for i, s in enumerate(sequences)]


class ESMCEmbedding:
    """ESM C (300M, 600M) through EvolutionaryScale's ``esm`` package, from a local weights file.

    ``weights`` is a folder holding ``data/weights/esmc_300m_2024_12_v0.pth`` (the layout of the Hugging Face
    repository ``EvolutionaryScale/esmc-300m-2024-12``) or the ``.pth`` file itself. Width and depth are read
    off the weights; the head count is not in the shapes: ESM C's heads are 64 wide (300M: 960 = 15 x 64,
    600M: 1152 = 18 x 64), so it is width / 64 unless ``num_heads`` says otherwise. ``layer`` indexes ESM C's
    ``hidden_states`` (the output of transformer block ``layer``, as the ``esm`` SDK's ``ith_hidden_layer``);
    ``None`` reads the final, normed embeddings. ``esm`` pins other torch and transformers versions, so
    install it without its dependencies (``docs/tito.md``).
    """

    HEAD_DIM = 64  # every released ESM C: 300M 15 heads x 64, 600M 18 x 64

    def __init__(
        self,
        weights: str | Path | None = None,
        layer: int | None = 20,
        device: str = "cpu",
        num_heads: int | None = None,
    ) -> None:
        try:  # esm: installed apart (make setup), for this provider only
            from esm.models.esmc import ESMC
            from esm.tokenization import get_esmc_model_tokenizers
        except ImportError as err:
            raise ImportError(
                "The ESM C provider needs EvolutionaryScale's `esm` package, which pins its own torch: install "
                "it without dependencies, `pip install 'pfm[esmc]' && pip install --no-deps esm==3.2.1.post1` "
                "(docs/tito.md), or use --provider esm2 / a precomputed table."
            ) from err
        path = _local_folder(weights, "ESM C")
        files = [path] if path.is_file() else sorted(path.rglob("*.pth"))
        if not files:
            raise FileNotFoundError(
                f"No .pth weights under {path}; expected e.g. data/weights/esmc_300m_2024_12_v0.pth."
            )
        state = torch.load(files[0], map_location="cpu", weights_only=True)
        if "embed.weight" not in state:
            raise ValueError(f"{files[0]} holds no 'embed.weight'; expected an ESM C state dict.")
        d_model = state["embed.weight"].shape[1]
        num_layers = len({k.split(".")[2] for k in state if k.startswith("transformer.blocks.")})
        heads = num_heads or d_model // self.HEAD_DIM
        if heads < 1 or d_model % heads:
            raise ValueError(
                f"{files[0]}: ESM C of width {d_model} cannot have {heads} heads; pass num_heads, a divisor of "
                f"{d_model} (the head count is not in the weights; ESM C's heads are {self.HEAD_DIM} wide)."
            )
        if layer is not None and not -num_layers <= layer < num_layers:
            raise ValueError(
                f"layer={layer}; this ESM C has {num_layers} transformer blocks (0..{num_layers - 1}), "
                "or None for the final embeddings."
            )
        tokenizer = get_esmc_model_tokenizers()
        self.model = ESMC(d_model, heads, num_layers, tokenizer=tokenizer, use_flash_attn=False)
        self.model.load_state_dict(state)
        self.model = self.model.to(device).eval()
        self.layer, self.device, self.dim = layer, device, d_model

    @torch.no_grad()
    def embed(self, sequences: Sequence[str]) -> list[torch.Tensor]:
        """Hidden states of ``layer`` (or the final embeddings), BOS/EOS removed, ``[(L, D)]``.

        A batch is padded; ESM C's attention keeps padded and real tokens apart (its ``sequence_id`` mask),
        so each sequence gets what it gets alone, to float rounding.
        """
        tokens = self.model._tokenize(list(sequences)).to(self.device)  # (B, 2 + max L), pad-filled
        result = self.model(sequence_tokens=tokens)
        hidden = result.embeddings if self.layer is None else result.hidden_states[self.layer]
        return [hidden[i, 1 : len(s) + 1].float().cpu() for i, s in enumerate(sequences)]


PROVIDERS = {"identity": IdentityEmbedding, "esm2": ESM2Embedding, "esmc": ESMCEmbedding}
