"""Tadpole: a P3D autoencoder with a diagonal-Gaussian (KL) latent for 3D physics fields.

A plain `nn.Module` reimplementation of the official Tadpole S/B/L models (thuerey-group, Hugging Face
`thuerey-group/Tadpole`). `TadpoleAutoencoder.encoder` and `.decoder` have exactly the official state-dict
names and shapes, so the published `tadpole_{s,b,l}_{encoder,decoder}.safetensors` load with `strict=True`,
and the outputs equal the official model's for the same weights and input.

Public names:
- `TadpoleAutoencoder`: crops, folds channels, encodes, decodes; the model to use.
- `TadpoleEncoder`, `TadpoleDecoder`: the networks on one crop of `in_channels` channels.
- `TadpoleConfig`, `TADPOLE_CONFIGS`: the S/B/L hyper-parameters.
- `TadpoleOutput`, `CropLayout`: results of `TadpoleAutoencoder.reconstruct` and `.split_crops`.

Architecture (per crop, S sizes; B/L scale the widths):
    encoder: conv 3^3 (1 -> 32) -> conv s2 (-> 32) -> 2 x [GroupNorm-GELU-conv] x 2 -> conv s2 (-> 64)
             -> windowed cosine-attention transformer: stage 64 -> conv s2 (-> 128) -> stage 128
             -> conv s2 (-> 256) -> latent stage 256 -> conv 1^3 (-> mean | logvar)
    decoder: upsample (256 -> 128) -> stage 128 -> upsample (-> 64) -> stage 64 -> LayerNorm + conv 3^3
             -> conv 1^3 + PixelShuffle (-> 32, x2) -> 2 res blocks -> conv 1^3 + PixelShuffle (x2)
             -> conv 3^3 (32 -> 1)
Every spatial axis is divided by 16 (`downsample_factor`); windows are 4^3 and never shifted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn as nn

from pfm.models.layers.attention import check_attention_backend
from pfm.models.layers.p3d import (
    Downsample,
    FinalLayer,
    PixelShuffle3d,
    ResidualConvBlock,
    Upsample,
    WindowAttention,
    WindowStage,
)

__all__ = [
    "TADPOLE_CONFIGS",
    "CropLayout",
    "TadpoleAutoencoder",
    "TadpoleConfig",
    "TadpoleDecoder",
    "TadpoleEncoder",
    "TadpoleOutput",
]

DOWNSAMPLE_FACTOR = 16
_AXES = ("x", "y", "z")
_LOGVAR_MIN, _LOGVAR_MAX = -30.0, 20.0


@dataclass(frozen=True)
class TadpoleConfig:
    """Hyper-parameters of one Tadpole size (the official `P3D_Configs`)."""

    hidden_size: int  # width of the first transformer stage; doubles per transformer downsampling
    num_heads: int
    conv_dims: tuple[int, int, int]  # conv widths at full, 1/2 and 1/4 resolution
    num_groups: int  # GroupNorm groups in the conv residual blocks
    window_size: int = 4
    depth: int = 2  # transformer blocks per stage
    mlp_ratio: float = 4.0
    num_conv_blocks: int = 2  # residual conv blocks at 1/2 resolution

    @property
    def latent_channels(self) -> int:
        """Latent channels per encoded channel: hidden_size * 4."""
        return self.hidden_size * 4


TADPOLE_CONFIGS: dict[str, TadpoleConfig] = {
    "S": TadpoleConfig(hidden_size=64, num_heads=4, conv_dims=(32, 32, 64), num_groups=16),
    "B": TadpoleConfig(hidden_size=128, num_heads=4, conv_dims=(64, 128, 128), num_groups=32),
    "L": TadpoleConfig(hidden_size=256, num_heads=8, conv_dims=(128, 256, 256), num_groups=32),
}


def _get_config(size: str) -> TadpoleConfig:
    """Look a size up in `TADPOLE_CONFIGS`, with a helpful error."""
    if size not in TADPOLE_CONFIGS:
        raise ValueError(f"size={size!r} is not a Tadpole size; expected one of {list(TADPOLE_CONFIGS)}.")
    return TADPOLE_CONFIGS[size]


def _neighbour_multiples(size: int) -> tuple[int, int]:
    """The positive multiples of 16 just below (at least 16) and just above `size`."""
    lower = max(DOWNSAMPLE_FACTOR, size // DOWNSAMPLE_FACTOR * DOWNSAMPLE_FACTOR)
    return lower, max(lower + DOWNSAMPLE_FACTOR, -(-size // DOWNSAMPLE_FACTOR) * DOWNSAMPLE_FACTOR)


def _init_linear(module: nn.Module) -> None:
    """Xavier-uniform Linear weights and zero biases, the official transformer initialisation."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class ConvEncoder(nn.Module):
    """Conv stem: (N, in, X, Y, Z) -> (N, conv_dims[2], X/4, Y/4, Z/4)."""

    def __init__(self, config: TadpoleConfig, in_channels: int) -> None:
        super().__init__()
        d0, d1, d2 = config.conv_dims
        self.feature_embed = nn.Conv3d(in_channels, d0, 3, 1, 1)
        self.downsampling_layers = nn.ModuleList([nn.Conv3d(d0, d1, 3, 2, 1), nn.Conv3d(d1, d2, 3, 2, 1)])
        self.blocks = nn.ModuleList(
            ResidualConvBlock(d1, config.num_groups) for _ in range(config.num_conv_blocks)
        )

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor] | None = None) -> torch.Tensor:
        """(N, in, X, Y, Z) -> (N, d2, X/4, Y/4, Z/4); appends full and 1/2 resolution features to `skips`."""
        x = self.feature_embed(x)
        if skips is not None:
            skips.append(x)
        x = self.downsampling_layers[0](x)
        for block in self.blocks:
            x = block(x)
        if skips is not None:
            skips.append(x)
        return self.downsampling_layers[1](x)


