"""Conversion between `pfm.models.GPhyT` and the official GPhyT state-dict layout (`gphyt-*.pth`).

Used through `GPhyT.from_official`, `GPhyT.load_official_state_dict` and `GPhyT.to_official_state_dict`;
no I/O here (callers load the file, e.g. `torch.load(path, weights_only=True)`).

Public names:
- `official_tensors`: unwrap a nesting key and strip `module.` / `_orig_mod.` prefixes.
- `official_shapes`: the official names and shapes for a model's configuration.
- `load_official`, `to_official`: the two directions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

__all__ = [
    "GPHYT_SIZES",
    "OFFICIAL_FIELDS",
    "load_official",
    "official_shapes",
    "official_tensors",
    "to_official",
]

# The published weights' field vocabulary, in their channel order, and their four sizes (pfm.models.gphyt
# re-exports both). The converter takes the model as any module with GPhyT's attributes: importing GPhyT here
# would close a circle (gphyt imports this module).
OFFICIAL_FIELDS: tuple[str, ...] = ("pressure", "density", "temperature", "vel_x", "vel_y")
GPHYT_SIZES: dict[str, dict[str, int]] = {
    "S": {"hidden_dim": 192, "mlp_dim": 768, "num_heads": 3, "num_layers": 12},
    "M": {"hidden_dim": 768, "mlp_dim": 3072, "num_heads": 12, "num_layers": 12},
    "L": {"hidden_dim": 1024, "mlp_dim": 4096, "num_heads": 16, "num_layers": 24},
    "XL": {"hidden_dim": 1280, "mlp_dim": 5120, "num_heads": 16, "num_layers": 32},
}

_NESTING_KEYS = ("model_state_dict", "state_dict", "model", "module")
_BLOCK = "attention_blocks.{}."
_TOKENIZER = "tokenizer.tokenizer.to_patch_embedding.1."
_DETOKENIZER = "detokenizer.detokenizer.from_patch_embedding.1."
_PE = "init_pos_encodings.pe"
_STENCIL = (-1.0, 0.0, 1.0)
# a block's layers whose weight and bias are the official ones as they are: (pfm name, official name); the
# attention's q/k/v projection is the one layer converted (folded into to_qkv / in_proj, see load_official)
_BLOCK_LAYERS = (
    ("attn.proj", "attention.attention.out_proj"),
    ("norm1", "norm1"),
    ("norm2", "norm2"),
    ("mlp.fc1", "mlp.mlp.0"),
    ("mlp.fc2", "mlp.mlp.2"),
)


def official_tensors(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The flat name -> tensor dict inside an official checkpoint, without DDP / compile prefixes."""
    state: Any = state_dict
    while isinstance(state, Mapping) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        key = next((k for k in _NESTING_KEYS if isinstance(state.get(k), Mapping)), None)
        if key is None:
            raise ValueError(
                f"found no tensors in the GPhyT checkpoint (top-level keys {list(state)[:8]}); expected a state "
                f"dict of tensors, possibly nested under one of {list(_NESTING_KEYS)}."
            )
        state = state[key]
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue  # e.g. an epoch counter stored beside the weights
        clean = re.sub(r"(^|\.)_orig_mod\.", r"\1", name)
        while clean.startswith(("module.", "_orig_mod.")):
            clean = clean.split(".", 1)[1]
        out[clean] = value
    return out


def official_shapes(model: nn.Module, num_fields: int | None = None) -> dict[str, tuple[int, ...]]:
    """Official names and shapes for `model`'s widths, patch and position embedding (2D, absolute only)."""
    dim, mlp, patch = model.hidden_dim, model.mlp_dim, model.patch_size
    fields = len(model.fields) if num_fields is None else num_fields
    shapes: dict[str, tuple[int, ...]] = {
        "derivatives.dt_filter": (fields, 1, 3, 1, 1),
        "derivatives.dh_filter": (fields, 1, 1, 3, 1),
        "derivatives.dw_filter": (fields, 1, 1, 1, 3),
        "tokenizer.patch_size": (3,),
        _TOKENIZER + "weight": (dim, 4 * fields, *patch),
        _TOKENIZER + "bias": (dim,),
        _PE: tuple(model.pos_embedding.shape),
    }
    for i in range(model.num_layers):
        b = _BLOCK.format(i)
        shapes.update(
            {
                b + "attention.to_qkv.weight": (3 * dim, dim),
                b + "attention.attention.in_proj_weight": (3 * dim, dim),
                b + "attention.attention.in_proj_bias": (3 * dim,),
                b + "attention.attention.out_proj.weight": (dim, dim),
                b + "attention.attention.out_proj.bias": (dim,),
                b + "norm1.weight": (dim,),
                b + "norm1.bias": (dim,),
                b + "norm2.weight": (dim,),
                b + "norm2.bias": (dim,),
                b + "mlp.mlp.0.weight": (mlp, dim),
                b + "mlp.mlp.0.bias": (mlp,),
                b + "mlp.mlp.2.weight": (dim, mlp),
                b + "mlp.mlp.2.bias": (dim,),
            }
        )
    shapes[_DETOKENIZER + "weight"] = (dim, fields, *patch)
    shapes[_DETOKENIZER + "bias"] = (fields,)
    return shapes


