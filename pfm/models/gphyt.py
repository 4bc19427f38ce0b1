"""GPhyT: a transformer neural differentiator over named physical fields, loading the official weights.

A plain `nn.Module` reimplementation of the General Physics Transformer ("Towards a Physics Foundation
Model", weights on Hugging Face `flwi/Physics-Foundation-Model`, files `gphyt-{S,M,L,XL}.pth`). From a short
context of frames it predicts the time derivative of every field at the last frame; an integrator turns it
into the next frame. `GPhyT.from_official` loads an official state dict (the double q/k/v projection folded
into one matrix) and reproduces the official output; `to_official_state_dict` exports back.

Public names:
- `GPhyT`: the model.
- `GPHYT_SIZES`: S/M/L/XL widths (`hidden_dim`, `mlp_dim`, `num_heads`, `num_layers`).
- `OFFICIAL_FIELDS`: the field vocabulary of the official weights, in their channel order.
- `INTEGRATORS`: the accepted integrator names.

The field tokenizers are pfm/models/gphyt_tokens.py, the official converter pfm/models/gphyt_official.py.

Architecture, for a window `x` of shape (B, T, *spatial, C) with C named fields:
    features: the fields, their central differences along t and along every spatial axis
              (stencil [-1, 0, 1], not divided by 2, replicate padding)       -> (B, T, *spatial, (2+N) C)
    tokenizer: linear map of each (pt, p1, ..., pN) patch (the official Conv3d with kernel = stride = patch)
              + a learned "absent" embedding for every vocabulary field the batch lacks
              + learned absolute position embedding (interpolated to other grids) or axial RoPE
    blocks:   pre-LayerNorm transformer blocks, full attention over all space-time tokens
    detokenizer: linear map of the last time patch's tokens back to pixels (the official ConvTranspose3d)
              -> derivative of the last frame, (B, *spatial, C)
The official model sees exactly 4 frames of 256x128 with the 5 fields of `OFFICIAL_FIELDS`; this one takes
1..num_frames frames, any grid whose sides are multiples of the patch, 1D/2D/3D fields, and any subset or
order of its vocabulary, named per batch.

Integrators (`step`): with f(window) the derivative of the window's last frame u and h = dt,
    euler: u + h f(w)
    heun:  u + h/2 (k1 + k2),  k1 = f(w), k2 = f(w + [u + h k1])
    rk4:   u + h/6 (k1 + 2 k2 + 2 k3 + k4),  k1 = f(w), k2 = f(w + [u + h/2 k1]), k3 = f(w + [u + h/2 k2]),
           k4 = f(w + [u + h k3])
where `w + [v]` is the window the next step would see if v were the next frame: v appended, and the oldest
frame dropped once the window holds num_frames frames. Euler with dt = 1 is the official model.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

# the official release's sizes and field vocabulary live with its converter, which imports nothing of this module
from pfm.models.gphyt_official import GPHYT_SIZES, OFFICIAL_FIELDS, load_official, to_official
from pfm.models.gphyt_tokens import FieldDetokenizer, FieldTokenizer, derivative_features
from pfm.models.layers.attention import check_attention_backend
from pfm.models.layers.vit import TransformerBlock, axial_rope
from pfm.models.rollout import finite_rows, rollout

__all__ = ["GPHYT_SIZES", "INTEGRATORS", "OFFICIAL_FIELDS", "GPhyT"]

INTEGRATORS: tuple[str, ...] = ("euler", "heun", "rk4")
POSITIONS: tuple[str, ...] = ("absolute", "rope")
# Defaults per number of spatial axes: the grid the position embedding is trained on, and (t, *space) patches.
_DEFAULT_GRID = {1: (256,), 2: (256, 128), 3: (64, 64, 64)}
_DEFAULT_PATCH = {1: (1, 16), 2: (1, 16, 16), 3: (1, 8, 8, 8)}
_INTERPOLATION = {1: "linear", 2: "bicubic", 3: "trilinear"}


def _resolve_widths(size: str | None, overrides: Mapping[str, int | None]) -> dict[str, int]:
    """The widths of `size`, with any explicit (non-None) width taking precedence."""
    if size is not None and size not in GPHYT_SIZES:
        raise ValueError(f"size={size!r} is not a GPhyT size; expected one of {list(GPHYT_SIZES)} or None.")
    widths: dict[str, Any] = dict(GPHYT_SIZES[size]) if size is not None else {}
    widths.update({k: v for k, v in overrides.items() if v is not None})
    missing = [k for k in GPHYT_SIZES["S"] if k not in widths]
    if missing:
        raise ValueError(f"size=None needs explicit {missing}; pass them or choose size='S'|'M'|'L'|'XL'.")
    return widths


class GPhyT(nn.Module):
    """General Physics Transformer: window (B, T, *spatial, C) of named fields -> next frame (B, 1, *spatial, C).

    Args:
        size: "S" | "M" | "L" | "XL" (see `GPHYT_SIZES`), or None with every width given explicitly.
        hidden_dim, mlp_dim, num_heads, num_layers: override the widths of `size`.
        fields: the field vocabulary (names); a batch may name any subset of it, in any order.
        num_frames: the most context frames the model takes (the absolute embedding's time length).
        grid: spatial sides the absolute position embedding is trained on; default (256, 128) in 2D,
            (64, 64, 64) in 3D. Other grids (sides multiples of the patch) are interpolated.
        patch_size: (t, *spatial) patch; default (1, 16, 16) in 2D and (1, 8, 8, 8) in 3D.
        num_spatial_dims: 1, 2 or 3.
        integrator: "euler" | "heun" | "rk4", used by `forward`/`step`/`rollout`; dt its step.
        position: "absolute" (learned, the official model) or "rope" (axial rotary, for pfm-trained models).
        attention_backend: "sdpa" | "math" | "xformers" (CUDA only).
        dropout: dropout on attention weights and MLP outputs while training.
    """

    def __init__(
        self,
        size: str | None = "S",
        *,
        hidden_dim: int | None = None,
        mlp_dim: int | None = None,
        num_heads: int | None = None,
        num_layers: int | None = None,
        fields: Sequence[str] = OFFICIAL_FIELDS,
        num_frames: int = 4,
        grid: Sequence[int] | None = None,
        patch_size: Sequence[int] | None = None,
        num_spatial_dims: int = 2,
        integrator: str = "euler",
        dt: float = 1.0,
        position: str = "absolute",
        attention_backend: str = "sdpa",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        widths = _resolve_widths(
            size,
            {"hidden_dim": hidden_dim, "mlp_dim": mlp_dim, "num_heads": num_heads, "num_layers": num_layers},
        )
        if num_spatial_dims not in _DEFAULT_GRID:
            raise ValueError(f"num_spatial_dims={num_spatial_dims} is not supported; expected 1, 2 or 3.")
        grid = tuple(int(g) for g in (grid if grid is not None else _DEFAULT_GRID[num_spatial_dims]))
        patch = tuple(
            int(p) for p in (patch_size if patch_size is not None else _DEFAULT_PATCH[num_spatial_dims])
        )
        if len(grid) != num_spatial_dims or len(patch) != num_spatial_dims + 1:
            raise ValueError(
                f"grid={list(grid)} and patch_size={list(patch)} do not fit num_spatial_dims={num_spatial_dims}: "
                f"expected {num_spatial_dims} grid sides and {num_spatial_dims + 1} patch entries (t, *spatial), "
                f"e.g. grid={list(_DEFAULT_GRID[num_spatial_dims])} patch_size={list(_DEFAULT_PATCH[num_spatial_dims])}."
            )
        if min(patch) < 1:
            raise ValueError(
                f"patch_size={list(patch)} must hold positive sizes (t, *spatial), e.g. [1, 16, 16]."
            )
        if (
            num_frames < 1
            or num_frames % patch[0]
            or any(g % p or g < 1 for g, p in zip(grid, patch[1:], strict=True))
        ):
            raise ValueError(
                f"num_frames={num_frames} and grid={list(grid)} must be positive multiples of patch_size="
                f"{list(patch)} (t, *spatial); choose sides divisible by the patch."
            )
        if integrator not in INTEGRATORS:
            raise ValueError(
                f"integrator={integrator!r} is not supported; expected one of {list(INTEGRATORS)}."
            )
        if position not in POSITIONS:
            raise ValueError(f"position={position!r} is not supported; expected one of {list(POSITIONS)}.")
        self.fields: tuple[str, ...] = _check_names(fields, "fields")
        self.num_frames, self.grid, self.patch_size = int(num_frames), grid, patch
        self.num_spatial_dims, self.integrator, self.dt, self.position = (
            num_spatial_dims,
            integrator,
            dt,
            position,
        )
        self.hidden_dim, self.mlp_dim = widths["hidden_dim"], widths["mlp_dim"]
        self.num_heads, self.num_layers = widths["num_heads"], widths["num_layers"]
        self.num_finite_steps: int | None = None  # set by `rollout`
        check_attention_backend(attention_backend)

        dim, num_fields = self.hidden_dim, len(self.fields)
        self.tokenizer = FieldTokenizer(dim, 2 + num_spatial_dims, num_fields, patch)
        # Added to every token for each vocabulary field the batch lacks, so that "absent" differs from
        # "present and zero". Loading official weights zeroes it: the official model zero-fills.
        self.absent_embedding = nn.Parameter(0.02 * torch.randn(num_fields, dim))
        token_grid = (num_frames // patch[0], *(g // p for g, p in zip(grid, patch[1:], strict=True)))
        if position == "absolute":
            self.pos_embedding = nn.Parameter(0.02 * torch.randn(1, *token_grid, dim))
        else:
            self.register_parameter("pos_embedding", None)
            axial_rope(token_grid, dim // self.num_heads, torch.device("cpu"))  # fail early if too narrow
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, self.mlp_dim, self.num_heads, dropout, attention_backend)
            for _ in range(self.num_layers)
        )
        self.detokenizer = FieldDetokenizer(dim, num_fields, patch)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    # ----------------------------------------------------------------------------------------------- fields
    def _field_index(
        self, fields: Sequence[str] | None, num_channels: int, device: torch.device
    ) -> torch.Tensor:
        """Vocabulary indices of the batch's channels, checked against the vocabulary and the channel count."""
        names = self.fields if fields is None else _check_names(fields, "fields")
        unknown = [n for n in names if n not in self.fields]
        if unknown:
            raise ValueError(
                f"fields {unknown} are not in the model's vocabulary {list(self.fields)}; rename the data "
                f"fields, or add them with model.extend_fields({unknown}) before fine-tuning."
            )
        if len(names) != num_channels:
            raise ValueError(
                f"the input has {num_channels} channels but {len(names)} field names {list(names)}; pass "
                "fields=[...] naming every channel of the last axis, in order."
            )
        return torch.tensor([self.fields.index(n) for n in names], device=device)

    def extend_fields(self, new_fields: Sequence[str]) -> None:
        """Add `new_fields` to the vocabulary: new tokenizer inputs and detokenizer outputs; old weights kept.

        New input weights are drawn with the spread of the existing ones; new output weights are zero (the
        new fields' derivative starts at 0) and their absent embeddings zero, so outputs for batches of the
        old fields do not change. Build the optimizer after calling this.
        """
        new = _check_names(new_fields, "new_fields")
        clash = [n for n in new if n in self.fields]
        if clash:
            raise ValueError(
                f"fields {clash} are already in the vocabulary {list(self.fields)}; pass only new names."
            )
        self.tokenizer.extend(len(new))
        self.detokenizer.extend(len(new))
        with torch.no_grad():
            extra = self.absent_embedding.new_zeros(len(new), self.hidden_dim)
            self.absent_embedding = nn.Parameter(torch.cat((self.absent_embedding, extra)))
        self.fields = self.fields + new

    # ---------------------------------------------------------------------------------------------- network
    def _check_input(self, x: torch.Tensor) -> None:
        """Shape and finiteness of a window (B, T, *spatial, C), with errors that say what to change."""
        nd = self.num_spatial_dims
        if x.ndim != nd + 3:
            layout = "(B, T, " + ", ".join("DHW"[3 - nd :]) + ", C)"
            raise ValueError(f"expected a window {layout} (channels last), got shape {tuple(x.shape)}.")
        frames, sides = x.shape[1], tuple(x.shape[2:-1])
        if not 1 <= frames <= self.num_frames or frames % self.patch_size[0]:
            raise ValueError(
                f"the window has {frames} frames; this model takes 1..{self.num_frames} (num_frames), a multiple "
                f"of the time patch {self.patch_size[0]}; pass the last {self.num_frames} frames."
            )
        if any(s % p for s, p in zip(sides, self.patch_size[1:], strict=True)):
            fit = [max(p, s // p * p) for s, p in zip(sides, self.patch_size[1:], strict=True)]
            raise ValueError(
                f"spatial sides {list(sides)} are not multiples of the patch {list(self.patch_size[1:])}; "
                f"crop or resample to multiples, e.g. {fit}."
            )
        if not bool(finite_rows(x).all()):
            raise ValueError(
                "the input window contains NaN or Inf values; clean the data (GPhyT rejects them)."
            )

    def _positions(self, token_grid: Sequence[int]) -> torch.Tensor:
        """The absolute embedding for `token_grid` (nT, *n): the last nT time rows, space interpolated."""
        pe = self.pos_embedding
        pe = pe[:, pe.shape[1] - token_grid[0] :]
        if tuple(pe.shape[2:-1]) != tuple(token_grid[1:]):
            moved = pe[0].movedim(-1, 1).float()  # (nT, hidden, *n): interpolation wants channels first
            mode = _INTERPOLATION[self.num_spatial_dims]
            moved = F.interpolate(moved, size=tuple(token_grid[1:]), mode=mode, align_corners=False)
            pe = moved.movedim(1, -1).unsqueeze(0).to(pe.dtype)
        return pe

    def derivative(self, x: torch.Tensor, fields: Sequence[str] | None = None) -> torch.Tensor:
        """The network output, the time derivative at the last frame: (B, T, *spatial, C) -> (B, *spatial, C).

        `fields` names the C channels (default: the vocabulary, in order); vocabulary fields not named are
        absent: their inputs are zero and their absent embeddings are added to every token.
        """
        self._check_input(x)
        index = self._field_index(fields, x.shape[-1], x.device)
        if x.dtype in (torch.float32, torch.float64) and not torch.is_autocast_enabled(x.device.type):
            identity = fields is None or tuple(fields) == self.fields  # no weight columns to gather
            tokens = self.tokenizer.embed(x, None if identity else index)
        else:
            # bf16/fp16 would round the window before the folded stencil takes its differences, which loses
            # the small differences of smooth fields: differences first, in the input's precision
            tokens = self.tokenizer(derivative_features(x), index)
        if index.numel() < len(self.fields):
            present = torch.zeros(len(self.fields), dtype=torch.bool, device=x.device)
            present[index] = True
            tokens = tokens + self.absent_embedding[~present].sum(0).to(tokens.dtype)
        token_grid = tuple(tokens.shape[1:-1])
        rope = None
        if self.pos_embedding is not None:
            tokens = tokens + self._positions(token_grid)
        else:
            rope = axial_rope(token_grid, self.hidden_dim // self.num_heads, x.device)
        h = tokens.flatten(1, -2)
        # Only the last frame's derivative is used, so the last block computes only the last time patch's
        # tokens (they still attend to all), and only those are un-patched.
        num_last = math.prod(token_grid[1:])
        for i, block in enumerate(self.blocks):
            h = block(h, rope, num_last if i == len(self.blocks) - 1 else None)
        last = h.unflatten(1, (1, *token_grid[1:]))
        out = self.detokenizer(last, index)  # (B, pt, *spatial, C): the last time patch's frames
        # squeeze, not select, when the time patch is one frame: select's backward zero-fills and copies
        return out.squeeze(1) if out.shape[1] == 1 else out[:, -1]

    def _advance(self, window: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
        """`frame` (B, *spatial, C) appended to `window`, keeping at most num_frames frames."""
        window = torch.cat((window, frame.unsqueeze(1).to(window.dtype)), dim=1)
        return window[:, -self.num_frames :]

    def step(
        self,
        x: torch.Tensor,
        fields: Sequence[str] | None = None,
        integrator: str | None = None,
        dt: float | None = None,
    ) -> torch.Tensor:
        """One integrator step (see the module docstring): (B, T, *spatial, C) -> next frame (B, 1, *spatial, C)."""
        integrator = self.integrator if integrator is None else integrator
        h = self.dt if dt is None else dt
        if integrator not in INTEGRATORS:
            raise ValueError(
                f"integrator={integrator!r} is not supported; expected one of {list(INTEGRATORS)}."
            )

        def f(window: torch.Tensor) -> torch.Tensor:
            return self.derivative(window, fields)

        u = x[:, -1]
        k1 = f(x)
        if integrator == "euler":
            out = u + h * k1
        elif integrator == "heun":
            k2 = f(self._advance(x, u + h * k1))
            out = u + h / 2 * (k1 + k2)
        else:
            k2 = f(self._advance(x, u + h / 2 * k1))
            k3 = f(self._advance(x, u + h / 2 * k2))
            k4 = f(self._advance(x, u + h * k3))
            out = u + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return out.unsqueeze(1)

    def forward(self, x: torch.Tensor, fields: Sequence[str] | None = None) -> torch.Tensor:
        """Next frame with the configured integrator: (B, T, *spatial, C) -> (B, 1, *spatial, C)."""
        return self.step(x, fields)

    def rollout(self, x: torch.Tensor, num_steps: int, fields: Sequence[str] | None = None) -> torch.Tensor:
        """Autoregressive prediction by pfm's rollout rule: (B, T, *spatial, C) -> (B, K, *spatial, C).

        The rule (:mod:`pfm.models.rollout`): each prediction is appended to the window and the oldest frame
        dropped once the window holds num_frames frames; a sample whose prediction holds a NaN or Inf stops
        there (NaN from then on) while the others go on. K <= num_steps is the most finite steps of any sample,
        also stored in `self.num_finite_steps`; `self.finite_steps` (B,) holds each sample's.
        """
        predictions, finite = rollout(
            lambda window: self.step(window, fields), x, num_steps, num_frames=self.num_frames
        )
        self.finite_steps = finite
        self.num_finite_steps = int(finite.max()) if finite.numel() else 0
        return predictions[:, : self.num_finite_steps]

    # ------------------------------------------------------------------------------------ official weights
    @classmethod
    def from_official(cls, state_dict: Mapping[str, Any], size: str = "S", **kwargs: Any) -> GPhyT:
        """A model holding the weights of an official `gphyt-<size>.pth` state dict (see `load_official_state_dict`)."""
        model = cls(size, **kwargs)
        model.load_official_state_dict(state_dict)
        return model

    def load_official_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load the official layout (nesting key and `module.`/`_orig_mod.` prefixes allowed) into this model.

        q/k/v are folded: official q = in_proj_q(to_qkv_q(x)), so `qkv.weight` = W_in @ W_to_qkv per q/k/v.
        Official channels map to `OFFICIAL_FIELDS` by name when the file has 5 fields and the vocabulary
        holds them all, else to the vocabulary in order. The absent embeddings are zeroed (official fields
        are zero-filled). A position embedding of another spatial size replaces this model's (and its grid).
        """
        load_official(self, state_dict)

    def to_official_state_dict(self) -> dict[str, torch.Tensor]:
        """This model in the official layout (names and shapes of `PhysicsTransformer`); to_qkv = [I; I; I]."""
        embedding = self.absent_embedding.detach()
        if embedding.device.type != "meta" and bool(embedding.abs().max() > 0):
            warnings.warn(
                "GPhyT.absent_embedding is not zero, and the official layout has no place for it: the export "
                "zero-fills absent fields instead of masking them.",
                stacklevel=2,
            )
        return to_official(self)


def _check_names(names: Sequence[str], what: str) -> tuple[str, ...]:
    """`names` as a tuple of unique, non-empty strings, or a ValueError saying which are wrong."""
    if isinstance(names, str):
        raise ValueError(f"{what}={names!r} is one string; pass a list of field names, e.g. [{names!r}].")
    names = tuple(names)
    bad = [n for n in names if not isinstance(n, str) or not n]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if not names or bad or duplicates:
        raise ValueError(
            f"{what}={list(names)} must be a non-empty list of unique field names (bad: {bad}, repeated: "
            f"{duplicates})."
        )
    return names
