"""Building blocks of the P3D architecture used by Tadpole (windowed 3D transformer + conv stages).

Attribute names follow the official implementation, so that the official state dicts load unchanged; the names
are therefore part of the checkpoint format and must not be renamed.

Public names:
- `PixelShuffle3d`: (N, C * r^3, X, Y, Z) -> (N, C, rX, rY, rZ).
- `ResidualConvBlock`: GroupNorm-GELU-Conv twice, plus the input.
- `RelativePositionBias`: continuous relative position bias (an MLP over log-spaced window offsets).
- `WindowAttention`: cosine-similarity multi-head attention inside one window, no output projection.
- `TransformerBlock`: pre-LayerNorm attention + GELU MLP.
- `WindowStage`: a stack of `TransformerBlock`s over non-overlapping cubic windows of a 3D grid.
- `Downsample`, `Upsample`: the transformer's stride-2 conv and conv-PixelShuffle-conv resampling.
- `FinalLayer`: LayerNorm (no affine) + 3x3x3 conv at the end of the transformer decoder.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from pfm.models.layers.attention import attention, check_attention_backend

__all__ = [
    "Downsample",
    "FinalLayer",
    "PixelShuffle3d",
    "RelativePositionBias",
    "ResidualConvBlock",
    "TransformerBlock",
    "Upsample",
    "WindowAttention",
    "WindowStage",
]

# exp(logit_scale) is clamped at 100, as in Swin-V2, so the cosine logits stay in [-100, 100].
_MAX_LOGIT_SCALE = 4.6052
# The relative position bias is squashed to (0, 16) by 16 * sigmoid (Swin-V2's continuous position bias).
_BIAS_RANGE = 16.0


class PixelShuffle3d(nn.Module):
    """3D sub-pixel upsampling: (N, C * r^3, X, Y, Z) -> (N, C, r X, r Y, r Z).

    Channel `c * r^3 + i * r^2 + j * r + k` goes to voxel offset (i, j, k), the order of the official model.
    """

    def __init__(self, upscale_factor: int) -> None:
        super().__init__()
        self.upscale_factor = upscale_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C * r^3, X, Y, Z) -> (N, C, r X, r Y, r Z)."""
        r = self.upscale_factor
        n, c, sx, sy, sz = x.shape
        x = x.reshape(n, c // r**3, r, r, r, sx, sy, sz)
        x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)
        return x.reshape(n, c // r**3, sx * r, sy * r, sz * r)


class ResidualConvBlock(nn.Module):
    """`x + conv_2(gelu(gn_2(conv_1(gelu(gn_1(x))))))` with 3x3x3 convs; shape (N, C, X, Y, Z) is kept."""

    def __init__(self, channels: int, num_groups: int) -> None:
        super().__init__()
        self.gn_1 = nn.GroupNorm(num_groups, channels)
        self.conv_1 = nn.Conv3d(channels, channels, 3, 1, 1)
        self.gn_2 = nn.GroupNorm(num_groups, channels)
        self.conv_2 = nn.Conv3d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, X, Y, Z) -> (N, C, X, Y, Z)."""
        h = self.conv_1(F.gelu(self.gn_1(x)))
        h = self.conv_2(F.gelu(self.gn_2(h)))
        return x + h


def _relative_coords_table(window_size: int) -> torch.Tensor:
    """Log-spaced relative offsets, shape (1, 2w-1, 2w-1, 2w-1, 3), exactly as the official buffer."""
    offsets = torch.arange(-(window_size - 1), window_size, dtype=torch.float32)
    table = torch.stack(torch.meshgrid(offsets, offsets, offsets, indexing="ij"), dim=-1).unsqueeze(0)
    # The official code means to normalise each coordinate by (window - 1), but indexes the 4th tensor
    # dimension instead of the last, so only the first three slices along the third axis are divided.
    # The published checkpoints store this table, and the bias MLP was trained on it: reproduce it as is.
    table[:, :, :, :3] /= window_size - 1
    table = table * 8.0
    return torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8.0)


def _relative_position_index(window_size: int) -> torch.Tensor:
    """Index into the flattened (2w-1)^3 offset table for each token pair of a window, shape (w^3, w^3)."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(window_size)] * 3, indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)
    span = 2 * window_size - 1
    return rel[..., 0] * span * span + rel[..., 1] * span + rel[..., 2]


