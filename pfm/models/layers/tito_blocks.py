"""Blocks of the TITO/PLaTITO transformers (pfm/models/tito.py), named as in the official code.

Submodule and attribute names follow the official layout so that state dicts match key for key.

Public names: ``SwiGLU``, ``SwiGLUTransition``, ``AdaLN``, ``OutputGate``, ``PairBiasAttention``,
``AttentionBlock``, ``TransitionBlock``, ``TitoLayer``, ``SeqFactory``, ``PairFactory``, ``PairBuilder``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "AdaLN",
    "AttentionBlock",
    "OutputGate",
    "PairBiasAttention",
    "PairBuilder",
    "PairFactory",
    "SeqFactory",
    "SwiGLU",
    "SwiGLUTransition",
    "TitoLayer",
    "TransitionBlock",
]


class SwiGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = x.chunk(2, dim=-1)
        return F.silu(gate) * x


class SwiGLUTransition(nn.Module):
    """SwiGLU MLP dim -> 2 x (dim * expansion) -> dim, no biases."""

    def __init__(self, dim: int, expansion: int) -> None:
        super().__init__()
        self.swish_linear = nn.Sequential(nn.Linear(dim, 2 * dim * expansion, bias=False), SwiGLU())
        self.linear_out = nn.Linear(dim * expansion, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_out(self.swish_linear(x))


class AdaLN(nn.Module):
    """LayerNorm without affine, scaled by sigmoid(Linear(LN c)) and shifted by Linear(LN c)."""

    def __init__(self, dim: int, cond_dim: int) -> None:
        super().__init__()
        self.norm_cond = nn.LayerNorm(cond_dim)
        self.to_gamma = nn.Sequential(nn.Linear(cond_dim, dim), nn.Sigmoid())
        self.to_beta = nn.Linear(cond_dim, dim, bias=False)

    def modulation(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.norm_cond(cond)
        return self.to_gamma(c), self.to_beta(c)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.modulation(cond)
        return F.layer_norm(x, x.shape[-1:]) * gamma + beta


class OutputGate(nn.Module):
    """adaLN-Zero output gate sigmoid(Linear(c)), initialised to W = 0, b = -2."""

    def __init__(self, dim: int, cond_dim: int) -> None:
        super().__init__()
        linear = nn.Linear(cond_dim, dim)
        nn.init.zeros_(linear.weight)
        nn.init.constant_(linear.bias, -2.0)
        self.to_adaln_zero_gamma = nn.Sequential(linear, nn.Sigmoid())

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return self.to_adaln_zero_gamma(cond)


class PairBiasAttention(nn.Module):
    """Gated multi-head self-attention with q/k LayerNorm over all heads; the pair bias comes in as attn_mask."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, pair_dim: int) -> None:
        super().__init__()
        inner = num_heads * head_dim
        self.num_heads = num_heads
        self.to_qkv = nn.Linear(dim, 3 * inner)
        self.to_g = nn.Linear(dim, inner)
        self.to_out_node = nn.Linear(inner, dim)
        self.node_norm = nn.LayerNorm(dim)
        self.q_layer_norm = nn.LayerNorm(inner)
        self.k_layer_norm = nn.LayerNorm(inner)
        self.to_bias = nn.Linear(pair_dim, num_heads, bias=False)
        self.pair_norm = nn.LayerNorm(pair_dim)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor) -> torch.Tensor:
        """x (B, N, dim), attn_bias (B, heads, N, N) additive (pair bias, dtype-min on masked keys)."""
        b, n, _ = x.shape
        h = self.num_heads
        x = self.node_norm(x)
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        q, k = self.q_layer_norm(q), self.k_layer_norm(k)
        q, k, v, g = (t.reshape(b, n, h, -1).transpose(1, 2) for t in (q, k, v, self.to_g(x)))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)
        out = (torch.sigmoid(g) * out).transpose(1, 2).reshape(b, n, -1)
        return self.to_out_node(out)


class AttentionBlock(nn.Module):
    def __init__(self, dim: int, cond_dim: int, num_heads: int, head_dim: int, pair_dim: int) -> None:
        super().__init__()
        self.adaln = AdaLN(dim, cond_dim)
        self.mha = PairBiasAttention(dim, num_heads, head_dim, pair_dim)
        self.scale_output = OutputGate(dim, cond_dim)


class TransitionBlock(nn.Module):
    def __init__(self, dim: int, cond_dim: int) -> None:
        super().__init__()
        self.adaln = AdaLN(dim, cond_dim)
        self.transition = SwiGLUTransition(dim, 4)
        self.scale_output = OutputGate(dim, cond_dim)


class TitoLayer(nn.Module):
    """Residual adaLN attention then residual adaLN SwiGLU transition, padded residues kept at zero."""

    def __init__(self, dim: int, cond_dim: int, num_heads: int, head_dim: int, pair_dim: int) -> None:
        super().__init__()
        self.mhba = AttentionBlock(dim, cond_dim, num_heads, head_dim, pair_dim)
        self.transition = TransitionBlock(dim, cond_dim)

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor, attn_bias: torch.Tensor, m: torch.Tensor
    ) -> torch.Tensor:
        a = self.mhba
        y = a.mha(a.adaln(x, cond) * m, attn_bias) * a.scale_output(cond)
        x = (x + y * m) * m
        t = self.transition
        y = t.transition(t.adaln(x, cond) * m) * t.scale_output(cond)
        return (x + y * m) * m


class SeqFactory(nn.Module):
    """Concatenated per-residue features -> Linear (no bias); `feat_creators` holds TITO's residue embedding."""

    def __init__(self, in_dim: int, out_dim: int, residue: tuple[int, int, int] | None = None) -> None:
        super().__init__()
        if residue is not None:  # (position in the concatenation, num types, width)
            pos, num_types, width = residue
            creators: list[nn.Module] = [nn.Identity(), nn.Identity()]
            creators[pos] = nn.Module()
            creators[pos].res_id_emb = nn.Embedding(num_types, width)
            self.feat_creators = nn.ModuleList(creators)
        self.linear_out = nn.Linear(in_dim, out_dim, bias=False)


class PairFactory(nn.Module):
    """Pair features -> Linear (no bias) -> LayerNorm."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.ln_out = nn.LayerNorm(out_dim)
        self.linear_out = nn.Linear(in_dim, out_dim, bias=False)


class PairBuilder(nn.Module):
    def __init__(self, in_dim: int, pair_dim: int, time_dim: int, cond_dim: int) -> None:
        super().__init__()
        self.init_repr_factory = PairFactory(in_dim, pair_dim)
        if time_dim:  # velocity net: the pair representation is modulated by the flow time
            self.cond_factory = PairFactory(time_dim, cond_dim)
            self.adaln = AdaLN(pair_dim, cond_dim)
