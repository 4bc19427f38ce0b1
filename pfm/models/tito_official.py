"""Conversion between `pfm.models.PLaTITO` and the official TITO / PLaTITO state-dict layout
(Hugging Face `pantoniadis/platito`, the `state_dict` of its Lightning `*.ckpt`).

Used through `PLaTITO.from_official` and `PLaTITO.load_official_state_dict`; no I/O here. The parameter names
are the official ones, so loading is a strict load (`pfm.models.strict.load_strict`, the same check as pfm's
own weights) after picking the `velocity_net.*` / `condition_net.*` tensors.

Public names: `official_tensors`, `widths_from_official`, `load_official`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from pfm.models.strict import load_strict
from pfm.models.tito_network import TitoFeatures

__all__ = ["load_official", "official_tensors", "widths_from_official"]


def official_tensors(state_dict: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The `velocity_net.*` / `condition_net.*` tensors of a state dict or of a checkpoint holding one."""
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]
    sd = {k: v for k, v in state_dict.items() if k.startswith(("velocity_net.", "condition_net."))}
    if not sd:
        raise ValueError(
            f"no 'velocity_net.*' or 'condition_net.*' keys among {list(state_dict)[:8]}...: not an official "
            "PLaTITO/TITO state dict (expected the `state_dict` of pantoniadis/platito *.ckpt)."
        )
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"entries {bad[:5]} are not tensors; expected a state dict of tensors.")
    return sd


def widths_from_official(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Constructor arguments read off the shapes of an official state dict."""

    def shape(key: str) -> tuple[int, ...]:
        if key not in sd:
            raise ValueError(f"official state dict lacks {key!r}; it is not a TITO/PLaTITO checkpoint.")
        return tuple(sd[key].shape)

    v, c = "velocity_net.", "condition_net."
    token = shape(v + "linear_3d_embed.weight")[0]
    cond_token = shape(c + "linear_3d_embed.weight")[0]
    adaln = shape(v + "cond_factory.linear_out.weight")[0]
    pair, pair_in = shape(v + "pair_repr_builder.init_repr_factory.linear_out.weight")
    num_layers = len({k.split(".")[2] for k in sd if k.startswith(v + "transformer_layers.")})
    num_c_layers = len({k.split(".")[2] for k in sd if k.startswith(c + "transformer_layers.")})
    if num_layers != num_c_layers:
        raise ValueError(
            f"velocity net has {num_layers} layers, condition net {num_c_layers}; pfm expects equal depth."
        )
    num_heads = shape(v + "transformer_layers.0.mhba.mha.to_bias.weight")[0]
    inner = shape(v + "transformer_layers.0.mhba.mha.to_g.weight")[0]
    num_registers = shape(v + "registers")[0] if v + "registers" in sd else 0
    index_dim = shape(v + "init_repr_factory.linear_out.weight")[1]
    time_dim = shape(v + "cond_factory.linear_out.weight")[1] - cond_token
    lag_temp = shape(c + "cond_factory.linear_out.weight")[1]
    seq_in = shape(c + "init_repr_factory.linear_out.weight")[1]
    feats: dict[str, Any] = dict(
        index_dim=index_dim,
        time_dim=time_dim,
        lag_dim=lag_temp - lag_temp // 2,  # not readable from shapes: the official split is half and half
        temperature_dim=lag_temp // 2,
        num_dist_bins=pair_in - TitoFeatures.num_seq_sep_bins,
    )
    res_keys = [
        k
        for k in sd
        if k.startswith(c + "init_repr_factory.feat_creators.") and k.endswith("res_id_emb.weight")
    ]
    plm_dim = seq_in - index_dim
    if res_keys:
        num_types, res_dim = shape(res_keys[0])
        feats.update(
            residue_dim=res_dim, num_residue_types=num_types, residue_first=res_keys[0].split(".")[3] == "0"
        )
        if seq_in != index_dim + res_dim:
            raise ValueError(
                f"condition net input width {seq_in} is not index {index_dim} + residue {res_dim}."
            )
        plm_dim = 0
    elif plm_dim <= 0:
        raise ValueError(
            f"condition net input width {seq_in} leaves no room for pLM embeddings (index {index_dim})."
        )
    return dict(
        token_dim=token,
        adaln_dim=adaln,
        pair_dim=pair,
        num_layers=num_layers,
        num_heads=num_heads,
        head_dim=inner // num_heads,
        num_registers=num_registers,
        plm_dim=plm_dim,
        condition_token_dim=cond_token,
        features=feats,
    )


def load_official(model: nn.Module, state_dict: dict[str, Any]) -> None:
    """Load an official state dict (or a checkpoint holding one) into `model` (a PLaTITO), strictly."""
    load_strict(
        model,
        official_tensors(state_dict),
        lambda detail: (
            f"the state dict does not fit this PLaTITO ({model.widths}): {detail}. Build the model with "
            "PLaTITO.from_official(state_dict), which reads the widths off the shapes."
        ),
    )
