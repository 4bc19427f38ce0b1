"""pfm.checkpoints: checkpoint files, exact resume, export, hosted checkpoints. Reads and writes files; it
builds no model (``pfm.build`` does: ``build_network``, ``load_pretrained``, ``load_exported``).

Public names: :class:`PeriodicCheckpoint`; :func:`run_info`, :func:`read_run_info` (the run description a
checkpoint carries); :func:`resolve_resume`, :func:`check_compatible`; :func:`find_resume_checkpoint`,
:func:`is_complete`, :func:`list_checkpoints`, :func:`read_checkpoint`; :func:`export_checkpoint`;
:func:`load_weights` (weights into a built model; ``init_from``); :func:`load_registry`, :func:`get_entry`;
:func:`fetch` (verified downloads); :func:`safe_load`, :func:`load_state_dict` (no pickled code runs).

Each name is imported from its module on first use (``_HOMES``), so that ``pfm list`` and ``pfm download``
(:mod:`pfm.checkpoints.commands`) read the registry without loading torch and Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from datagen.lazy import lazy_names

if TYPE_CHECKING:
    from pfm.checkpoints.download import fetch
    from pfm.checkpoints.export import export_checkpoint
    from pfm.checkpoints.files import find_resume_checkpoint, is_complete, list_checkpoints, read_checkpoint
    from pfm.checkpoints.periodic import PeriodicCheckpoint
    from pfm.checkpoints.pretrained import load_weights
    from pfm.checkpoints.registry import get_entry, load_registry
    from pfm.checkpoints.resume import check_compatible, resolve_resume
    from pfm.checkpoints.run_description import read_run_info, run_info
    from pfm.unpickle import load_state_dict, safe_load

# public name -> the module that defines it
_HOMES: dict[str, str] = {
    "PeriodicCheckpoint": "pfm.checkpoints.periodic",
    "check_compatible": "pfm.checkpoints.resume",
    "export_checkpoint": "pfm.checkpoints.export",
    "fetch": "pfm.checkpoints.download",
    "find_resume_checkpoint": "pfm.checkpoints.files",
    "get_entry": "pfm.checkpoints.registry",
    "is_complete": "pfm.checkpoints.files",
    "list_checkpoints": "pfm.checkpoints.files",
    "load_registry": "pfm.checkpoints.registry",
    "load_state_dict": "pfm.unpickle",
    "load_weights": "pfm.checkpoints.pretrained",
    "read_checkpoint": "pfm.checkpoints.files",
    "read_run_info": "pfm.checkpoints.run_description",
    "resolve_resume": "pfm.checkpoints.resume",
    "run_info": "pfm.checkpoints.run_description",
    "safe_load": "pfm.unpickle",
}

__all__ = [
    "PeriodicCheckpoint",
    "check_compatible",
    "export_checkpoint",
    "fetch",
    "find_resume_checkpoint",
    "get_entry",
    "is_complete",
    "list_checkpoints",
    "load_registry",
    "load_state_dict",
    "load_weights",
    "read_checkpoint",
    "read_run_info",
    "resolve_resume",
    "run_info",
    "safe_load",
]

__getattr__ = lazy_names(__name__, _HOMES)
