"""Dynamics fine-tuning of a Tadpole autoencoder: predict the state at t + dt from the state at t.

The Tadpole paper's downstream recipe, as a plain `nn.Module`:
1. LoRA (rank 32 by default) on every `nn.Linear` and `nn.Conv3d` of the encoder and decoder (the model has no
   transposed convolutions). Only the unused `adaLN_modulation` Linear is skipped.
2. U-Net skips: the four encoder stage outputs are added after the matching decoder upsamplings, each times a
   learnable scale initialised to zero (the widths match, so no projection is needed).
3. A latent transformer `z + f(z)` over the latent voxels of the whole field (all crops together); a token is
   the concatenation of the latents of all channels (num_channels / in_channels * latent_channels features);
   its output projection is initialised to zero.
At initialisation, therefore, the model equals the autoencoder (with the deterministic latent).

The LoRA layers live in `pfm/heads/lora.py` (shared by every head) and are re-exported here.

Public names: `TadpoleDynamics`, `LatentTransformer`, `LoRALinear`, `LoRAConv3d`, `add_lora`,
`load_base_state_dict`, `merged_state_dict`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from pfm.heads.lora import LoRAConv3d, LoRALinear, add_lora, load_base_state_dict, merged_state_dict
from pfm.models.layers.attention import attention, check_attention_backend
from pfm.models.tadpole import TadpoleAutoencoder

__all__ = [
    "LatentTransformer",
    "LoRAConv3d",
    "LoRALinear",
    "TadpoleDynamics",
    "add_lora",
    "load_base_state_dict",
    "merged_state_dict",
]


# ---------------------------------------------------------------------------------------- latent transformer
def _sincos_3d(grid: Sequence[int], width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Fixed 3D sine-cosine position embedding of a grid, shape (x * y * z, width); a third per axis."""
    num_freqs = width // 6
    freqs = 1.0 / 10000 ** (torch.arange(num_freqs, device=device, dtype=torch.float32) / max(num_freqs, 1))
    axes = [torch.arange(n, device=device, dtype=torch.float32) for n in grid]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    angles = coords[:, :, None] * freqs  # (tokens, 3, num_freqs)
    emb = torch.cat([angles.sin(), angles.cos()], dim=-1).reshape(coords.shape[0], -1)
    return F.pad(emb, (0, width - emb.shape[1])).to(dtype)


class _LatentBlock(nn.Module):
    """Pre-RMSNorm block: self-attention (qkv with bias, output projection), then a GELU-gated MLP."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float, attention_backend: str) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"latent width {width} is not divisible by latent_heads={num_heads}.")
        self.num_heads = num_heads
        self.attention_backend = attention_backend
        hidden = int(width * mlp_ratio)
        self.attn_norm = nn.RMSNorm(width, eps=1e-5)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp_norm = nn.RMSNorm(width, eps=1e-5)
        self.gate_proj = nn.Linear(width, hidden, bias=False)
        self.up_proj = nn.Linear(width, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, tokens, width) -> (batch, tokens, width)."""
        b, t, w = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, t, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        h = attention(q, k, v, backend=self.attention_backend).transpose(1, 2).reshape(b, t, w)
        x = x + self.proj(h)
        h = self.mlp_norm(x)
        return x + self.down_proj(F.gelu(self.gate_proj(h)) * self.up_proj(h))


