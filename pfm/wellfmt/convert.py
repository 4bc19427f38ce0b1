"""Turn plain arrays (a solver's output as ``.npy``/``.npz``) into a dataset in The Well's layout, with stats.

A small YAML spec names the arrays and what they are (paths are relative to the spec's folder)::

    dataset_name: my_flow
    spatial_dims: [x, y]              # 1 to 3 axis names; their sizes come from the arrays
    dt: 0.01                          # time between frames (or time: times.npy, shape (steps,))
    coordinates: {x: [0.0, 1.0]}      # optional, per axis: [first, last] point (default [0, 1]) or a .npy file
    boundary_conditions: {x: periodic, y: [wall, open]}   # per axis: periodic | wall | open, or [low, high]
    simulation_parameters: {Re: 1000.0}                   # optional numbers, written as root attributes
    grid_type: cartesian              # optional
    fields:                           # (trajectories, steps, *grid, *[D] * order) each
      pressure: pressure.npy                              # order 0 (a scalar field)
      velocity: {file: run.npz, key: u, order: 1}         # trailing axis of size D = len(spatial_dims)
      stress: {file: stress.npy, order: 2}                # two trailing axes of size D
      obstacle: {file: mask.npy, time_varying: false}     # constant: (trajectories, *grid) or (*grid)
    splits: {train: [0, 1, 2, 3], valid: [4], test: [5]}  # trajectory indices, or fractions (default 0.8/0.1/0.1)

``convert(spec, out)`` checks every array against the others before writing (shapes, component axes, dtypes,
splits), writes ``out/data/{train,valid,test}/<dataset_name>_<split>.hdf5`` (float32, one HDF5 chunk per
frame), ``out/stats.yaml`` from the train split and ``out/convert.yaml`` (the spec, for provenance), checks the
result with :func:`pfm.wellfmt.check.check_dataset`, and only then moves the folder into place: an error
leaves no half-written dataset. ``.npy`` arrays are memory-mapped and copied in pieces of about ``max_bytes``.

Public names: ``convert``, ``load_spec``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml

from pfm.io import atomic_dir
from pfm.wellfmt.check import check_dataset
from pfm.wellfmt.layout import BC_TYPES, FIELD_GROUPS, SPLITS
from pfm.wellfmt.stats import write_stats

__all__ = ["convert", "load_spec"]

_SPEC_KEYS = {
    "dataset_name", "spatial_dims", "dt", "time", "coordinates", "boundary_conditions", "simulation_parameters",
    "grid_type", "fields", "splits",
}  # fmt: skip
_FIELD_KEYS = {"file", "key", "order", "time_varying"}


class _Field:
    """One field of the spec with its array (memory-mapped where possible)."""

    def __init__(self, name: str, entry: Any, base: Path, spec: Path) -> None:
        entry = {"file": entry} if isinstance(entry, str) else entry
        where = f"{spec}: fields.{name}"
        if not isinstance(entry, Mapping) or "file" not in entry or set(entry) - _FIELD_KEYS:
            raise ValueError(
                f"{where} is {entry!r}; expected a file name or a mapping with keys {sorted(_FIELD_KEYS)} "
                "(file required), e.g. {file: velocity.npy, order: 1}."
            )
        self.name = name
        self.order = entry.get("order", 0)
        if self.order not in (0, 1, 2):
            raise ValueError(f"{where}.order={self.order!r}; expected 0 (scalar), 1 (vector) or 2 (tensor).")
        self.group = FIELD_GROUPS[self.order]
        self.time_varying = bool(entry.get("time_varying", True))
        self.file = base / str(entry["file"])
        self.array = _load_array(self.file, entry.get("key"), name, where)
        if self.array.dtype.kind not in "fiu":
            raise ValueError(
                f"{where}: {self.file} holds dtype {self.array.dtype}; expected real numbers (written as float32)."
            )


def _load_array(file: Path, key: str | None, name: str, where: str) -> np.ndarray:
    if not file.is_file():
        raise FileNotFoundError(
            f"{where}: {file} does not exist; paths in the spec are relative to its folder."
        )
    if file.suffix == ".npy":
        return np.load(file, mmap_mode="r", allow_pickle=False)
    if file.suffix == ".npz":
        with np.load(file, allow_pickle=False) as archive:
            key = key or name
            if key not in archive.files:
                raise ValueError(f"{where}: {file} has no array {key!r}; it holds {archive.files}. Set key:.")
            return archive[key]
    raise ValueError(f"{where}: {file} is not .npy or .npz; save the array with numpy.save or numpy.savez.")


def load_spec(spec_path: str | Path) -> dict[str, Any]:
    """Read and check a convert spec (see the module docstring); unknown keys are errors (typos)."""
    spec_path = Path(spec_path)
    if not spec_path.is_file():
        raise FileNotFoundError(
            f"convert spec {spec_path} does not exist; see docs/own_data.md for an example."
        )
    spec = yaml.safe_load(spec_path.read_text())
    if not isinstance(spec, Mapping):
        raise ValueError(
            f"{spec_path} holds {type(spec).__name__}; expected a mapping (see docs/own_data.md)."
        )
    unknown = set(spec) - _SPEC_KEYS
    missing = {"dataset_name", "spatial_dims", "fields"} - set(spec)
    if unknown or missing or ("dt" in spec) == ("time" in spec):
        raise ValueError(
            f"{spec_path}: unknown keys {sorted(unknown)}, missing {sorted(missing)}"
            + ("" if ("dt" in spec) != ("time" in spec) else ", and it needs exactly one of dt and time")
            + f"; the keys are {sorted(_SPEC_KEYS)}."
        )
    dims = spec["spatial_dims"]
    if not isinstance(dims, list) or not 1 <= len(dims) <= 3 or len(set(map(str, dims))) != len(dims):
        raise ValueError(
            f"{spec_path}: spatial_dims={dims!r}; expected 1 to 3 distinct names, e.g. [x, y, z]."
        )
    if not isinstance(spec["fields"], Mapping) or not spec["fields"]:
        raise ValueError(
            f"{spec_path}: fields={spec['fields']!r}; expected a mapping of field name -> array file."
        )
    return dict(spec)


def _check_shapes(
    fields: list[_Field], num_spatial_dims: int, spec: Path
) -> tuple[int, int, tuple[int, ...]]:
    """``(trajectories, steps, grid)`` that every array agrees on, or a ValueError naming each array's."""
    d = num_spatial_dims
    if not any(f.time_varying for f in fields):
        raise ValueError(f"{spec}: every field has time_varying: false; at least one must change in time.")
    implied: dict[str, dict[str, Any]] = {
        "the number of trajectories": {},
        "the number of steps": {},
        "the grid": {},
    }
    for f in fields:
        shape, comps = tuple(f.array.shape), (d,) * f.order
        layout = "(trajectories, steps, " if f.time_varying else "([trajectories,] "
        layout += f"{d} grid axes" + (f", {f.order} component axes of size {d})" if f.order else ")")
        ndims = (2 + d + f.order,) if f.time_varying else (d + f.order, 1 + d + f.order)
        if len(shape) not in ndims or shape[len(shape) - f.order :] != comps:
            raise ValueError(
                f"{spec}: fields.{f.name} ({f.file}) has shape {shape}; a t{f.order} "
                f"{'field' if f.time_varying else 'constant field'} in {d}D is {layout}."
            )
        lead = len(shape) - d - f.order
        implied["the grid"][f.name] = shape[lead : lead + d]
        if lead >= 1:
            implied["the number of trajectories"][f.name] = shape[0]
        if f.time_varying:
            implied["the number of steps"][f.name] = shape[1]
    for what, values in implied.items():
        if len(set(values.values())) > 1:
            listed = ", ".join(f"{name} {value}" for name, value in values.items())
            raise ValueError(
                f"{spec}: the arrays disagree on {what}: {listed}. Every field needs the same "
                "(trajectories, steps, *grid); fix the odd array or its spec entry."
            )
    num_steps = next(iter(implied["the number of steps"].values()))
    if num_steps < 2:
        raise ValueError(
            f"{spec}: the arrays hold {num_steps} step(s); a dataset needs at least 2 per trajectory."
        )
    return (
        next(iter(implied["the number of trajectories"].values())),
        num_steps,
        next(iter(implied["the grid"].values())),
    )


