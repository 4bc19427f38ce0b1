"""Verified downloads of registry files into a cache: ``hf://`` through huggingface_hub, https through a small
downloader, every file checked against its sha256 before it is used.

Why a small downloader for https rather than pooch: pooch verifies hashes and writes atomically, but it
restarts an interrupted download from zero (no HTTP Range resume) and takes no lock, so two processes that
start one download both fetch the whole file. Resume, a cross-process lock (``filelock``), an atomic rename and
a tqdm progress bar are ~100 lines on top of ``urllib``; pooch would still need the lock and resume added.

Cache layout (``$PFM_CACHE``, else ``$XDG_CACHE_HOME/pfm``, else ``~/.cache/pfm``)::

    url/<hash of the folder URL>/<file>          https/http files (a folder's files stay together)
    url/<...>/<file>.part                        an interrupted download, resumed by the next attempt
    url/<...>/<file>.sha256                      the hash recorded on first download when the registry has none
    hf/<org>/<repo>/<revision>/<path>.sha256     the same for hf:// files (the files live in the HF cache)

Offline (``PFM_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``): only the cache is used; what is missing is named.
Public names: :func:`fetch`, :func:`fetch_file`, :func:`cached_file`, :func:`cache_root`, :func:`is_offline`,
:func:`sha256_file`, :func:`recorded_hash`, :class:`DownloadError`, :class:`HashMismatchError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlparse

from filelock import FileLock
from tqdm.auto import tqdm

from pfm.checkpoints.registry import Entry, FileSpec
from pfm.io import atomic_path, sha256_file

__all__ = [
    "DownloadError",
    "HashMismatchError",
    "cache_root",
    "cached_file",
    "fetch",
    "fetch_file",
    "is_offline",
    "recorded_hash",
    "sha256_file",
]

log = logging.getLogger("pfm.checkpoints")

MAX_ATTEMPTS = 5  # per file, for dropped connections and 5xx answers; each attempt resumes the partial file
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A file could not be fetched (HTTP error, offline and not cached, or too many dropped connections)."""


class HashMismatchError(DownloadError):
    """A file's sha256 differs from the registry's (or the one recorded on first download)."""


