"""The TITO / PLaTITO network: input features, sinusoid embeddings and one transformer of the official kind.

`PLaTITO` (pfm/models/tito.py) holds two of these (`condition_net`, `velocity_net`); the official converter is
pfm/models/tito_official.py. Units as in pfm/models/tito.py (nm, ns, K, flow time s in [0, 1]).

Public names: `TitoFeatures`, `TitoNet`, `NUM_RESIDUE_TYPES`, `mask_and_zero_com`, `pair_mask`,
`time_embedding`, `index_embedding`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from pfm.models.layers.tito_blocks import (
    PairBuilder,
    SeqFactory,
    SwiGLUTransition,
    TitoLayer,
)

__all__ = [
    "NUM_RESIDUE_TYPES",
    "TitoFeatures",
    "TitoNet",
    "index_embedding",
    "mask_and_zero_com",
    "pair_mask",
    "time_embedding",
]

# The official amino-acid vocabulary (20 standard + O, U, X) sizes TITO's residue embedding.
NUM_RESIDUE_TYPES = 23


@dataclass(frozen=True)
class TitoFeatures:
    """Widths and scales of the input features (the official defaults; none are learnable)."""

    index_dim: int = 196  # residue-index sinusoid
    time_dim: int = 196  # flow-time sinusoid (velocity net, tokens and pairs)
    lag_dim: int = 64
    temperature_dim: int = 64
    residue_dim: int = 0  # TITO: width of the learned amino-acid embedding (0 = PLaTITO)
    residue_first: bool = False  # TITO: residue embedding before the index sinusoid in the concatenation
    num_residue_types: int = NUM_RESIDUE_TYPES
    num_seq_sep_bins: int = 127  # relative sequence separation one-hot, i - j clamped to +-63
    num_dist_bins: int = 64  # C-alpha distance one-hot, edges at linspace(dist_min, dist_max, bins - 1)
    dist_min: float = 0.1  # nm
    dist_max: float = 3.0  # nm
    index_max_len: int = 2056
    time_scale: float = 2000.0
    lag_norm: float = 200.0  # ns; the lag sinusoid sees lag / lag_norm
    lag_scale: float = 1000.0
    temperature_min: float = 250.0  # K; the temperature sinusoid sees (T - min) / (max - min)
    temperature_max: float = 500.0
    temperature_scale: float = 100.0


def mask_and_zero_com(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero the padded residues of x (B, L, 3) and move the centre of mass of the valid ones to 0."""
    m = mask[..., None]
    x = x.masked_fill(~m, 0.0)
    count = m.sum(dim=-2, keepdim=True).clamp(min=1)
    return (x - x.sum(dim=-2, keepdim=True) / count) * m


def time_embedding(t: torch.Tensor, dim: int, max_positions: float) -> torch.Tensor:
    """Sinusoid of a scalar per sample: t (B,) -> (B, dim), frequencies as in DDPM (t scaled by max_positions)."""
    half = dim // 2
    freqs = torch.exp(
        torch.arange(half, dtype=torch.float32, device=t.device) * -(math.log(max_positions) / (half - 1))
    )
    arg = (t.float() * max_positions)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)
    return F.pad(emb, (0, dim % 2))


def index_embedding(num_residues: int, dim: int, max_len: int, device: torch.device) -> torch.Tensor:
    """Sinusoid of the residue index 1..L -> (L, 2 * (dim // 2))."""
    idx = torch.arange(1, num_residues + 1, dtype=torch.float32, device=device)
    k = torch.arange(dim // 2, device=device)
    arg = idx[:, None] * math.pi / (max_len ** (2 * k / dim))[None, :]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)


def pair_mask(mask: torch.Tensor) -> torch.Tensor:
    """Pair validity (B, L, L) from the residue mask (B, L)."""
    return mask[:, :, None] & mask[:, None, :]