def _splits(spec: Mapping[str, Any], num_traj: int, path: Path) -> dict[str, list[int]]:
    """Trajectory indices per split, from lists of indices or fractions."""
    splits = spec.get("splits", {"train": 0.8, "valid": 0.1, "test": 0.1})
    if not isinstance(splits, Mapping) or set(splits) - set(SPLITS):
        raise ValueError(f"{path}: splits={splits!r}; expected a mapping with keys among {SPLITS}.")
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in splits.values()):
        fractions = np.array([float(splits.get(s, 0.0)) for s in SPLITS])
        if (fractions < 0).any() or fractions.sum() <= 0:
            raise ValueError(f"{path}: split fractions {splits!r} must be >= 0 with a positive sum.")
        ends = np.round(np.cumsum(fractions / fractions.sum()) * num_traj).astype(int)
        bounds = [0, *ends.tolist()]
        out = {s: list(range(bounds[i], bounds[i + 1])) for i, s in enumerate(SPLITS)}
    else:
        out = {}
        for split, indices in splits.items():
            if not isinstance(indices, list) or not all(isinstance(i, int) for i in indices):
                raise ValueError(
                    f"{path}: splits.{split}={indices!r}; expected a list of trajectory indices."
                )
            out[split] = indices
        seen: dict[int, str] = {}
        for split, indices in out.items():
            for i in indices:
                if not 0 <= i < num_traj:
                    raise ValueError(
                        f"{path}: splits.{split} names trajectory {i}; the arrays hold {num_traj} (0..{num_traj - 1})."
                    )
                if i in seen:
                    raise ValueError(
                        f"{path}: trajectory {i} is in splits.{seen[i]} and splits.{split}; splits must not overlap."
                    )
                seen[i] = split
    for split in ("train", "valid"):
        if not out.get(split):
            raise ValueError(
                f"{path}: the {split} split gets no trajectory of {num_traj} (splits={splits!r}); give it at least one."
            )
    return {s: out[s] for s in SPLITS if out.get(s)}


