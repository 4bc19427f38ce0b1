"""Choosing the checkpoint to resume from, and refusing one that belongs to another model or config."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pfm.checkpoints.files import find_resume_checkpoint, is_complete, read_checkpoint
from pfm.checkpoints.run_description import current_names
from pfm.unpickle import check_checkpoint

__all__ = ["RESUME_KEYS", "check_compatible", "resolve_resume"]

# Parts of the run description that must match for the saved state to mean the same thing in this run.
# finetune (freeze, param_groups) shapes the optimizer state; run_info holds it only when set.
RESUME_KEYS = (
    "model",
    "head",
    "task_target",
    "data_spec",
    "num_pools",
    "checkpoint_format",
    "finetune",
)


def resolve_resume(resume: str | Path | None, checkpoint_dir: str | Path) -> Path | None:
    """``None`` -> fresh run; ``"auto"`` -> newest complete checkpoint in ``checkpoint_dir`` (or None); a path.

    The checkpoint chosen is vetted against pfm's one allowlist (every pickled file of a folder too) before
    Lightning or DeepSpeed unpickle it: a "run's own" checkpoint is only a path, so none runs pickled code.
    """
    if resume in (None, "", False):
        return None
    if str(resume) == "auto":
        found = find_resume_checkpoint(checkpoint_dir)
        if found is not None:
            check_checkpoint(found)
        return found
    path = Path(str(resume))
    if not path.exists():
        raise FileNotFoundError(
            f"resume={resume} does not exist; pass a checkpoint path, resume=auto or null."
        )
    if not is_complete(path):
        raise ValueError(f"resume={resume} is truncated or unreadable; pick an older one or resume=auto.")
    check_checkpoint(path)
    return path


def _diff(saved: Any, current: Any, prefix: str) -> list[str]:
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        out: list[str] = []
        for key in sorted(set(saved) | set(current), key=str):
            out += _diff(saved.get(key, "<absent>"), current.get(key, "<absent>"), f"{prefix}.{key}")
        return out
    return [] if saved == current else [f"{prefix}: checkpoint has {saved!r}, this run has {current!r}"]


def check_compatible(path: str | Path, run_info: Mapping[str, Any]) -> None:
    """Raise if the checkpoint at ``path`` was written by a run whose model, head, task or data differ."""
    saved = read_checkpoint(path).get("pfm")
    if saved is None:
        return  # written outside pfm-train: Lightning's own state-dict checks still apply
    saved = current_names(saved)  # e.g. num_data_shards, as checkpoints before num_pools recorded it
    problems: list[str] = []
    for key in RESUME_KEYS:
        if key in saved or key in run_info:
            problems += _diff(saved.get(key, "<absent>"), run_info.get(key, "<absent>"), key)
    if problems:
        raise ValueError(
            f"Cannot resume from {path}: it belongs to another model or config.\n  "
            + "\n  ".join(problems)
            + "\nResume with the same settings, or start a fresh run (resume=null) in another run folder; "
            "to reuse only the weights, export the checkpoint (pfm export) and fine-tune from it."
        )
