"""File helpers: atomic writes of files and folders (a temporary name in the same folder, then a rename), and
file hashes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_dir", "atomic_path", "current_umask", "read_sha256sums", "sha256_file", "write_atomic"]

_CHUNK = 1 << 20


def current_umask() -> int:
    """The process's file-creation mask, read without changing it (``/proc``), else by a set-and-restore."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    # fallback (no /proc): briefly sets the mask, which another thread creating a file could observe
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``, on error removed.

    Readers never see a half-written file, because ``os.replace`` is atomic within one file system. The
    file ends with the permissions of a plain ``open()`` (0666 less the umask): ``mkstemp`` creates its file
    0600, which would hide outputs from the user's group or a web server.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # the writer may have replaced the file (e.g. savefig reopens it); set the mode on what is there
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it is renamed to ``path``, on error removed.

    ``path`` must not exist yet (``FileExistsError`` names it): a folder cannot be swapped in atomically over a
    full one, and overwriting a user's data is never what a converter should do silently.
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; choose a new output folder or remove it first.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700
        os.rename(tmp, path)  # fails, rather than merges, if path appeared meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and durably (flushed to disk before the rename); returns the path."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_sha256sums(directory: str | Path) -> dict[str, str]:
    """``{file name: hex sha256}`` from the ``SHA256SUMS`` of an export folder."""
    sums = {}
    for line in (Path(directory) / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        sums[name] = digest
    return sums