def _axis_values(spec: Mapping[str, Any], axis: str, size: int, base: Path, path: Path) -> np.ndarray:
    value = spec.get("coordinates", {}).get(axis, [0.0, 1.0])
    if isinstance(value, str):
        coords = np.asarray(
            _load_array(base / value, None, axis, f"{path}: coordinates.{axis}"), dtype=np.float32
        )
    elif isinstance(value, list) and len(value) == 2:
        coords = np.linspace(float(value[0]), float(value[1]), size, dtype=np.float32)
    else:
        raise ValueError(f"{path}: coordinates.{axis}={value!r}; expected [first, last] or a .npy file.")
    if coords.shape != (size,):
        raise ValueError(
            f"{path}: coordinates.{axis} has shape {coords.shape}; the grid has {size} points along {axis}."
        )
    return coords


def _times(spec: Mapping[str, Any], num_steps: int, base: Path, path: Path) -> np.ndarray:
    if "dt" in spec:
        dt = spec["dt"]
        if not isinstance(dt, (int, float)) or isinstance(dt, bool) or not dt > 0:
            raise ValueError(f"{path}: dt={dt!r}; expected a positive number (time between frames).")
        return np.arange(num_steps, dtype=np.float64).astype(np.float32) * np.float32(dt)
    times = np.asarray(_load_array(base / str(spec["time"]), None, "time", f"{path}: time"), dtype=np.float32)
    if times.shape != (num_steps,) or not (np.diff(times) > 0).all():
        raise ValueError(
            f"{path}: time has shape {times.shape}; expected {num_steps} strictly increasing times."
        )
    return times