def cache_root() -> Path:
    """``$PFM_CACHE``, else ``$XDG_CACHE_HOME/pfm``, else ``~/.cache/pfm``."""
    if os.environ.get("PFM_CACHE"):
        return Path(os.environ["PFM_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pfm"


def is_offline() -> bool:
    """Whether ``PFM_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to a true value (1, true, yes, on)."""
    return any(
        os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
        for k in ("PFM_OFFLINE", "HF_HUB_OFFLINE")
    )


def _url_path(spec: FileSpec) -> Path:
    parent, _, name = spec.url.rpartition("/")
    return cache_root() / "url" / hashlib.sha256(parent.encode()).hexdigest()[:16] / name


def _revision(spec: FileSpec, revision: str | None, entry: Entry | None) -> str:
    return revision or spec.revision or (entry.revision if entry else None) or "main"


def _hash_record(spec: FileSpec, revision: str) -> Path:
    """Where the hash of a file without a registry hash is recorded on first download."""
    if spec.is_hf:
        repo_id, filename = spec.hf_parts()
        return cache_root() / "hf" / repo_id / revision / f"{filename}.sha256"
    if spec.url.startswith("file://"):
        return cache_root() / "file" / hashlib.sha256(spec.url.encode()).hexdigest()[:16] / "sha256"
    path = _url_path(spec)
    return path.with_name(path.name + ".sha256")


def recorded_hash(spec: FileSpec, revision: str = "main") -> str:
    """The sha256 recorded for ``spec`` on its first download ("" when none was recorded)."""
    record = _hash_record(spec, revision)
    return record.read_text().split()[0] if record.is_file() else ""


def _record_hash(spec: FileSpec, revision: str, digest: str, entry_name: str) -> None:
    record = _hash_record(spec, revision)
    with atomic_path(record) as tmp:
        tmp.write_text(f"{digest}  {spec.url}\n")
    log.warning(
        "%s has no sha256 in the registry: recorded %s in %s on this first download; later uses are checked "
        "against it. Run `pfm registry pin %s` to write it into your registry.",
        spec.url,
        digest,
        record,
        entry_name,
    )


def _verify(path: Path, spec: FileSpec, revision: str, entry_name: str, *, delete: list[Path]) -> None:
    """Check ``path`` against the registry hash (or the recorded one); on mismatch delete ``delete``, raise."""
    expected = spec.sha256 or recorded_hash(spec, revision)
    actual = sha256_file(path)
    if not expected:
        _record_hash(spec, revision, actual, entry_name)
        return
    if actual != expected:
        for p in delete:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        source = (
            "the registry"
            if spec.sha256
            else f"the hash recorded on first download ({_hash_record(spec, revision)})"
        )
        removed = f"deleted {', '.join(map(str, delete))}" if delete else f"kept {path} (it is your file)"
        raise HashMismatchError(
            f"{spec.filename} ({spec.url}) has sha256 {actual}, but {source} says {expected}; {removed}. "
            f"Run `pfm download {entry_name}` again (a corrupted transfer); if it fails the same way, the file "
            "changed at its source: check it there, then "
            + (
                "update sha256 in your registry (or `pfm registry pin` after fixing it)."
                if spec.sha256
                else f"delete {_hash_record(spec, revision)} to accept the new file, or pin a revision."
            )
        )


def cached_file(spec: FileSpec, revision: str = "main") -> Path | None:
    """The cached copy of ``spec`` if there is one (not verified), else None; never touches the network."""
    if spec.url.startswith("file://"):
        path = Path(unquote(urlparse(spec.url).path))
        return path if path.is_file() else None
    if spec.is_hf:
        # imported when used: huggingface_hub reads HF_HOME, HF_HUB_OFFLINE and the token when imported
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = spec.hf_parts()
        found = try_to_load_from_cache(repo_id, filename, revision=revision)
        return Path(found) if isinstance(found, str) else None
    path = _url_path(spec)
    return path if path.is_file() else None


def fetch(entry: Entry, revision: str | None = None, progress: bool = True) -> list[Path]:
    """Local, verified paths of all of ``entry``'s files, downloading what is not cached (in file order).

    Offline, every missing file is named in one error.
    """
    paths, missing = [], []
    for spec in entry.files:
        try:
            paths.append(fetch_file(spec, revision, entry=entry, progress=progress))
        except _NotCached as err:
            missing.append(str(err))
    if missing:
        raise DownloadError(
            f"Offline (PFM_OFFLINE/HF_HUB_OFFLINE is set) and {len(missing)} file(s) of {entry.name!r} are not in "
            f"the cache: {'; '.join(missing)}. Run `pfm download {entry.name}` where the network is reachable "
            "(same PFM_CACHE / HF_HOME), or unset PFM_OFFLINE and HF_HUB_OFFLINE."
        )
    return paths


class _NotCached(DownloadError):
    pass


def fetch_file(
    spec: FileSpec, revision: str | None = None, *, entry: Entry | None = None, progress: bool = True
) -> Path:
    """One verified local file: from the cache, else downloaded (hf:// via huggingface_hub, else https)."""
    rev = _revision(spec, revision, entry)
    name = entry.name if entry else spec.filename
    if spec.url.startswith("file://"):
        path = Path(unquote(urlparse(spec.url).path))
        if not path.is_file():
            raise DownloadError(f"{spec.url} does not exist; fix the url in the registry entry {name!r}.")
        _verify(path, spec, rev, name, delete=[])
        return path
    if spec.is_hf:
        return _fetch_hf(spec, rev, name)
    return _fetch_url(spec, rev, name, progress)


def _fetch_hf(spec: FileSpec, revision: str, name: str) -> Path:
    # imported when used: huggingface_hub reads HF_HOME, HF_HUB_OFFLINE and the token when imported
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, filename = spec.hf_parts()
    try:
        found = Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=is_offline()))
    except LocalEntryNotFoundError as err:
        if is_offline():
            raise _NotCached(f"{spec.filename} ({spec.url}@{revision})") from err
        raise DownloadError(
            f"{spec.url}@{revision} could not be fetched and is not cached ({err}); check the network and the "
            "Hub's status, or set HF_ENDPOINT for a mirror."
        ) from err
    except RevisionNotFoundError as err:
        raise DownloadError(
            f"{repo_id} has no revision {revision!r} (entry {name!r}); give an existing branch, tag or commit."
        ) from err
    except EntryNotFoundError as err:
        raise DownloadError(
            f"{repo_id}@{revision} has no file {filename!r} (entry {name!r}); fix the url in the registry."
        ) from err
    except RepositoryNotFoundError as err:
        raise DownloadError(
            f"Repository {repo_id} was not found or needs a login (entry {name!r}); check the name, or run "
            "`hf auth login` / set HF_TOKEN for a private or gated repository."
        ) from err
    # the snapshot path is a symlink into blobs/; a bad file is removed in both places so it is fetched again
    _verify(found, spec, revision, name, delete=[found.resolve(), found] if found.is_symlink() else [found])
    return found


