"""pfm.checkpoints: checkpoint files, exact resume, export, hosted checkpoints. Reads and writes files; it
builds no model (``pfm.build`` does: ``build_network``, ``load_pretrained``, ``load_exported``).

Public names: :class:`PeriodicCheckpoint`; :func:`run_info`, :func:`read_run_info` (the run description a
checkpoint carries); :func:`resolve_resume`, :func:`check_compatible`; :func:`find_resume_checkpoint`,
:func:`is_complete`, :func:`list_checkpoints`, :func:`read_checkpoint`; :func:`export_checkpoint`;
:func:`load_weights` (weights into a built model; ``init_from``); :func:`load_registry`, :func:`get_entry`;
:func:`fetch` (verified downloads); :func:`safe_load`, :func:`load_state_dict` (no pickled code runs).
"""

from pfm.checkpoints.download import fetch
from pfm.checkpoints.export import export_checkpoint
from pfm.checkpoints.files import find_resume_checkpoint, is_complete, list_checkpoints, read_checkpoint
from pfm.checkpoints.periodic import PeriodicCheckpoint
from pfm.checkpoints.pretrained import load_weights
from pfm.checkpoints.registry import get_entry, load_registry
from pfm.checkpoints.resume import check_compatible, resolve_resume
from pfm.checkpoints.run_info import read_run_info, run_info
from pfm.unpickle import load_state_dict, safe_load

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