class ConvDecoder(nn.Module):
    """Conv head: (N, conv_dims[2], X, Y, Z) -> (N, out, 4X, 4Y, 4Z), mirroring `ConvEncoder`."""

    def __init__(self, config: TadpoleConfig, out_channels: int) -> None:
        super().__init__()
        d0, d1, d2 = config.conv_dims
        self.decompress = nn.Conv3d(d0, out_channels, 3, 1, 1)
        self.blocks = nn.ModuleList(
            ResidualConvBlock(d1, config.num_groups) for _ in range(config.num_conv_blocks)
        )
        self.upsampling_layers = nn.ModuleList([_ShuffleUpsample(d2, d1), _ShuffleUpsample(d1, d0)])

    def forward(self, x: torch.Tensor, skips: Sequence[torch.Tensor | None] = (None, None)) -> torch.Tensor:
        """(N, d2, X, Y, Z) -> (N, out, 4X, 4Y, 4Z); adds `skips` (half, then full resolution) if given."""
        x = _add(self.upsampling_layers[0](x), skips[0])
        for block in self.blocks:
            x = block(x)
        x = _add(self.upsampling_layers[1](x), skips[1])
        return self.decompress(x)


class _ShuffleUpsample(nn.Module):
    """1x1x1 conv to 8x the output channels, then PixelShuffle x2."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.linear_conv = nn.Conv3d(in_channels, out_channels * 8, 1)
        self.shuffle = PixelShuffle3d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in, X, Y, Z) -> (N, out, 2X, 2Y, 2Z)."""
        return self.shuffle(self.linear_conv(x))


def _add(x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
    """`x + skip`, or `x` when there is no skip."""
    return x if skip is None else x + skip


def _stage_args(config: TadpoleConfig, attention_backend: str) -> dict[str, object]:
    """Keyword arguments shared by every `WindowStage` of encoder and decoder."""
    return {
        "depth": config.depth,
        "num_heads": config.num_heads,
        "window_size": config.window_size,
        "mlp_ratio": config.mlp_ratio,
        "attention_backend": attention_backend,
    }


class TransformerEncoder(nn.Module):
    """Windowed transformer: (N, h, X, Y, Z) -> (N, 4h, X/4, Y/4, Z/4): 2 stages, 2 downsamplings, 1 stage."""

    def __init__(self, config: TadpoleConfig, attention_backend: str) -> None:
        super().__init__()
        h = config.hidden_size
        stage_args = _stage_args(config, attention_backend)
        self.encoder_levels = nn.ModuleList([WindowStage(h, **stage_args), WindowStage(2 * h, **stage_args)])
        self.downsamples = nn.ModuleList([Downsample(h), Downsample(2 * h)])
        self.latent = WindowStage(4 * h, **stage_args)
        self.apply(_init_linear)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor] | None = None) -> torch.Tensor:
        """(N, h, X, Y, Z) -> (N, 4h, X/4, Y/4, Z/4); appends each stage's output to `skips` if given."""
        for level, downsample in zip(self.encoder_levels, self.downsamples, strict=True):
            x = level(x)
            if skips is not None:
                skips.append(x)
            x = downsample(x)
        return self.latent(x)


