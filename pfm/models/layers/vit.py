"""Pre-norm transformer layers over a flat token sequence, with optional axial rotary position embedding.

Public names:
- `TransformerBlock`: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`; the repeated block of GPhyT.
- `SelfAttention`: one fused q/k/v `Linear`, attention through `pfm.models.layers.attention`, an output `Linear`.
- `MLP`: `Linear -> GELU (exact) -> Linear -> Dropout`.
- `axial_rope`: cos/sin tables of a rotary embedding over a grid of tokens (time and space axes).

Tokens are `(batch, tokens, dim)`; attention heads are `(batch, heads, tokens, head_dim)`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pfm.models.layers.attention import attention, check_attention_backend

__all__ = ["MLP", "SelfAttention", "TransformerBlock", "apply_rope", "axial_rope"]


def axial_rope(
    grid: Sequence[int], head_dim: int, device: torch.device, base: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables for tokens on `grid` (row-major, e.g. (t, h, w)): cos and sin of shape (tokens, pairs).

    The head's channel pairs are shared out evenly among the axes (pairs left over stay unrotated); the
    pairs of one axis rotate by `position * base^(-j / pairs_per_axis)`, j = 0..pairs_per_axis-1.
    """
    num_axes = len(grid)
    pairs_per_axis = head_dim // 2 // num_axes
    if pairs_per_axis == 0:
        raise ValueError(
            f"position='rope' needs at least one channel pair per axis: head_dim={head_dim} is too small "
            f"for {num_axes} axes; use more hidden channels per head or position='absolute'."
        )
    freqs = base ** (-torch.arange(pairs_per_axis, device=device, dtype=torch.float32) / pairs_per_axis)
    coords = torch.meshgrid(
        *(torch.arange(n, device=device, dtype=torch.float32) for n in grid), indexing="ij"
    )
    angles = torch.cat([c.reshape(-1, 1) * freqs for c in coords], dim=-1)  # (tokens, num_axes * pairs)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of `x` (batch, heads, tokens, head_dim) by the angles of `cos`/`sin`."""
    rot = 2 * cos.shape[-1]
    pairs = x[..., :rot].float().unflatten(-1, (-1, 2))
    first, second = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((first * cos - second * sin, first * sin + second * cos), dim=-1).flatten(-2)
    return torch.cat((rotated.to(x.dtype), x[..., rot:]), dim=-1)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused q/k/v projection: (batch, tokens, dim) -> same shape."""

    def __init__(
        self, dim: int, num_heads: int, dropout: float = 0.0, attention_backend: str = "sdpa"
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(
                f"hidden_dim={dim} is not divisible by num_heads={num_heads}; choose a hidden_dim that is a "
                f"multiple of num_heads (e.g. {dim // num_heads * num_heads or num_heads})."
            )
        self.num_heads = num_heads
        self.dropout = dropout
        self.attention_backend = check_attention_backend(attention_backend)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        num_queries: int | None = None,
    ) -> torch.Tensor:
        """(batch, tokens, dim) -> (batch, tokens, dim); `rope` = (cos, sin) from `axial_rope`, or None.

        With `num_queries`, only the last `num_queries` tokens attend (to all tokens) and only they are
        returned: (batch, num_queries, dim). The saving is the other queries' attention, output projection and MLP.
        """
        batch, tokens, dim = x.shape
        heads, head_dim = self.num_heads, dim // self.num_heads
        # Always through the module (never its .weight): a LoRA wrapper of `qkv` must see every call.
        # chunk, not a (3, B, H, N, D) permute: the CPU flash kernel's gradients come back in (B, N, H, D)
        # memory, so the chunk's backward is one concatenation instead of a stack plus a reshape copy.
        q, k, v = (t.view(batch, tokens, heads, head_dim).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))
        if num_queries is not None:
            q = q[:, :, tokens - num_queries :]
        if rope is not None:
            cos, sin = rope
            k = apply_rope(k, cos, sin)
            q = apply_rope(q, cos[cos.shape[0] - q.shape[2] :], sin[sin.shape[0] - q.shape[2] :])
        if self.training and self.dropout > 0:
            # only SDPA takes attention dropout; the shared kernel function is for inference-equal backends
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout)
        else:
            out = attention(q, k, v, backend=self.attention_backend)
        return self.proj(out.transpose(1, 2).reshape(batch, q.shape[2], dim))


class MLP(nn.Module):
    """`Linear(dim -> mlp_dim) -> GELU -> Linear(mlp_dim -> dim) -> Dropout` on (..., dim)."""

    def __init__(self, dim: int, mlp_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> (..., dim)."""
        return self.drop(self.fc2(F.gelu(self.fc1(x))))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: attention then MLP, each with a residual connection; (batch, tokens, dim)."""

    def __init__(
        self, dim: int, mlp_dim: int, num_heads: int, dropout: float = 0.0, attention_backend: str = "sdpa"
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads, dropout, attention_backend)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_dim, dropout)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        num_queries: int | None = None,
    ) -> torch.Tensor:
        """(batch, tokens, dim) -> (batch, tokens, dim), or the last `num_queries` tokens' outputs only."""
        residual = x if num_queries is None else x[:, x.shape[1] - num_queries :]
        x = residual + self.attn(self.norm1(x), rope, num_queries)
        return x + self.mlp(self.norm2(x))