class LatentTransformer(nn.Module):
    """f(z) of the latent residual `z + f(z)`: a transformer over latent voxels, zero at initialisation.

    Input and output (B, dim, X, Y, Z); tokens are voxels with `dim` features, projected to `width`, with a
    fixed 3D sine-cosine position embedding and one learned register token (as the official model has).
    """

    def __init__(
        self,
        dim: int,
        width: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        attention_backend: str = "sdpa",
    ) -> None:
        super().__init__()
        check_attention_backend(attention_backend)
        self.width = width
        self.input_proj = nn.Linear(dim, width)
        self.register_token = nn.Parameter(torch.randn(1, 1, width) * 1e-6)
        self.blocks = nn.ModuleList(
            _LatentBlock(width, num_heads, mlp_ratio, attention_backend) for _ in range(depth)
        )
        self.out_proj = nn.Linear(width, dim)
        # Zero output: the residual starts as the identity, so fine-tuning starts from the autoencoder.
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, dim, X, Y, Z) -> (B, dim, X, Y, Z)."""
        b, _, sx, sy, sz = z.shape
        x = self.input_proj(z.flatten(2).transpose(1, 2))
        x = x + _sincos_3d((sx, sy, sz), self.width, x.device, x.dtype)
        x = torch.cat([x, self.register_token.expand(b, -1, -1).to(x.dtype)], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.out_proj(x[:, :-1])
        return x.transpose(1, 2).reshape(z.shape)


@dataclass(frozen=True)
class _LatentDefaults:
    """Latent transformer size for one Tadpole size (the official `default_subnetwork`)."""

    depth: int
    num_heads: int
    width: int


_LATENT_DEFAULTS = {
    "S": _LatentDefaults(depth=4, num_heads=8, width=144),
    "B": _LatentDefaults(depth=6, num_heads=8, width=176),
    "L": _LatentDefaults(depth=8, num_heads=8, width=224),
}


# ------------------------------------------------------------------------------------------------------ head
class TadpoleDynamics(nn.Module):
    """One-step predictor, state (B, C, X, Y, Z) at t -> (B, C, X, Y, Z) at t + dt, fine-tuned Tadpole.

    The autoencoder is modified in place (its Linear and Conv3d layers become LoRA layers) and becomes the
    submodule `autoencoder`; pass a copy to keep the original. Its `crop_size` and `chunk_size` apply: each
    crop is encoded and decoded alone, and the latent transformer sees the latents of the whole field.

    Args:
        autoencoder: the pretrained model (weights loaded before, e.g. with `load_state_dict`).
        num_channels: physical channels C of the state.
        lora_rank: LoRA rank r; 0 disables LoRA.
        lora_alpha: LoRA alpha (update scaled by alpha / r); None means r.
        latent_depth, latent_heads, latent_width: latent transformer size; None takes the paper's default
            for the autoencoder's size (S: 4 / 8 / 144, B: 6 / 8 / 176, L: 8 / 8 / 224).
        latent_mlp_ratio: MLP hidden width over `latent_width`.
        freeze_base: freeze the autoencoder's own parameters; then only LoRA factors, skip scales and the
            latent transformer train.
        latent: "mode" (posterior mean, deterministic) or "sample" (reparametrised sample).
        attention_backend: backend of the latent transformer ("sdpa", "math" or "xformers").
    """

    def __init__(
        self,
        autoencoder: TadpoleAutoencoder,
        num_channels: int,
        lora_rank: int = 32,
        lora_alpha: float | None = None,
        latent_depth: int | None = None,
        latent_heads: int | None = None,
        latent_width: int | None = None,
        latent_mlp_ratio: float = 4.0,
        freeze_base: bool = True,
        latent: Literal["mode", "sample"] = "mode",
        attention_backend: Literal["sdpa", "math", "xformers"] = "sdpa",
    ) -> None:
        super().__init__()
        if num_channels <= 0 or num_channels % autoencoder.in_channels:
            raise ValueError(
                f"num_channels={num_channels} must be a positive multiple of the autoencoder's "
                f"in_channels={autoencoder.in_channels}."
            )
        if latent not in ("mode", "sample"):
            raise ValueError(f"latent={latent!r} is not supported; expected 'mode' or 'sample'.")
        if lora_rank < 0:
            raise ValueError(f"lora_rank={lora_rank} must be >= 0 (0 disables LoRA).")
        self.num_channels = num_channels
        self.latent = latent
        self.autoencoder = autoencoder
        if freeze_base:
            autoencoder.requires_grad_(False)
        self.lora_layers: list[str] = []
        if lora_rank > 0:
            for part in ("encoder", "decoder"):
                names = add_lora(getattr(autoencoder, part), lora_rank, lora_alpha)
                self.lora_layers += [f"{part}.{name}" for name in names]
        # One scale per skip (decoder order: transformer 1/8, 1/4, conv 1/2, full resolution).
        self.skip_scales = nn.Parameter(torch.zeros(4))
        defaults = _LATENT_DEFAULTS[autoencoder.size]
        token_dim = num_channels // autoencoder.in_channels * autoencoder.latent_channels
        self.latent_transformer = LatentTransformer(
            dim=token_dim,
            width=latent_width or defaults.width,
            depth=defaults.depth if latent_depth is None else latent_depth,
            num_heads=latent_heads or defaults.num_heads,
            mlp_ratio=latent_mlp_ratio,
            attention_backend=attention_backend,
        )

    def trainable_parameter_count(self) -> int:
        """Number of parameters that require grad."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def parameter_count(self) -> int:
        """Number of parameters, trainable or not (buffers excluded)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """State at t (B, C, X, Y, Z) -> predicted state at t + dt (B, C, X, Y, Z)."""
        if x.ndim != 5 or x.shape[1] != self.num_channels:
            raise ValueError(
                f"expected input (batch, {self.num_channels}, x, y, z), got shape {tuple(x.shape)}; "
                "num_channels is fixed when the head is built."
            )
        ae = self.autoencoder
        crops, layout = ae.split_crops(x)
        chunks = crops.split(ae.chunk_size) if ae.chunk_size else (crops,)
        latents, skips = [], []
        for chunk in chunks:
            moments, chunk_skips = ae.encoder.forward_with_skips(chunk)
            mean, logvar = moments.chunk(2, dim=1)
            if self.latent == "sample":
                mean = mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * torch.randn_like(mean)
            latents.append(mean)
            skips.append(chunk_skips)
        # Latent residual over the whole field: tokens carry the latents of all channels.
        z = ae.merge_crops(torch.cat(latents), layout)
        z = z + self.latent_transformer(z)
        z_crops, _ = ae.split_crops(z, factor=ae.downsample_factor, group=ae.latent_channels)
        outputs = []
        for z_chunk, chunk_skips in zip(z_crops.split(latents[0].shape[0]), skips, strict=True):
            scaled = [scale * skip for scale, skip in zip(self.skip_scales, chunk_skips, strict=True)]
            outputs.append(ae.decoder(z_chunk, scaled))
        return ae.merge_crops(torch.cat(outputs), layout)
