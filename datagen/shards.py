"""Webdataset tar shards of pool samples, written atomically, with JSON provenance per sample.

A shard directory holds ``{prefix}-{index:06d}.tar`` files and ``format.json`` (how they were made and what
each sample holds). Every sample has ``input.npy`` (and ``target.npy`` for pairs, ``channel_mask.npy`` for
windows and pairs), ``pde.cls`` (the family index in ``format.json``'s ``pde_names``) and ``json``
(pde, coefficients, seed, pool_index, step, time, dt, grid, code version). Samples are drawn exactly as the online
stream draws them (same pool, seed and sampling calls), so a reader yields the same tensors. Once every shard
is written, ``format.json`` also records ``num_samples_per_shard`` (file name -> samples), from which a reader
deals equal epochs to its processes without opening the shards.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from datagen.pool import FamilySpec, PDEPool

__all__ = ["code_version", "decode_sample", "iter_pool_samples", "write_shards"]

KINDS = ("crops", "windows", "pairs")


def code_version() -> str:
    """The installed pfm distribution version (datagen ships inside it)."""
    try:
        return metadata.version("pfm")
    except metadata.PackageNotFoundError:
        return "unknown"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # atomic on POSIX: readers see the whole file or none of it


def _npy(x: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, x.detach().cpu().numpy(), allow_pickle=False)
    return buffer.getvalue()


def iter_pool_samples(
    pool: PDEPool,
    *,
    kind: str,
    batch: int,
    crop: int | None,
    window: int = 2,
    lag: int = 1,
    augment: bool = True,
    steps_per_batch: int = 1,
) -> Iterator[dict[str, object]]:
    """Endless samples of ``kind`` (one dict of tensors + provenance each), in the online stream's order."""
    if kind not in KINDS:
        raise ValueError(f"Sample kind {kind!r}; expected one of {list(KINDS)}.")
    while True:
        for _ in range(steps_per_batch):
            pool.advance()
        if kind == "crops":
            x, pde = pool.sample_crops(batch, crop, augment=augment)
            out = {"input": x, "pde": pde}
        elif kind == "windows":
            out = pool.sample_windows(batch, window, crop=crop, augment=augment)
        else:
            out = pool.sample_pairs(batch, lag, crop=crop, augment=augment)
        for i, (family, row) in enumerate(pool.last_sources):
            sample = {k: v[i] for k, v in out.items()}
            sample["meta"] = pool.provenance(family, row) | {"kind": kind, "code_version": code_version()}
            yield sample


def write_shards(
    families: Sequence[FamilySpec],
    out: str | Path,
    *,
    num_samples: int,
    samples_per_shard: int = 256,
    kind: str = "crops",
    crop: int | None = 32,
    window: int = 2,
    lag: int = 1,
    batch: int = 8,
    augment: bool = True,
    prefix: str = "shard",
    pool_kwargs: dict | None = None,
) -> list[Path]:
    """Write ``num_samples`` samples into tar shards of ``samples_per_shard`` under ``out``; returns the paths.

    ``pool_kwargs`` go to :class:`PDEPool` (n, num_spatial_dims, num_trajectories, seed, pool_index, ...).
    """
    import webdataset as wds  # imported when writing: webdataset takes seconds to import, beyond torch

    out = Path(out)
    counts_given = {"num_samples": num_samples, "samples_per_shard": samples_per_shard, "batch": batch}
    counts_given.update(window=window, lag=lag)
    for name, value in counts_given.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: expected an integer >= 1. Fix: e.g. {name}=8.")
    if crop is not None and (isinstance(crop, bool) or not isinstance(crop, int) or crop < 1):
        raise ValueError(
            f"crop={crop!r}: expected an integer >= 1, or None for whole fields. Fix: e.g. crop=32."
        )
    if out.exists() and not out.is_dir():
        raise ValueError(
            f"out={str(out)!r} is an existing file; expected a folder for the shards (new, or one of earlier "
            f"shards). Fix: pass another path, e.g. {str(out)!r} + '_shards', or move the file away."
        )
    out.mkdir(parents=True, exist_ok=True)
    pool_kwargs = dict(pool_kwargs or {})
    history = max(window if kind == "windows" else 1, lag + 1 if kind == "pairs" else 1)
    pool_kwargs["history"] = max(history, pool_kwargs.get("history", 1))
    pool = PDEPool(families, **pool_kwargs)
    names = [f.name for f in families]
    description = {
        "format": "webdataset tar; per sample: input.npy [target.npy] [channel_mask.npy] pde.cls json",
        "kind": kind,
        "pde_names": names,
        "families": [
            {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(f).items()} for f in families
        ],
        "pool": {k: str(v) if isinstance(v, torch.device) else v for k, v in pool_kwargs.items()},
        "crop": crop,
        "window": window,
        "lag": lag,
        "batch": batch,
        "augment": augment,
        "code_version": code_version(),
        "shapes": "crops: input (1, c, c, c); windows: input (T, C, *grid); pairs: input/target (C, *grid)",
    }
    _atomic_write(out / "format.json", json.dumps(description, indent=2, default=str).encode())
    stream = iter_pool_samples(
        pool, kind=kind, batch=batch, crop=crop, window=window, lag=lag, augment=augment
    )
    paths, written, counts = [], 0, {}
    while written < num_samples:
        path = out / f"{prefix}-{len(paths):06d}.tar"
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        first = written
        try:
            with open(tmp, "wb") as handle, wds.TarWriter(handle) as sink:
                for _ in range(min(samples_per_shard, num_samples - written)):
                    sample = next(stream)
                    record = {"__key__": f"{written:09d}", "json": json.dumps(sample.pop("meta")).encode()}
                    record["pde.cls"] = str(int(sample.pop("pde"))).encode()
                    for key, value in sample.items():
                        record[f"{key}.npy"] = _npy(value)
                    sink.write(record)
                    written += 1
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # no partial shard is left (a KeyboardInterrupt included)
            raise
        paths.append(path)
        counts[path.name] = written - first
    # readers deal whole shards to processes and need each one's size to give them equal epochs
    description["num_samples_per_shard"] = counts
    _atomic_write(out / "format.json", json.dumps(description, indent=2, default=str).encode())
    return paths


def decode_sample(record: dict[str, bytes]) -> dict[str, object]:
    """A raw webdataset record to ``{"input": tensor, ..., "pde": int, "meta": dict}``."""
    out: dict[str, object] = {}
    for key, value in record.items():
        if key.endswith(".npy"):
            out[key[: -len(".npy")]] = torch.from_numpy(np.load(io.BytesIO(value), allow_pickle=False))
        elif key == "pde.cls":
            out["pde"] = int(value)
        elif key == "json":
            out["meta"] = json.loads(value)
    return out
