"""pfm.checkpoints: periodic atomic checkpoints, exact resume, export.

Public names: :class:`PeriodicCheckpoint`; :func:`resolve_resume`, :func:`check_compatible`;
:func:`find_resume_checkpoint`, :func:`is_complete`, :func:`list_checkpoints`, :func:`read_checkpoint`;
:func:`export_checkpoint`, :func:`load_exported`.
"""

from pfm.checkpoints.export import export_checkpoint, load_exported
from pfm.checkpoints.files import find_resume_checkpoint, is_complete, list_checkpoints, read_checkpoint
from pfm.checkpoints.periodic import PeriodicCheckpoint
from pfm.checkpoints.resume import check_compatible, resolve_resume

__all__ = [
    "PeriodicCheckpoint",
    "check_compatible",
    "export_checkpoint",
    "find_resume_checkpoint",
    "is_complete",
    "list_checkpoints",
    "load_exported",
    "read_checkpoint",
    "resolve_resume",
]
