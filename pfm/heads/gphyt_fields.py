"""Fine-tuning GPhyT on a system with other fields (``head=gphyt_fields``).

The pretrained model keeps its vocabulary; the data's fields it lacks get new tokenizer inputs and detokenizer
outputs (``model.extend_fields``: new output weights start at zero, so the old fields' predictions do not change
at first). Then either the transformer body stays frozen and LoRA factors on its Linear layers train, with the
tokenizer, detokenizer and absent-field embeddings (the layers that name fields) trained whole, or
(``freeze_base=false``) everything trains.

The model is built with the pretrained model's vocabulary, grid and frames before the weights load:
``model_spec`` in the head's config overrides those entries of the data's spec (``pfm.build``), e.g.
``head.model_spec.fields=[pressure,density,temperature,vel_x,vel_y]`` for the official weights; its
``fields`` default is the data's own fields (no new ones).

Public names: ``gphyt_fields``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from pfm.heads.lora import add_lora

__all__ = ["gphyt_fields"]

log = logging.getLogger(__name__)

# Layers that address fields by name: trained whole when the body is frozen (they are small).
_FIELD_LAYERS = ("tokenizer.", "detokenizer.", "absent_embedding")


def gphyt_fields(
    model: nn.Module,
    *,
    fields: Sequence[str] = (),
    lora_rank: int = 16,
    lora_alpha: float | None = None,
    freeze_base: bool = True,
    model_spec: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Prepare a (pretrained) GPhyT ``model`` for the data's ``fields``; returns the same model, modified.

    Args:
        fields: the data's field names (from the DataModule's spec); names the model lacks are added.
        lora_rank: rank of the LoRA factors on the body's Linear layers when ``freeze_base``; 0: no LoRA (only
            the field layers train).
        lora_alpha: LoRA scaling numerator (update scaled by alpha / rank); None means rank.
        freeze_base: freeze the pretrained body; False trains every parameter (no LoRA).
        model_spec: read by ``pfm.build`` (the spec the model is built with); unused here.
    """
    if not hasattr(model, "extend_fields") or not hasattr(model, "fields"):
        raise TypeError(
            f"head=gphyt_fields needs a GPhyT model (with fields and extend_fields); got {type(model).__name__}. "
            "Use model=gphyt_s (or _m, _l, _xl)."
        )
    if lora_rank < 0:
        raise ValueError(f"head.lora_rank={lora_rank}; expected >= 0 (0 disables LoRA).")
    new = [f for f in fields if f not in model.fields]
    if new:
        model.extend_fields(new)
    lora_layers: list[str] = []
    if freeze_base:
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(_FIELD_LAYERS))
        if lora_rank > 0:
            # Every block's Linear layers, the last block's qkv included: its query-only path calls the
            # qkv module (never its weight), so the LoRA update reaches the output there too.
            lora_layers = add_lora(
                model, lora_rank, lora_alpha, exclude=_FIELD_LAYERS, layer_types=(nn.Linear,)
            )
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    message = (
        f"gphyt_fields: new fields {new or 'none'} (vocabulary {list(model.fields)}); "
        f"{'frozen body, LoRA rank ' + str(lora_rank) + ' on ' + str(len(lora_layers)) + ' Linear layers' if freeze_base else 'full fine-tuning'}; "
        f"{trainable:,} of {total:,} parameters trainable"
    )
    log.info(message)
    print(message)
    return model