class TitoNet(nn.Module):
    """One transformer of the official kind (condition net or velocity net)."""

    def __init__(
        self,
        *,
        token_dim: int,
        adaln_dim: int,
        pair_dim: int,
        num_layers: int,
        num_heads: int,
        head_dim: int,
        num_registers: int,
        seq_in_dim: int,
        cond_in_dim: int,
        pair_time_dim: int,
        feats: TitoFeatures,
        residue: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        self.num_registers = num_registers
        self.feats = feats
        if num_registers > 0:
            self.registers = nn.Parameter(torch.randn(num_registers, token_dim) / 20.0)
        self.linear_3d_embed = nn.Linear(3, token_dim, bias=False)
        self.init_repr_factory = SeqFactory(seq_in_dim, token_dim, residue)
        self.cond_factory = SeqFactory(cond_in_dim, adaln_dim)
        self.transition_c_1 = SwiGLUTransition(adaln_dim, 2)
        self.transition_c_2 = SwiGLUTransition(adaln_dim, 2)
        pair_in = feats.num_seq_sep_bins + feats.num_dist_bins
        self.pair_repr_builder = PairBuilder(pair_in, pair_dim, pair_time_dim, adaln_dim)
        self.transformer_layers = nn.ModuleList(
            TitoLayer(token_dim, adaln_dim, num_heads, head_dim, pair_dim) for _ in range(num_layers)
        )
        self.coors_3d_decoder = nn.Sequential(nn.LayerNorm(token_dim), nn.Linear(token_dim, 3, bias=False))

    # -- inputs
    def index_tokens(self, num_residues: int, device: torch.device) -> torch.Tensor:
        """Linear(index sinusoid) (L, token) when the index sinusoid is the only sequence feature."""
        emb = index_embedding(num_residues, self.feats.index_dim, self.feats.index_max_len, device)
        return emb @ self.init_repr_factory.linear_out.weight.t()

    def adaln_cond(self, c_in: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """(B, L or 1, cond_in) pre-projection (or its projection if already projected) -> (B, L, adaln)."""
        c = c_in * m
        c = self.transition_c_1(c) * m
        return self.transition_c_2(c) * m

    def pair_repr(self, x: torch.Tensor, pm: torch.Tensor, time_emb: torch.Tensor | None) -> torch.Tensor:
        """Pair representation (B, L, L, pair) from coordinates x (B, L, 3) (padded rows zero)."""
        f = self.feats
        b, n, _ = x.shape
        w = self.pair_repr_builder.init_repr_factory.linear_out.weight  # (pair, sep + dist)
        # One-hot @ W^T is a row gather of W^T: the same numbers without building the (B, L, L, 191) one-hots.
        half = (f.num_seq_sep_bins - 1) // 2
        idx = torch.arange(n, device=x.device)
        sep_bin = ((idx[:, None] - idx[None, :]).clamp(-half, half) + half).reshape(-1)
        sep = w[:, : f.num_seq_sep_bins].t().index_select(0, sep_bin).reshape(1, n, n, -1)
        edges = torch.linspace(f.dist_min, f.dist_max, f.num_dist_bins - 1, device=x.device)
        dist = torch.norm(x[:, :, None, :] - x[:, None, :, :], dim=-1)
        dist_bin = torch.bucketize(dist, edges).reshape(-1)
        d = w[:, f.num_seq_sep_bins :].t().index_select(0, dist_bin).reshape(b, n, n, -1)
        pair = self.pair_repr_builder.init_repr_factory.ln_out(d.add_(sep))
        if time_emb is not None:
            builder = self.pair_repr_builder
            # The time pair feature is the same for every pair: one modulation vector per sample.
            tc = builder.cond_factory.ln_out(builder.cond_factory.linear_out(time_emb))
            gamma, beta = builder.adaln.modulation(tc)
            pair = torch.addcmul(
                beta[:, None, None], F.layer_norm(pair, pair.shape[-1:]), gamma[:, None, None]
            )
        # Pairs touching a padded residue are left unmasked here: attention_biases masks their logits.
        return pair

    def attention_biases(self, pair: torch.Tensor, pm: torch.Tensor) -> list[torch.Tensor]:
        """Per layer (B, heads, R + L, R + L) additive attention masks: pair bias, dtype-min on masked keys."""
        layers = [layer.mhba.mha for layer in self.transformer_layers]
        num_heads = layers[0].num_heads
        r = self.num_registers
        b, n = pair.shape[:2]
        # LayerNorm(p) @ W^T = norm(p) @ (g * W)^T + beta @ W^T, and norm(p) is shared by all layers,
        # so every layer's bias comes out of one matmul.
        w_all = torch.cat([a.to_bias.weight * a.pair_norm.weight for a in layers])  # (layers * heads, pair)
        c_all = torch.cat([a.to_bias.weight @ a.pair_norm.bias for a in layers])  # (layers * heads,)
        biases = F.linear(F.layer_norm(pair, pair.shape[-1:]), w_all, c_all)  # (B, L, L, layers * heads)
        full = pair.new_empty(b, w_all.shape[0], n + r, n + r)  # (B, layers * heads, R + L, R + L)
        if r:
            full[:] = c_all[None, :, None, None]  # register rows/columns hold zero pairs: LN(0) = beta
        full[:, :, r:, r:] = biases.permute(0, 3, 1, 2)
        # Masked pairs get the dtype minimum (official: masked_fill then + bias, which rounds to the same);
        # registers are valid tokens, so only pairs touching a padded residue are masked.
        ext = torch.cat([pm.new_ones(b, r), pm.diagonal(dim1=1, dim2=2)], dim=1)
        full.masked_fill_(~(ext[:, :, None] & ext[:, None, :])[:, None], torch.finfo(full.dtype).min)
        return list(full.split(num_heads, dim=1))

    def trunk(
        self, tokens: torch.Tensor, cond: torch.Tensor, biases: list[torch.Tensor], mask: torch.Tensor
    ) -> torch.Tensor:
        """Registers + layers: tokens (B, L, token), cond (B, L, adaln) -> (B, L, token)."""
        b = tokens.shape[0]
        r = self.num_registers
        if r:
            tokens = torch.cat([self.registers[None].expand(b, -1, -1), tokens], dim=1)
            cond = torch.cat([cond.new_zeros(b, r, cond.shape[-1]), cond], dim=1)
            mask = torch.cat([mask.new_ones(b, r), mask], dim=1)
        m = mask[..., None].to(tokens.dtype)
        x = tokens * m
        for layer, bias in zip(self.transformer_layers, biases, strict=True):
            x = layer(x, cond, bias, m)
        return x[:, r:]