class TransformerDecoder(nn.Module):
    """Windowed transformer: (N, 4h, X, Y, Z) -> (N, h, 4X, 4Y, 4Z)."""

    def __init__(self, config: TadpoleConfig, attention_backend: str) -> None:
        super().__init__()
        h = config.hidden_size
        stage_args = _stage_args(config, attention_backend)
        self.upsamples = nn.ModuleList([Upsample(4 * h), Upsample(2 * h)])
        self.decoder_levels = nn.ModuleList([WindowStage(2 * h, **stage_args), WindowStage(h, **stage_args)])
        self.final_layer = FinalLayer(h)
        self.apply(_init_linear)
        # The official init zeroes the (unused) adaLN Linear after the Xavier pass.
        _zero_linear(self.final_layer.adaLN_modulation[1])

    def forward(self, x: torch.Tensor, skips: Sequence[torch.Tensor | None] = (None, None)) -> torch.Tensor:
        """(N, 4h, X, Y, Z) -> (N, h, 4X, 4Y, 4Z); adds `skips` (at 1/2, then 1/4 output size) if given."""
        for upsample, level, skip in zip(self.upsamples, self.decoder_levels, skips, strict=True):
            x = level(_add(upsample(x), skip))
        return self.final_layer(x)


def _zero_linear(module: nn.Module) -> None:
    """Zero a Linear layer's weight and bias (the official zero-initialised adaLN)."""
    if isinstance(module, nn.Linear):
        nn.init.zeros_(module.weight)
        nn.init.zeros_(module.bias)


class TadpoleEncoder(nn.Module):
    """The official `KLP3DEncoder` on one crop: (N, in, X, Y, Z) -> moments (N, 2 latent, X/16, ...)."""

    def __init__(self, size: str = "S", in_channels: int = 1, attention_backend: str = "sdpa") -> None:
        super().__init__()
        config = _get_config(size)
        self.transformer_encoder = TransformerEncoder(config, attention_backend)
        self.conv_encoder = ConvEncoder(config, in_channels)
        self.to_latent = nn.Conv3d(config.latent_channels, 2 * config.latent_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in, X, Y, Z) -> (N, 2 * latent, X/16, Y/16, Z/16): the mean, then the raw log-variance."""
        return self.to_latent(self.transformer_encoder(self.conv_encoder(x)))

    def forward_with_skips(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Like `forward`, also returning the four stage outputs a U-Net decoder can add back.

        Returns:
            moments: (N, 2 * latent, X/16, Y/16, Z/16).
            skips: in the order `TadpoleDecoder` consumes them, shapes for S (B/L scale the widths):
                (N, 128, X/8, ...), (N, 64, X/4, ...), (N, 32, X/2, ...), (N, 32, X, ...).
        """
        skips: list[torch.Tensor] = []
        x = self.conv_encoder(x, skips)
        x = self.transformer_encoder(x, skips)
        return self.to_latent(x), skips[::-1]


