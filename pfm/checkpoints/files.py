"""Finding, validating and describing training checkpoints on disk (files, or DeepSpeed/FSDP folders)."""

from __future__ import annotations

import logging
import re
import zipfile
from pathlib import Path
from typing import Any

from pfm.unpickle import safe_load

__all__ = ["checkpoint_step", "find_resume_checkpoint", "is_complete", "list_checkpoints", "read_checkpoint"]

log = logging.getLogger("pfm.checkpoints")

_STEP = re.compile(r"^step(\d+)\.ckpt$")


def checkpoint_step(path: str | Path) -> int | None:
    """The step in a name like ``step0000120.ckpt``, or None for other names (``last.ckpt``, temporaries)."""
    match = _STEP.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(directory: str | Path) -> list[Path]:
    """The ``step*.ckpt`` checkpoints in ``directory``, oldest step first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if checkpoint_step(p) is not None]
    return sorted(found, key=lambda p: checkpoint_step(p) or 0)


def _zip_ok(path: Path) -> bool:
    # torch.save writes a zip archive; its central directory sits at the end, so a truncated file fails here
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None if path.stat().st_size < 64 * 2**20 else bool(archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def is_complete(path: str | Path) -> bool:
    """Whether ``path`` is a whole checkpoint: a readable torch zip file, or a folder whose files all are."""
    path = Path(path)
    if path.is_file():
        return _zip_ok(path)
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file() and p.suffix in (".pt", ".ckpt", ".distcp")]
        torch_files = [p for p in files if p.suffix != ".distcp"]
        return bool(files) and all(_zip_ok(p) for p in torch_files)
    return False


def find_resume_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint in ``directory``; incomplete ones are skipped with a warning naming them."""
    for path in reversed(list_checkpoints(directory)):
        if is_complete(path):
            return path
        log.warning("Skipping checkpoint %s: it is truncated or unreadable (an interrupted write?).", path)
    return None


def read_checkpoint(path: str | Path, strict: bool = True) -> dict[str, Any]:
    """The checkpoint's top-level dict (for DeepSpeed folders: the client state of rank 0), tensors on CPU.

    Runs no pickled code, for any path, the run's own checkpoints included: the file is unpickled under
    pfm's one allowlist (:mod:`pfm.unpickle`). ``strict=True`` (pfm-train's checkpoints): a global
    outside it fails naming the file and global; ``strict=False`` (a file that may be someone else's, with
    their classes in ``hyper_parameters``): such globals stay inert placeholders.
    """
    path = Path(path)
    if path.is_dir():
        candidates = sorted(path.glob("checkpoint/*mp_rank_00_model_states.pt")) + sorted(
            path.glob("meta.pt")
        )
        if not candidates:
            raise FileNotFoundError(
                f"{path} is a folder but holds neither a DeepSpeed checkpoint (checkpoint/mp_rank_00_model_states.pt) "
                "nor a distributed checkpoint (meta.pt); pass a checkpoint written by pfm-train."
            )
        path = candidates[0]
    return safe_load(path, strict=strict)
