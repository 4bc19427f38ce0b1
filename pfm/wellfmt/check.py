"""Checks of a dataset folder in The Well's layout: splits, every file, files that agree, ``stats.yaml``, values.

Each file is checked by :meth:`pfm.wellfmt.layout.WellFile.inspect` (the same checks the reader runs); this
module adds what spans files: the split folders, one dataset per folder, ``stats.yaml`` against the fields,
and a scan of every value for NaN/Inf (read in pieces, so any size works).

Public names: ``check_file``, ``check_stats``, ``check_dataset``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np
import yaml

from pfm.wellfmt.layout import _SUFFIXES, SPLITS, Finding, WellFile, _Findings, split_files

__all__ = ["check_dataset", "check_file", "check_stats"]


def check_stats(stats_path: Path, layout: WellFile) -> list[Finding]:
    """Check ``stats.yaml`` against a file's fields: mean and std (and any rms/*_delta) per field, sized right."""
    found = _Findings()
    fix = f"recompute it with `pfm data stats {stats_path.parent}`."
    if not stats_path.is_file():
        found.add(
            "missing-stats",
            stats_path,
            "stats.yaml",
            "no stats.yaml beside data/ (data.normalization=stats needs it).",
            f"compute it with `pfm data stats {stats_path.parent}`.",
        )
        return found
    try:
        stats = yaml.safe_load(stats_path.read_text())
    except yaml.YAMLError as err:
        found.add("bad-stats", stats_path, "stats.yaml", f"not valid YAML ({err}).", fix)
        return found
    if not isinstance(stats, Mapping) or not all(isinstance(stats.get(k), Mapping) for k in ("mean", "std")):
        found.add(
            "bad-stats", stats_path, "stats.yaml", "no 'mean' and 'std' mappings of field -> value.", fix
        )
        return found
    for info in layout.fields:
        size = len(info.channels)
        for key, table in stats.items():
            if key not in ("mean", "std") and (not isinstance(table, Mapping) or info.name not in table):
                continue
            if info.name not in table:
                found.add(
                    "bad-stats", stats_path, f"{key}/{info.name}", f"no {key} of field {info.name!r}.", fix
                )
                continue
            try:
                value = np.asarray(table[info.name], dtype=np.float64)
            except (TypeError, ValueError):
                value = np.asarray([np.nan])
            if value.size not in (1, size) or not np.isfinite(value).all():
                found.add(
                    "bad-stats",
                    stats_path,
                    f"{key}/{info.name}",
                    f"{key} of {info.name!r} is {table[info.name]!r}; expected {size} finite number(s) "
                    f"(one per component of a t{info.order} field).",
                    fix,
                )
            elif key.startswith("std") and (value < 0).any():
                found.add(
                    "bad-stats", stats_path, f"{key}/{info.name}", f"negative {key}: {value.tolist()}.", fix
                )
            elif key == "std" and (value < 1e-4).any():
                found.add(
                    "low-std",
                    stats_path,
                    f"std/{info.name}",
                    f"std {value.tolist()} below 1e-4; pfm divides by 1e-4 instead.",
                    "check that the field really varies (or use data.normalization=sample).",
                )
    return found


# ----------------------------------------------------------------------------------------------- folder
def _scan_values(layout: WellFile, found: _Findings, max_bytes: int) -> None:
    with h5py.File(layout.path, "r") as f:
        for info in [*layout.fields, *layout.constant_fields]:
            count, first = 0, ""
            for t, s, data in layout.chunks(f, info, max_bytes):
                bad = ~np.isfinite(data)
                if bad.any():
                    if not count:
                        index = np.argwhere(bad)[0]
                        where = [f"trajectory {t}"] if t is not None else []
                        where += [f"step {s + int(index[0])}"] if info.time_varying else []
                        first = ", ".join(where) or f"index {index.tolist()}"
                    count += int(bad.sum())
            if count:
                found.add(
                    "non-finite",
                    layout.path,
                    info.path,
                    f"{count} NaN/Inf value(s), the first at {first}.",
                    "fix or drop that trajectory (a solver that diverged); pfm does not train on NaN.",
                )


def check_file(
    path: str | Path, *, values: bool = True, max_bytes: int = 256 << 20
) -> tuple[WellFile | None, list[Finding]]:
    """One file's findings (structure, then with ``values`` NaN/Inf in pieces of about ``max_bytes``)."""
    layout, findings = WellFile.inspect(path)
    found = _Findings(findings)
    if layout is not None and values and not any(f.is_problem for f in findings):
        _scan_values(layout, found, max_bytes)
    return layout, list(found)


def check_dataset(path: str | Path, *, values: bool = True, max_bytes: int = 256 << 20) -> list[Finding]:
    """Every finding in a dataset folder: its splits, each file, files that disagree, and ``stats.yaml``.

    With ``values``, every field's values are read (in pieces of about ``max_bytes``) to find NaN/Inf.
    """
    root = Path(path)
    found = _Findings()
    if not (root / "data").is_dir():
        found.add(
            "not-a-dataset",
            root,
            "data/",
            "no data/ folder here." if root.is_dir() else "no such folder.",
            "point at the dataset folder that holds data/{train,valid,test} and stats.yaml "
            "(`pfm data convert` makes one from arrays).",
        )
        return found
    reference: WellFile | None = None
    for split in SPLITS:
        folder = root / "data" / split
        if not folder.is_dir():
            found.add(
                "missing-test" if split == "test" else "missing-split",
                root,
                f"data/{split}/",
                f"no {split} split.",
                f"create data/{split} with at least one HDF5 file (`pfm data convert` assigns trajectories to splits).",
            )
            continue
        for stray in sorted(p for p in folder.iterdir() if p.suffix not in _SUFFIXES):
            found.add(
                "stray-file",
                stray,
                "",
                "not an HDF5 file name (*.hdf5, *.h5); ignored.",
                "move it out of the split.",
            )
        files = split_files(folder)
        if not files:
            found.add(
                "empty-split",
                root,
                f"data/{split}/",
                f"the {split} split holds no *.hdf5/*.h5 file.",
                f"put this split's HDF5 files into data/{split}.",
            )
        for file in files:
            layout, findings = check_file(file, values=values, max_bytes=max_bytes)
            found += findings
            if layout is None or any(f.is_problem for f in findings):
                continue
            if reference is None:
                reference = layout
                continue
            mine = (layout.spatial_dims, layout.grid, layout.channels)
            theirs = (reference.spatial_dims, reference.grid, reference.channels)
            if mine != theirs:
                found.add(
                    "inconsistent-files",
                    file,
                    "/",
                    f"spatial axes, grid and channels {mine}; {reference.path} holds {theirs}.",
                    "keep one dataset per folder: the same axes, grid and fields in every file and split.",
                )
    if reference is not None:
        found += check_stats(root / "stats.yaml", reference)
    return list(found)