class TadpoleDecoder(nn.Module):
    """The official `P3DDecoder` on one crop: (N, latent, X, Y, Z) -> (N, out, 16X, 16Y, 16Z)."""

    def __init__(self, size: str = "S", out_channels: int = 1, attention_backend: str = "sdpa") -> None:
        super().__init__()
        config = _get_config(size)
        self.transformer_decoder = TransformerDecoder(config, attention_backend)
        self.conv_decoder = ConvDecoder(config, out_channels)

    def forward(self, z: torch.Tensor, skips: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """(N, latent, X, Y, Z) -> (N, out, 16X, 16Y, 16Z).

        `skips`, if given, are four tensors (or None) added after each upsampling, in the order and shapes of
        `TadpoleEncoder.forward_with_skips`; the caller scales them.
        """
        skips = (None,) * 4 if skips is None else skips
        return self.conv_decoder(self.transformer_decoder(z, skips[:2]), skips[2:])


class CropLayout(NamedTuple):
    """How a (batch, channels, x, y, z) field was cut into crops: enough to put the crops back."""

    batch: int
    num_groups: int  # channel groups folded into the batch (channels / in_channels)
    grid: tuple[int, int, int]  # crops along x, y, z


class TadpoleOutput(NamedTuple):
    """Reconstruction and posterior of `TadpoleAutoencoder.reconstruct`."""

    reconstruction: torch.Tensor  # (B, C, X, Y, Z)
    mean: torch.Tensor  # (B, C / in_channels * latent_channels, X/16, Y/16, Z/16)
    logvar: torch.Tensor  # same shape as mean, clamped to [-30, 20]


class TadpoleAutoencoder(nn.Module):
    """Tadpole autoencoder on whole fields: crop, fold channels, encode, decode, reassemble.

    Every channel (every group of `in_channels` channels) of every crop is encoded on its own, as in the
    official model. A field larger than `crop_size` along an axis is tiled into non-overlapping crops of
    `crop_size` along it (the size must be a multiple of `crop_size`); an axis not larger than `crop_size` is
    one crop (the official model does the same). `crop_size=None` encodes the whole field at once. Every axis
    must be a multiple of 16.

    Shapes: input (B, C, X, Y, Z); latent (B, C / in_channels * latent_channels, X/16, Y/16, Z/16), channel
    group-major (the latents of channel 0, then channel 1, ...).

    Args:
        size: "S", "B" or "L" (8.8M, 38.1M, 152.1M parameters).
        crop_size: crop edge in voxels, a multiple of 16, or None for no cropping.
        latent: "mode" uses the posterior mean; "sample" draws mean + std * noise (reparametrised), in
            training and evaluation alike, as the official model does.
        chunk_size: at most this many crops go through the encoder or decoder at once (bounds memory).
        in_channels: channels encoded together; 1 (channels folded into the batch) for the published weights.
        attention_backend: "sdpa", "math" or "xformers" (CUDA only); see `pfm.models.layers.attention`.
    """

    downsample_factor: int = DOWNSAMPLE_FACTOR

    def __init__(
        self,
        size: Literal["S", "B", "L"] = "S",
        crop_size: int | None = 64,
        latent: Literal["mode", "sample"] = "mode",
        chunk_size: int | None = None,
        in_channels: int = 1,
        attention_backend: Literal["sdpa", "math", "xformers"] = "sdpa",
    ) -> None:
        super().__init__()
        config = _get_config(size)
        if crop_size is not None and (crop_size <= 0 or crop_size % DOWNSAMPLE_FACTOR):
            lower, upper = _neighbour_multiples(crop_size)
            raise ValueError(
                f"crop_size={crop_size} is not a positive multiple of {DOWNSAMPLE_FACTOR} (the Tadpole "
                f"downsampling factor); use e.g. crop_size={lower} or {upper}, or crop_size=None to encode "
                "whole fields."
            )
        if latent not in ("mode", "sample"):
            raise ValueError(f"latent={latent!r} is not supported; expected 'mode' or 'sample'.")
        if chunk_size is not None and chunk_size <= 0:
            raise ValueError(f"chunk_size={chunk_size} must be a positive number of crops, or None.")
        if in_channels <= 0:
            raise ValueError(f"in_channels={in_channels} must be positive (1 for the published weights).")
        check_attention_backend(attention_backend)
        self.size = size
        self.config = config
        self.crop_size = crop_size
        self.latent = latent
        self.chunk_size = chunk_size
        self.in_channels = in_channels
        self.latent_channels = config.latent_channels
        self.encoder = TadpoleEncoder(size, in_channels, attention_backend)
        self.decoder = TadpoleDecoder(size, in_channels, attention_backend)

    def set_attention_backend(self, backend: Literal["sdpa", "math", "xformers"]) -> None:
        """Switch every attention layer to `backend` ("sdpa", "math" or "xformers")."""
        check_attention_backend(backend)
        for module in self.modules():
            if isinstance(module, WindowAttention):
                module.attention_backend = backend

    # ----------------------------------------------------------------------------------------------- cropping
    def _crop_shape(self, spatial: Sequence[int], factor: int) -> tuple[int, int, int]:
        """Crop edge per axis on a grid `factor` times coarser than the field; raises on unusable sizes."""
        what = "latent" if factor > 1 else "spatial"
        crop = None if self.crop_size is None else self.crop_size // factor
        shape = []
        for axis, size in zip(_AXES, spatial, strict=True):
            if factor == 1 and size % DOWNSAMPLE_FACTOR:
                lower, upper = _neighbour_multiples(size)
                raise ValueError(
                    f"spatial size {size} along {axis} is not a multiple of {DOWNSAMPLE_FACTOR} (the Tadpole "
                    f"downsampling factor); crop or pad the field to a multiple of {DOWNSAMPLE_FACTOR}, "
                    f"e.g. {lower} (crop) or {upper} (pad)."
                )
            if crop is not None and size > crop and size % crop:
                raise ValueError(
                    f"{what} size {size} along {axis} is larger than the crop ({crop}) but not a multiple "
                    f"of it; use a {what} size that is a multiple of {crop}, choose a crop_size that divides "
                    "the field size (a multiple of 16), or set crop_size=None to encode whole fields."
                )
            shape.append(size if crop is None else min(size, crop))
        return shape[0], shape[1], shape[2]

    def split_crops(
        self, x: torch.Tensor, factor: int = 1, group: int | None = None
    ) -> tuple[torch.Tensor, CropLayout]:
        """Cut (B, C, X, Y, Z) into crops (B * C/g * crops, g, cx, cy, cz), g = `group` or `in_channels`.

        `factor` = 16 cuts a latent grid into the latent crops of the same field crops.
        """
        if x.ndim != 5:
            raise ValueError(f"expected a (batch, channels, x, y, z) tensor, got shape {tuple(x.shape)}.")
        group = self.in_channels if group is None else group
        b, c, sx, sy, sz = x.shape
        if c % group:
            raise ValueError(
                f"{c} channels cannot be split into groups of {group}; the channel count must be a multiple "
                f"of {group} (in_channels={self.in_channels}, latent_channels={self.latent_channels})."
            )
        cx, cy, cz = self._crop_shape((sx, sy, sz), factor)
        grid = (sx // cx, sy // cy, sz // cz)
        x = x.reshape(b, c // group, group, grid[0], cx, grid[1], cy, grid[2], cz)
        x = x.permute(0, 1, 3, 5, 7, 2, 4, 6, 8).reshape(-1, group, cx, cy, cz)
        return x, CropLayout(b, c // group, grid)

    @staticmethod
    def merge_crops(crops: torch.Tensor, layout: CropLayout) -> torch.Tensor:
        """Inverse of `split_crops`: (B * G * crops, c, cx, cy, cz) -> (B, G * c, U cx, V cy, W cz)."""
        _, c, cx, cy, cz = crops.shape
        u, v, w = layout.grid
        x = crops.reshape(layout.batch, layout.num_groups, u, v, w, c, cx, cy, cz)
        x = x.permute(0, 1, 5, 2, 6, 3, 7, 4, 8)
        return x.reshape(layout.batch, layout.num_groups * c, u * cx, v * cy, w * cz)

    def map_chunks(self, fn: Callable[[torch.Tensor], torch.Tensor], crops: torch.Tensor) -> torch.Tensor:
        """Apply `fn` to at most `chunk_size` crops at a time and concatenate the results."""
        if self.chunk_size is None or crops.shape[0] <= self.chunk_size:
            return fn(crops)
        return torch.cat([fn(chunk) for chunk in crops.split(self.chunk_size)], dim=0)

    # ------------------------------------------------------------------------------------------- autoencoder
    def encode_distribution(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, X, Y, Z) -> posterior (mean, logvar), each (B, C/in_channels * latent, X/16, Y/16, Z/16).

        logvar is clamped to [-30, 20]. The KL to N(0, 1) per element is
        `0.5 * (mean**2 + logvar.exp() - 1 - logvar)`.
        """
        crops, layout = self.split_crops(x)
        mean, logvar = self.map_chunks(self.encoder, crops).chunk(2, dim=1)
        logvar = logvar.clamp(_LOGVAR_MIN, _LOGVAR_MAX)
        return self.merge_crops(mean, layout), self.merge_crops(logvar, layout)

    def sample_latent(self, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """The latent for `self.latent`: `mean`, or `mean + exp(logvar / 2) * noise` (same shape)."""
        if self.latent == "mode":
            return mean
        return mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, X, Y, Z) -> latent (B, C/in_channels * latent_channels, X/16, Y/16, Z/16)."""
        return self.sample_latent(*self.encode_distribution(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, G * latent_channels, X, Y, Z) -> (B, G * in_channels, 16X, 16Y, 16Z), crop by crop."""
        crops, layout = self.split_crops(z, factor=DOWNSAMPLE_FACTOR, group=self.latent_channels)
        return self.merge_crops(self.map_chunks(self.decoder, crops), layout)

    def reconstruct(self, x: torch.Tensor) -> TadpoleOutput:
        """(B, C, X, Y, Z) -> reconstruction (same shape) with the posterior (mean, logvar) for a KL loss."""
        mean, logvar = self.encode_distribution(x)
        return TadpoleOutput(self.decode(self.sample_latent(mean, logvar)), mean, logvar)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, X, Y, Z) -> reconstruction (B, C, X, Y, Z)."""
        return self.decode(self.encode(x))