def _fetch_url(spec: FileSpec, revision: str, name: str, progress: bool) -> Path:
    dest = _url_path(spec)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # one process downloads, the others wait here and then find the finished, verified file
    with FileLock(str(dest) + ".lock"):
        if dest.is_file():
            _verify(dest, spec, revision, name, delete=[dest])
            return dest
        if is_offline():
            raise _NotCached(f"{spec.filename} ({spec.url}, would be {dest})")
        part = dest.with_name(dest.name + ".part")
        _http_download(spec.url, part, spec.num_bytes, progress)
        # verified under its .part name: a bad file never appears under the final name
        _verify(part, spec, revision, name, delete=[part])
        os.replace(part, dest)
        return dest


def _http_download(url: str, part: Path, num_bytes: int | None, progress: bool) -> None:
    """Download ``url`` into ``part``, resuming what is there; retries dropped connections and 5xx answers."""
    last_error: BaseException | None = None
    for attempt in range(MAX_ATTEMPTS):
        if attempt:
            time.sleep(min(0.2 * 2**attempt, 5.0))
        have = part.stat().st_size if part.is_file() else 0
        if num_bytes is not None and have == num_bytes:
            return  # complete but not yet renamed (a crash between the last write and the rename)
        headers = {"User-Agent": "pfm", "Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as resp:
                if have and resp.status == 206 and _range_start(resp) == have:
                    mode = "ab"
                else:  # the server ignored the Range (200): start again
                    have, mode = 0, "wb"
                length = resp.headers.get("Content-Length")
                total = have + int(length) if length is not None else num_bytes
                with (
                    open(part, mode) as f,
                    tqdm(
                        total=total,
                        initial=have,
                        unit="B",
                        unit_scale=True,
                        unit_divisor=1024,
                        desc=part.name.removesuffix(".part"),
                        disable=not progress,
                        # the finished bar stays at 100%: cleared (leave=False), a fast download's last line in a
                        # log or terminal was the first refresh, "0%| 0.00/293k"
                        leave=True,
                        mininterval=0.5,
                    ) as bar,
                ):
                    while chunk := resp.read(_CHUNK):
                        f.write(chunk)
                        bar.update(len(chunk))
                    f.flush()
                    os.fsync(f.fileno())
                size = part.stat().st_size
                if total is not None and size < total:
                    raise http.client.IncompleteRead(b"", total - size)
                return
        except urllib.error.HTTPError as err:
            if err.code == 416 and have:  # nothing left to send from that offset: start again
                part.unlink()
                last_error = err
                continue
            if err.code >= 500 or err.code == 429:
                last_error = err
                continue
            raise DownloadError(
                f"{url} answered HTTP {err.code} {err.reason}; check the url in the registry entry (and for 401/403 "
                "whether the file needs a login)."
            ) from err
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as err:
            last_error = err
            log.warning(
                "Download of %s interrupted (%s); resuming (attempt %d of %d).",
                url,
                err,
                attempt + 2,
                MAX_ATTEMPTS,
            )
    kept = part.stat().st_size if part.is_file() else 0
    raise DownloadError(
        f"{url} could not be downloaded in {MAX_ATTEMPTS} attempts (last error: {last_error!r}); {kept} bytes are "
        f"kept in {part} and the next `pfm download` resumes from there. Check the network or the server."
    )


def _range_start(resp: http.client.HTTPResponse) -> int | None:
    value = resp.headers.get("Content-Range", "")  # "bytes 100-199/200"
    with contextlib.suppress(ValueError, IndexError):
        return int(value.split()[1].split("-")[0])
    return None