class RelativePositionBias(nn.Module):
    """Continuous relative position bias of one window: `16 * sigmoid(cpb_mlp(log-spaced offsets))`.

    Buffers (persistent, because the official checkpoints hold them):
    - `relative_coords_table` (1, 2w-1, 2w-1, 2w-1, 3): MLP inputs.
    - `relative_position_index` (w^3, w^3): token pair -> table row.
    - `relative_bias` (1, heads, w^3, w^3): a cache that the official code overwrites during its forward
      pass. It is loaded and saved for compatibility and never read here: the bias is always recomputed
      from `cpb_mlp`, so it follows the weights during fine-tuning.
    """

    def __init__(self, window_size: int, num_heads: int) -> None:
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.cpb_mlp = nn.Sequential(
            nn.Linear(3, 512, bias=True), nn.ReLU(inplace=True), nn.Linear(512, num_heads, bias=False)
        )
        num_tokens = window_size**3
        self.register_buffer("relative_coords_table", _relative_coords_table(window_size))
        self.register_buffer("relative_position_index", _relative_position_index(window_size))
        self.register_buffer("relative_bias", torch.zeros(1, num_heads, num_tokens, num_tokens))

    def forward(self) -> torch.Tensor:
        """Return the bias, shape (1, heads, w^3, w^3)."""
        num_tokens = self.window_size**3
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
        bias = table[self.relative_position_index.view(-1)].view(num_tokens, num_tokens, self.num_heads)
        return (_BIAS_RANGE * torch.sigmoid(bias.permute(2, 0, 1))).unsqueeze(0)


