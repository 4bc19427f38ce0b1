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
        from transformers import EsmModel, EsmTokenizer

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
    """ESM C (300M, 600M, 6B) through EvolutionaryScale's ``esm`` package, from a local weights file.

    ``weights`` is a folder holding ``data/weights/esmc_300m_2024_12_v0.pth`` (the layout of the Hugging Face
    repository ``EvolutionaryScale/esmc-300m-2024-12``) or the ``.pth`` file itself. ``esm`` is not a pfm
    dependency: on PyPI it pins another torch and pulls the CUDA stack, so install it in its own environment.
    """

    SIZES = {960: (15, 30), 1152: (18, 36)}  # d_model -> (heads, layers) of ESM C 300M and 600M

    def __init__(
        self,
        weights: str | Path | None = None,
        layer: int | None = 20,
        device: str = "cpu",
        d_model: int = 960,
    ) -> None:
        try:
            from esm.models.esmc import ESMC
            from esm.tokenization import get_esmc_model_tokenizers
        except ImportError as err:
            raise ImportError(
                "The ESM C provider needs EvolutionaryScale's `esm` package (pip install esm), which pfm does "
                "not install because it pins its own torch; run `pfm embed` in an environment with it, or "
                "use --provider esm2 / a precomputed table."
            ) from err
        path = _local_folder(weights, "ESM C")
        files = [path] if path.is_file() else sorted(path.rglob("*.pth"))
        if not files:
            raise FileNotFoundError(
                f"No .pth weights under {path}; expected e.g. data/weights/esmc_300m_*.pth."
            )
        if d_model not in self.SIZES:
            raise ValueError(f"d_model={d_model}; expected one of {sorted(self.SIZES)} (ESM C 300M, 600M).")
        heads, num_layers = self.SIZES[d_model]
        self.model = ESMC(
            d_model=d_model,
            n_heads=heads,
            n_layers=num_layers,
            tokenizer=get_esmc_model_tokenizers(),
            use_flash_attn=False,
        )
        self.model.load_state_dict(torch.load(files[0], map_location="cpu", weights_only=True))
        self.model = self.model.to(device).eval()
        self.layer, self.device, self.dim = layer, device, d_model

    @torch.no_grad()
    def embed(self, sequences: Sequence[str]) -> list[torch.Tensor]:
        """Hidden states of ``layer`` (or the final embeddings), BOS/EOS removed, ``[(L, D)]``."""
        out = []
        for seq in sequences:  # one at a time: ESM C's tokenizer pads per call
            tokens = self.model._tokenize([seq]).to(self.device)
            result = self.model(sequence_tokens=tokens)
            hidden = result.embeddings if self.layer is None else result.hidden_states[self.layer]
            out.append(hidden[0, 1 : len(seq) + 1].float().cpu())
        return out


PROVIDERS = {"identity": IdentityEmbedding, "esm2": ESM2Embedding, "esmc": ESMCEmbedding}
