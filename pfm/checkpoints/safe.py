"""The old home of pfm's safe unpickling, kept for user code: everything lives in :mod:`pfm.unpickle`."""

from pfm.unpickle import (
    Placeholder,
    allowed_globals,
    check_checkpoint,
    check_safetensors,
    load_state_dict,
    read_safetensors,
    refused_globals,
    safe_load,
    state_dict_from,
    torch_safe_globals,
)

__all__ = [
    "Placeholder",
    "allowed_globals",
    "check_checkpoint",
    "check_safetensors",
    "load_state_dict",
    "read_safetensors",
    "refused_globals",
    "safe_load",
    "state_dict_from",
    "torch_safe_globals",
]