class WindowAttention(nn.Module):
    """Cosine-similarity multi-head self-attention inside windows (Swin-V2 style), no output projection.

    scores = cos(q, k) * exp(min(logit_scale, log 100)) + relative position bias.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, attention_backend: str = "sdpa") -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attention_backend = check_attention_backend(attention_backend)
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.pos_emb_funct = RelativePositionBias(window_size, num_heads)
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones(num_heads, 1, 1)))

    def forward(self, x: torch.Tensor, padded: torch.Tensor | None = None) -> torch.Tensor:
        """(windows, tokens, dim) -> (windows, tokens, dim).

        `padded` (windows, tokens), if given, marks zero-padding tokens: they are attended to as keys as in
        the official model, but pass no gradient through their keys (see `WindowStage`).
        """
        num_windows, num_tokens, dim = x.shape
        qkv = self.qkv(x).reshape(num_windows, num_tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        # Cosine attention: normalising q and k makes the scores cosines, and the per-head temperature is
        # folded into q so that every backend can take a plain float scale of 1.
        temperature = torch.clamp(self.logit_scale, max=_MAX_LOGIT_SCALE).exp()
        q = F.normalize(q, dim=-1) * temperature
        if padded is not None:
            # A padding token's key is qkv(norm1.bias): zero at initialisation and tiny early in training,
            # where normalising has a Jacobian of 1/|k| (1e12 at k = 0). Through these keys the gradient
            # norm reached 1e10 on the second step, and clipping then left every other weight without an
            # update (Tadpole-S "stuck at the mean" at 32^3 crops). Same values, no gradient through them.
            k = torch.where(padded[:, None, :, None], k.detach(), k)
        k = F.normalize(k, dim=-1)
        bias = self.pos_emb_funct().to(q.dtype)
        out = attention(q, k, v, bias=bias, scale=1.0, backend=self.attention_backend)
        return out.transpose(1, 2).reshape(num_windows, num_tokens, dim)


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2 on the last dimension."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> (..., dim)."""
        return self.fc2(F.gelu(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`; (windows, tokens, dim)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 4.0,
        attention_backend: str = "sdpa",
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window_size, attention_backend)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, padded: torch.Tensor | None = None) -> torch.Tensor:
        """(windows, tokens, dim) -> (windows, tokens, dim); `padded` (windows, tokens) marks padding tokens."""
        x = x + self.attn(self.norm1(x), padded)
        return x + self.mlp(self.norm2(x))


def _window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(N, X, Y, Z, C) -> (N * X/w * Y/w * Z/w, w^3, C); windows in (N, x, y, z) order."""
    n, sx, sy, sz, c = x.shape
    x = x.view(n, sx // window, window, sy // window, window, sz // window, window, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, window**3, c)


def _window_reverse(windows: torch.Tensor, window: int, n: int, sx: int, sy: int, sz: int) -> torch.Tensor:
    """Inverse of `_window_partition`: (N * num_windows, w^3, C) -> (N, X, Y, Z, C)."""
    x = windows.view(n, sx // window, sy // window, sz // window, window, window, window, -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(n, sx, sy, sz, -1)


class WindowStage(nn.Module):
    """`depth` transformer blocks over non-overlapping cubic windows of a (N, C, X, Y, Z) grid.

    No shifted windows (the published models are trained without). A grid that is not a multiple of the window
    is zero-padded at the end of each axis before every block and cropped after it; the padded voxels are
    attended to as keys, exactly as in the official model (it happens in the latent stage for crops smaller
    than 64, whose latent grid is smaller than the window).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 4.0,
        attention_backend: str = "sdpa",
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, num_heads, window_size, mlp_ratio, attention_backend) for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, X, Y, Z) -> (N, C, X, Y, Z)."""
        n, _, sx, sy, sz = x.shape
        w = self.window_size
        pads = [(w - s % w) % w for s in (sx, sy, sz)]
        x = x.permute(0, 2, 3, 4, 1)
        if not any(pads):
            # Blocks act per window, so one partition serves the whole stack.
            windows = _window_partition(x, w)
            for block in self.blocks:
                windows = block(windows)
            x = _window_reverse(windows, w, n, sx, sy, sz)
        else:
            px, py, pz = (s + p for s, p in zip((sx, sy, sz), pads, strict=True))
            real = torch.zeros(1, px, py, pz, 1, dtype=torch.bool, device=x.device)
            real[:, :sx, :sy, :sz] = True
            is_padding = ~_window_partition(real, w)[..., 0].repeat(n, 1)  # (windows, tokens)
            for block in self.blocks:
                # Re-pad with zeros before every block: the padded voxels must be zeros, not block outputs.
                padded = F.pad(x, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
                windows = block(_window_partition(padded, w), is_padding)
                x = _window_reverse(windows, w, n, px, py, pz)[:, :sx, :sy, :sz]
        return x.permute(0, 4, 1, 2, 3).contiguous()


class Downsample(nn.Module):
    """Stride-2 3x3x3 conv without bias, doubling the channels: (N, C, X, Y, Z) -> (N, 2C, X/2, Y/2, Z/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv3d(channels, channels * 2, 3, 2, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, X, Y, Z) -> (N, 2C, X/2, Y/2, Z/2)."""
        return self.body(x)


class Upsample(nn.Module):
    """Conv (C -> 2C), PixelShuffle x2 (-> C/4), conv (C/4 -> C/2): (N, C, X,..) -> (N, C/2, 2X,..)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(channels, channels * 2, 3, 1, 1, bias=False),
            PixelShuffle3d(2),
            nn.Conv3d(channels // 4, channels // 2, 3, 1, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, X, Y, Z) -> (N, C/2, 2X, 2Y, 2Z)."""
        return self.body(x)


class FinalLayer(nn.Module):
    """Channel LayerNorm without affine (eps 1e-6), then a zero-initialised 3x3x3 conv.

    `adaLN_modulation` is unused: the official model keeps it from a conditioned variant, and its checkpoints
    hold its weights. Its parameters are created frozen (requires_grad=False) so that data-parallel training
    does not wait for gradients that never come.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.out_proj = nn.Conv3d(dim, dim, 3, 1, 1, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim, bias=True))
        self.adaLN_modulation.requires_grad_(False)
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)
        nn.init.zeros_(self.adaLN_modulation[1].weight)
        nn.init.zeros_(self.adaLN_modulation[1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, X, Y, Z) -> (N, C, X, Y, Z)."""
        x = F.layer_norm(x.permute(0, 2, 3, 4, 1), (x.shape[1],), eps=1e-6).permute(0, 4, 1, 2, 3)
        return self.out_proj(x)