def _check_convertible(model: nn.Module) -> None:
    if model.num_spatial_dims != 2 or model.pos_embedding is None:
        raise ValueError(
            f"the official GPhyT layout is 2D with an absolute position embedding; this model has "
            f"num_spatial_dims={model.num_spatial_dims}, position={model.position!r}. Build it with "
            "num_spatial_dims=2, position='absolute' to load or export official weights."
        )


def _describe(sd: Mapping[str, torch.Tensor]) -> str:
    """'hidden 192, 12 layers (GPhyT-S)' read off an official state dict's shapes."""
    dim = sd[_TOKENIZER + "weight"].shape[0] if _TOKENIZER + "weight" in sd else None
    layers = len({k.split(".")[1] for k in sd if k.startswith("attention_blocks.")})
    size = next(
        (s for s, w in GPHYT_SIZES.items() if (w["hidden_dim"], w["num_layers"]) == (dim, layers)), None
    )
    return f"hidden {dim}, {layers} layers" + (f" (GPhyT-{size}, use size={size!r})" if size else "")


def _field_columns(model: nn.Module, num_file_fields: int) -> list[int]:
    """Vocabulary index of each of the file's channels: by name for the official 5, else in order."""
    if num_file_fields == len(OFFICIAL_FIELDS) and all(f in model.fields for f in OFFICIAL_FIELDS):
        return [model.fields.index(f) for f in OFFICIAL_FIELDS]
    if num_file_fields == len(model.fields):
        return list(range(num_file_fields))
    raise ValueError(
        f"the checkpoint has {num_file_fields} fields but the model's vocabulary is {list(model.fields)}; build "
        f"the model with {num_file_fields} fields (fields={list(OFFICIAL_FIELDS)} for official weights)."
    )