def _boundaries(spec: Mapping[str, Any], dims: list[str], path: Path) -> list[tuple[str, str, str | None]]:
    """``(axis, bc_type, side)`` per boundary group; side None when both ends share a type."""
    given = spec.get("boundary_conditions", {})
    if not isinstance(given, Mapping) or set(given) - set(dims):
        raise ValueError(
            f"{path}: boundary_conditions={given!r}; expected a mapping from axes {dims} to types."
        )
    out = []
    for axis in dims:
        value = given.get(axis, "periodic")
        types = [value] if isinstance(value, str) else value
        if not isinstance(types, list) or len(types) not in (1, 2) or any(t not in BC_TYPES for t in types):
            raise ValueError(
                f"{path}: boundary_conditions.{axis}={value!r}; expected one of {BC_TYPES}, or [low, high] of them."
            )
        if len(types) == 1 or types[0] == types[1]:
            out.append((axis, types[0], None))
        else:
            out += [(axis, types[0], "low"), (axis, types[1], "high")]
    return out


def _write_file(
    target: Path,
    spec: Mapping[str, Any],
    fields: list[_Field],
    trajectories: list[int],
    geometry: dict[str, Any],
) -> None:
    dims, grid, times = geometry["dims"], geometry["grid"], geometry["times"]
    d = len(dims)
    params = {str(k): float(v) for k, v in (spec.get("simulation_parameters") or {}).items()}
    target.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(target, "w") as f:
        f.attrs["dataset_name"] = str(spec["dataset_name"])
        f.attrs["grid_type"] = str(spec.get("grid_type", "cartesian"))
        f.attrs["n_spatial_dims"] = d
        f.attrs["n_trajectories"] = len(trajectories)
        f.attrs["simulation_parameters"] = list(params)
        for k, v in params.items():
            f.attrs[k] = v
        group = f.create_group("dimensions")
        group.attrs["spatial_dims"] = dims
        t = group.create_dataset("time", data=times)
        t.attrs["sample_varying"] = False
        t.attrs["time_varying"] = True
        for axis in dims:
            c = group.create_dataset(axis, data=geometry["coordinates"][axis])
            c.attrs["sample_varying"] = False
            c.attrs["time_varying"] = False
        group = f.create_group("boundary_conditions")
        for axis, bc_type, side in geometry["boundaries"]:
            bc = group.create_group(f"{axis}_{bc_type}" + (f"_{side}" if side else ""))
            bc.attrs["bc_type"] = bc_type
            bc.attrs["associated_dims"] = [axis]
            bc.attrs["associated_fields"] = []
            bc.attrs["sample_varying"] = False
            bc.attrs["time_varying"] = False
            mask = np.zeros(grid[dims.index(axis)], dtype=bool)
            mask[{None: [0, -1], "low": [0], "high": [-1]}[side]] = True
            bc.create_dataset("mask", data=mask)
            bc.create_dataset("values", data=np.zeros(int(mask.sum()), dtype=np.float32))
        group = f.create_group("scalars")
        group.attrs["field_names"] = list(params)
        for k, v in params.items():
            s = group.create_dataset(k, data=np.float32(v))
            s.attrs["sample_varying"] = False
            s.attrs["time_varying"] = False
        groups = {name: f.create_group(name) for name in FIELD_GROUPS}
        for name, group in groups.items():
            group.attrs["field_names"] = [x.name for x in fields if x.group == name]
        for x in fields:
            _write_field(groups[x.group], x, trajectories, d, grid, geometry["max_bytes"])