def load_official(model: nn.Module, state_dict: Mapping[str, Any]) -> None:
    """Copy an official state dict into `model` (see `GPhyT.load_official_state_dict`)."""
    _check_convertible(model)
    sd = official_tensors(state_dict)
    if "derivatives.dt_filter" not in sd:
        raise ValueError(
            "the checkpoint has no 'derivatives.dt_filter': it is not a GPhyT state dict with derivative "
            f"features (first keys: {list(sd)[:5]})."
        )
    num_file_fields = sd["derivatives.dt_filter"].shape[0]
    columns = _field_columns(model, num_file_fields)
    expected = official_shapes(model, num_file_fields)
    missing, unexpected = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"the checkpoint ({_describe(sd)}) does not match GPhyT hidden {model.hidden_dim}, "
            f"{model.num_layers} layers: missing {missing[:4]}{'...' if len(missing) > 4 else ''}, unexpected "
            f"{unexpected[:4]}{'...' if len(unexpected) > 4 else ''}."
        )
    pe = sd[_PE]
    for name, shape in expected.items():
        ok = tuple(sd[name].shape) == shape
        if name == _PE:  # another spatial token grid is fine: it becomes the model's trained grid
            ok = pe.ndim == 5 and pe.shape[:2] == shape[:2] and pe.shape[-1] == shape[-1]
        if not ok:
            raise ValueError(
                f"{name} has shape {list(sd[name].shape)}, expected {list(shape)} for GPhyT hidden "
                f"{model.hidden_dim}, mlp {model.mlp_dim}, patch {list(model.patch_size)}, "
                f"{model.num_frames} frames; the checkpoint is {_describe(sd)}."
            )
    if sd["tokenizer.patch_size"].tolist() != list(model.patch_size):
        raise ValueError(
            f"the checkpoint's patch is {sd['tokenizer.patch_size'].tolist()}, the model's "
            f"{list(model.patch_size)}; build the model with patch_size={sd['tokenizer.patch_size'].tolist()}."
        )
    for axis in "thw":
        stencil = sd[f"derivatives.d{axis}_filter"].flatten(1).float().cpu()
        if not torch.equal(stencil, torch.tensor(_STENCIL).expand_as(stencil)):
            raise ValueError(f"derivatives.d{axis}_filter is not the central stencil {list(_STENCIL)}.")

    index = torch.tensor(columns, device=model.tokenizer.weight.device)
    with torch.no_grad():
        tok = sd[_TOKENIZER + "weight"].unflatten(
            1, (4, num_file_fields)
        )  # (D, [x, dt, dh, dw], fields, *patch)
        model.tokenizer.weight[:, :, index] = tok.to(model.tokenizer.weight)
        model.tokenizer.bias.copy_(sd[_TOKENIZER + "bias"])
        model.detokenizer.weight[:, index] = sd[_DETOKENIZER + "weight"].to(model.detokenizer.weight)
        model.detokenizer.bias[index] = sd[_DETOKENIZER + "bias"].to(model.detokenizer.bias)
        model.absent_embedding.zero_()
        if pe.shape == model.pos_embedding.shape:
            model.pos_embedding.copy_(pe)
        else:
            model.pos_embedding = nn.Parameter(pe.to(model.pos_embedding).clone())
            model.grid = tuple(n * p for n, p in zip(pe.shape[2:4], model.patch_size[1:], strict=True))
        for i, block in enumerate(model.blocks):
            b = _BLOCK.format(i)
            to_qkv = sd[b + "attention.to_qkv.weight"].double()
            in_proj = sd[b + "attention.attention.in_proj_weight"].double()
            folded = torch.cat(
                [w_in @ w_to for w_in, w_to in zip(in_proj.chunk(3), to_qkv.chunk(3), strict=True)]
            )
            block.attn.qkv.weight.copy_(folded)
            block.attn.qkv.bias.copy_(sd[b + "attention.attention.in_proj_bias"])
            for ours, theirs in _BLOCK_LAYERS:
                module = block.get_submodule(ours)
                module.weight.copy_(sd[f"{b}{theirs}.weight"])
                module.bias.copy_(sd[f"{b}{theirs}.bias"])


def to_official(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model` in the official layout; to_qkv = [I; I; I] and in_proj = the folded q/k/v matrix."""
    _check_convertible(model)
    dim, fields = model.hidden_dim, len(model.fields)
    stencil = torch.tensor(_STENCIL)
    ref = model.tokenizer.weight.detach()
    out: dict[str, torch.Tensor] = {
        "derivatives.dt_filter": stencil.view(1, 1, 3, 1, 1).repeat(fields, 1, 1, 1, 1),
        "derivatives.dh_filter": stencil.view(1, 1, 1, 3, 1).repeat(fields, 1, 1, 1, 1),
        "derivatives.dw_filter": stencil.view(1, 1, 1, 1, 3).repeat(fields, 1, 1, 1, 1),
        "tokenizer.patch_size": torch.tensor(model.patch_size),
        _TOKENIZER + "weight": ref.flatten(1, 2).clone(),
        _TOKENIZER + "bias": model.tokenizer.bias.detach().clone(),
        _PE: model.pos_embedding.detach().clone(),
    }
    identity = torch.eye(dim, dtype=ref.dtype, device=ref.device).repeat(3, 1)
    for i, block in enumerate(model.blocks):
        b = _BLOCK.format(i)
        out[b + "attention.to_qkv.weight"] = identity.clone()
        out[b + "attention.attention.in_proj_weight"] = block.attn.qkv.weight.detach().clone()
        out[b + "attention.attention.in_proj_bias"] = block.attn.qkv.bias.detach().clone()
        for ours, theirs in _BLOCK_LAYERS:
            module = block.get_submodule(ours)
            out[f"{b}{theirs}.weight"] = module.weight.detach().clone()
            out[f"{b}{theirs}.bias"] = module.bias.detach().clone()
    out[_DETOKENIZER + "weight"] = model.detokenizer.weight.detach().clone()
    out[_DETOKENIZER + "bias"] = model.detokenizer.bias.detach().clone()
    return out