def _write_field(
    group: Any, x: _Field, trajectories: list[int], d: int, grid: tuple[int, ...], max_bytes: int
) -> None:
    comps = (d,) * x.order
    shared = not x.time_varying and x.array.ndim == d + x.order
    frame = (*grid, *comps)
    if shared:
        ds = group.create_dataset(x.name, data=np.asarray(x.array, dtype=np.float32))
        pieces: list[tuple[int, int, slice]] = []
    elif x.time_varying:
        num_steps = x.array.shape[1]
        ds = group.create_dataset(
            x.name, shape=(len(trajectories), num_steps, *frame), dtype=np.float32, chunks=(1, 1, *frame)
        )
        per = max(1, max_bytes // (4 * int(np.prod(frame))))  # frames per piece: any trajectory length fits
        pieces = [
            (r, t, slice(s, s + per)) for r, t in enumerate(trajectories) for s in range(0, num_steps, per)
        ]
    else:
        ds = group.create_dataset(
            x.name, shape=(len(trajectories), *frame), dtype=np.float32, chunks=(1, *frame)
        )
        pieces = [(r, t, slice(None)) for r, t in enumerate(trajectories)]
    for row, traj, steps in pieces:
        data = np.asarray(x.array[(traj, steps) if x.time_varying else (traj,)], dtype=np.float32)
        if not np.isfinite(data).all():
            step = (steps.start or 0) + int(np.argwhere(~np.isfinite(data))[0][0]) if x.time_varying else None
            raise ValueError(
                f"fields.{x.name} ({x.file}): trajectory {traj}"
                + (f", step {step}," if step is not None else "")
                + " holds NaN/Inf; fix or leave out that trajectory (splits: lists the ones to keep)."
            )
        ds[(row, steps) if x.time_varying else (row,)] = data
    ds.attrs["sample_varying"] = not shared
    ds.attrs["time_varying"] = x.time_varying
    ds.attrs["dim_varying"] = [True] * d
    if x.order == 2:
        ds.attrs["symmetric"] = False
        ds.attrs["antisymmetric"] = False


def convert(spec_path: str | Path, out: str | Path, *, max_bytes: int = 256 << 20) -> dict[str, Any]:
    """Write the dataset the spec describes to ``out`` (a new folder), with stats; a summary of what it wrote."""
    spec_path = Path(spec_path)
    spec = load_spec(spec_path)
    base = spec_path.parent
    dims = [str(d) for d in spec["spatial_dims"]]
    fields = [_Field(str(name), entry, base, spec_path) for name, entry in spec["fields"].items()]
    num_traj, num_steps, grid = _check_shapes(fields, len(dims), spec_path)
    splits = _splits(spec, num_traj, spec_path)
    geometry = {
        "dims": dims,
        "grid": grid,
        "times": _times(spec, num_steps, base, spec_path),
        "coordinates": {
            a: _axis_values(spec, a, n, base, spec_path) for a, n in zip(dims, grid, strict=True)
        },
        "boundaries": _boundaries(spec, dims, spec_path),
        "max_bytes": max_bytes,
    }
    name = str(spec["dataset_name"])
    with atomic_dir(out) as tmp:
        for split, trajectories in splits.items():
            _write_file(tmp / "data" / split / f"{name}_{split}.hdf5", spec, fields, trajectories, geometry)
        (tmp / "convert.yaml").write_text(
            yaml.safe_dump({"source": str(spec_path.resolve()), **spec}, sort_keys=False)
        )
        write_stats(tmp, max_bytes=max_bytes)
        problems = [str(p) for p in check_dataset(tmp, values=False) if p.is_problem]
        if problems:  # convert's own output must pass check; a failure here is a bug in pfm
            raise RuntimeError("pfm data convert wrote a dataset that check refuses:\n" + "\n".join(problems))
    return {
        "path": str(out),
        "dataset_name": name,
        "spatial_dims": dims,
        "grid": grid,
        "steps": num_steps,
        "splits": {s: len(v) for s, v in splits.items()},
        "fields": {x.name: x.order for x in fields},
    }
