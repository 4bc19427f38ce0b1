"""The Well's file layout: its names, the checks one file must pass, and the primitives that read it.

A dataset folder holds ``data/train``, ``data/valid`` and ``data/test`` (folders of ``*.hdf5``/``*.h5`` files)
and ``stats.yaml`` beside ``data/``. Every file (The Well's ``docs/data_format.md``) has

- root attributes ``dataset_name``, ``grid_type``, ``n_spatial_dims``, ``n_trajectories`` and
  ``simulation_parameters`` (names of further root attributes);
- ``dimensions``: attribute ``spatial_dims`` (e.g. ``['x', 'y', 'z']``), one coordinate dataset per spatial axis
  and ``time`` ``(steps,)``, or ``(trajectories, steps)`` when its ``sample_varying`` is true;
- ``boundary_conditions``: one group per boundary with ``bc_type`` (periodic/wall/open), ``associated_dims``,
  ``associated_fields``, ``sample_varying``, ``time_varying`` and a ``mask`` over the associated axes;
- ``scalars``: attribute ``field_names``; one dataset per scalar;
- ``t0_fields``, ``t1_fields``, ``t2_fields`` (scalar, vector and rank-2 tensor fields): attribute
  ``field_names``; each field a dataset ``([trajectories,] [steps,] *spatial, *[D] * order)`` with boolean
  attributes ``sample_varying`` and ``time_varying`` (whether the bracketed axes are there) and ``dim_varying``
  (one per spatial axis: whether that axis is there).

:class:`WellFile` opens one file, checks it (:meth:`WellFile.inspect` returns every :class:`Finding` instead
of raising) and reads windows of its time-varying channels (:meth:`WellFile.read`, a field that does not vary
along an axis is broadcast along it) or pieces of one field (:meth:`WellFile.chunks`). Each finding has a
``kind`` from :data:`PROBLEM_KINDS` (refused) or :data:`WARNING_KINDS` (reported; pfm reads the file anyway).
:mod:`pfm.wellfmt.check` checks a whole folder with these.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

__all__ = [
    "BC_TYPES",
    "FIELD_GROUPS",
    "PROBLEM_KINDS",
    "SPLITS",
    "WARNING_KINDS",
    "FieldInfo",
    "Finding",
    "WellFile",
    "channel_names",
    "split_files",
]

#: Groups of fields by tensor order (0: scalar, 1: vector, 2: rank-2 tensor).
FIELD_GROUPS = ("t0_fields", "t1_fields", "t2_fields")
#: Split folders under ``<dataset>/data``.
SPLITS = ("train", "valid", "test")
#: Boundary condition types The Well names.
BC_TYPES = ("periodic", "wall", "open")
_SUFFIXES = (".hdf5", ".h5")

#: What ``pfm data check`` refuses: the kind, then what it means.
PROBLEM_KINDS: dict[str, str] = {
    "not-a-dataset": "PATH is not a folder holding data/",
    "missing-split": "data/train or data/valid is missing",
    "empty-split": "a split folder holds no *.hdf5/*.h5 file",
    "not-hdf5": "a *.hdf5/*.h5 file that HDF5 cannot open",
    "missing-group": "no dimensions or t0_fields/t1_fields/t2_fields group",
    "missing-attribute": "an attribute pfm needs is absent (n_spatial_dims, spatial_dims, field_names, flags)",
    "bad-attribute": "an attribute of the wrong type, or one that contradicts another",
    "missing-dataset": "a listed field, a spatial axis's coordinates or the time axis is absent",
    "shape": "a dataset's shape is not the one its attributes imply",
    "dtype": "a field or time axis that does not hold real numbers (complex, text, compound)",
    "time-axis": "time values not finite or not strictly increasing",
    "too-few-steps": "fewer than 2 time steps: nothing to predict",
    "non-finite": "NaN or Inf in a field's values",
    "inconsistent-files": "files of one dataset disagree on spatial axes, grid or channels",
    "missing-stats": "no stats.yaml beside data/",
    "bad-stats": "stats.yaml unreadable, without mean/std of a field, of the wrong size or not finite",
}
#: What ``pfm data check`` reports but accepts (``--strict`` refuses these too).
WARNING_KINDS: dict[str, str] = {
    "well-attribute": "something The Well's format asks for that pfm does not need (scalars, grid_type, ...)",
    "boundary-condition": "a boundary condition group that does not follow The Well's format",
    "time-step": "time steps of unequal size (pfm uses their mean)",
    "unlisted-dataset": "a dataset in a field group that field_names does not list (ignored)",
    "not-float32": "a field stored as another real type (The Well stores float32; pfm reads float32)",
    "stray-file": "a file in a split folder that is not *.hdf5/*.h5 (ignored)",
    "missing-test": "no data/test (pfm evaluate scores the test split)",
    "low-std": "a field whose std in stats.yaml is below 1e-4 (normalised with std 1e-4)",
}


@dataclass(frozen=True)
class Finding:
    """One problem (or warning) in a dataset: which file, which object in it, what is wrong and the fix."""

    kind: str
    file: str
    object: str
    message: str
    fix: str

    @property
    def is_problem(self) -> bool:
        """Whether ``pfm data check`` refuses the dataset for it."""
        return self.kind in PROBLEM_KINDS

    def __str__(self) -> str:
        where = f"{self.file}: {self.object}" if self.object else self.file
        return f"{where}: {self.message} Fix: {self.fix} [{self.kind}]"


@dataclass(frozen=True)
class FieldInfo:
    """One field of a file: where it is, which axes it has and its channel names."""

    group: str
    name: str
    order: int
    sample_varying: bool
    time_varying: bool
    dim_varying: tuple[bool, ...]
    channels: tuple[str, ...]

    @property
    def path(self) -> str:
        """The field's HDF5 path, e.g. ``/t1_fields/velocity``."""
        return f"/{self.group}/{self.name}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _texts(values: Any) -> list[str]:
    if isinstance(values, (str, bytes)):
        return [_text(values)]
    return [_text(v) for v in (values.tolist() if hasattr(values, "tolist") else values)]


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def _is_text_list(value: Any) -> bool:
    if not isinstance(value, (list, tuple, np.ndarray)) or np.ndim(value) != 1:
        return False
    return all(isinstance(v, (str, bytes)) for v in (value.tolist() if hasattr(value, "tolist") else value))


def channel_names(field: str, spatial_dims: list[str], order: int) -> tuple[str, ...]:
    """The Well's channel names of a field: ``velocity`` -> ``velocity_x``, ``velocity_y``; ``stress_xy`` ..."""
    suffixes = ["".join(p) for p in itertools.product(spatial_dims, repeat=order)]
    return tuple(f"{field}_{s}" if s else field for s in suffixes)


class _Findings(list):
    def add(self, kind: str, file: Path | str, obj: str, message: str, fix: str) -> None:
        assert kind in PROBLEM_KINDS or kind in WARNING_KINDS, kind
        self.append(Finding(kind, str(file), obj, message, fix))


class WellFile:
    """One HDF5 file in The Well's layout: its spatial axes, grid, steps, trajectories and fields.

    ``WellFile(path)`` raises ``ValueError`` naming every problem (:meth:`inspect` returns them instead).
    ``fields`` are the time-varying fields (what a next-frame model predicts), ``constant_fields`` the others
    (constant inputs in The Well).
    """

    def __init__(self, path: str | Path) -> None:
        inspected, findings = WellFile.inspect(path)
        problems = [f for f in findings if f.is_problem]
        if inspected is None or problems:
            raise ValueError(
                f"{path} is not in The Well's layout (`pfm data check` lists every problem):\n"
                + "\n".join(f"  {p}" for p in problems)
            )
        self.__dict__.update(inspected.__dict__)

    def _reset(self, path: Path) -> None:
        self.path = path
        self.dataset_name = ""
        self.num_spatial_dims = self.num_trajectories = self.num_steps = 0
        self.spatial_dims: list[str] = []
        self.grid: tuple[int, ...] = ()
        self.time_step = 1.0
        self.boundary_conditions: dict[str, str] = {}
        self.fields: list[FieldInfo] = []
        self.constant_fields: list[FieldInfo] = []

    @property
    def channels(self) -> list[str]:
        """The Well's names of the time-varying channels, in file order."""
        return [name for f in self.fields for name in f.channels]

    # ------------------------------------------------------------------------------------------ validation
    @classmethod
    def inspect(cls, path: str | Path) -> tuple[WellFile | None, list[Finding]]:
        """Check one file's structure (no field values are read); the file (None if unreadable) and findings."""
        path = Path(path)
        found = _Findings()
        self = object.__new__(cls)
        self._reset(path)
        try:
            f = h5py.File(path, "r")
        except OSError as err:
            found.add(
                "not-hdf5",
                path,
                "/",
                f"HDF5 cannot open it ({err}).",
                "replace it with an HDF5 file (`pfm data convert` writes one) or remove it from the split.",
            )
            return None, found
        with f:
            ok = self._inspect_root(f, found) and self._inspect_dimensions(f, found)
            if ok:
                self._inspect_boundaries(f, found)
                self._inspect_scalars(f, found)
                for order, group in enumerate(FIELD_GROUPS):
                    self._inspect_fields(f, group, order, found)
        return self, list(found)

    def _inspect_root(self, f: Any, found: _Findings) -> bool:
        path = self.path
        for key in ("dataset_name", "grid_type"):
            if key not in f.attrs:
                found.add(
                    "well-attribute",
                    path,
                    f"/@{key}",
                    f"no root attribute {key!r}.",
                    f"set f.attrs[{key!r}] to a string (The Well's format asks for it).",
                )
        self.dataset_name = _text(f.attrs.get("dataset_name", path.parent.parent.parent.name))
        if "simulation_parameters" not in f.attrs:
            found.add(
                "well-attribute",
                path,
                "/@simulation_parameters",
                "no root attribute 'simulation_parameters'.",
                "set it to the list of parameter names (may be empty), each also a root attribute.",
            )
        else:
            for name in _texts(f.attrs["simulation_parameters"]):
                if name not in f.attrs:
                    found.add(
                        "well-attribute",
                        path,
                        f"/@{name}",
                        f"simulation_parameters lists {name!r}, which is not a root attribute.",
                        f"set f.attrs[{name!r}] to its value, or drop it from simulation_parameters.",
                    )
        ok = True
        for key, low in (("n_spatial_dims", 1), ("n_trajectories", 1)):
            value = f.attrs.get(key)
            if value is None:
                found.add(
                    "missing-attribute",
                    path,
                    f"/@{key}",
                    f"no root attribute {key!r}.",
                    "set it (an integer).",
                )
                ok = False
            elif not isinstance(value, (int, np.integer)) or _is_bool(value) or int(value) < low:
                found.add(
                    "bad-attribute",
                    path,
                    f"/@{key}",
                    f"{key}={value!r} ({type(value).__name__}); expected an integer >= {low}.",
                    f"write it as an integer, e.g. f.attrs[{key!r}] = {low + 1}.",
                )
                ok = False
        if ok:
            self.num_spatial_dims = int(f.attrs["n_spatial_dims"])
            self.num_trajectories = int(f.attrs["n_trajectories"])
            if self.num_spatial_dims > 3:
                found.add(
                    "bad-attribute",
                    path,
                    "/@n_spatial_dims",
                    f"n_spatial_dims={self.num_spatial_dims}; pfm reads 1, 2 or 3 spatial axes.",
                    "store 1D, 2D or 3D fields.",
                )
                ok = False
        for group in ("dimensions", *FIELD_GROUPS):
            if group not in f:
                found.add(
                    "missing-group",
                    path,
                    f"/{group}",
                    f"no group {group!r}.",
                    f"create it (an empty t*_fields group has field_names = []); groups dimensions, {FIELD_GROUPS}.",
                )
                ok = False
        return ok

    def _inspect_dimensions(self, f: Any, found: _Findings) -> bool:
        path, dims = self.path, f["dimensions"]
        spatial = dims.attrs.get("spatial_dims")
        if spatial is None:
            found.add(
                "missing-attribute",
                path,
                "/dimensions@spatial_dims",
                "no attribute 'spatial_dims'.",
                "set it to the spatial axes' names, e.g. ['x', 'y'].",
            )
            return False
        if not _is_text_list(spatial) or len(spatial) != self.num_spatial_dims:
            found.add(
                "bad-attribute",
                path,
                "/dimensions@spatial_dims",
                f"spatial_dims={list(np.atleast_1d(spatial))} but n_spatial_dims={self.num_spatial_dims}; "
                "expected that many axis names.",
                "make spatial_dims a list of n_spatial_dims strings.",
            )
            return False
        self.spatial_dims = _texts(spatial)
        ok = True
        grid = []
        for axis in self.spatial_dims:
            if axis not in dims or not hasattr(dims[axis], "shape"):
                found.add(
                    "missing-dataset",
                    path,
                    f"/dimensions/{axis}",
                    f"spatial_dims names {axis!r} but there is no coordinate dataset for it.",
                    f"write its grid coordinates as dataset dimensions/{axis} (shape (size,)).",
                )
                ok = False
                continue
            coord = dims[axis]
            if coord.ndim < 1 or coord.shape[-1] < 1:
                found.add(
                    "shape",
                    path,
                    f"/dimensions/{axis}",
                    f"coordinates of shape {coord.shape}; expected (size,) with size >= 1.",
                    "write one coordinate per grid point.",
                )
                ok = False
                continue
            grid.append(int(coord.shape[-1]))
            for flag in ("sample_varying", "time_varying"):
                if flag not in coord.attrs:
                    found.add(
                        "well-attribute",
                        path,
                        f"/dimensions/{axis}@{flag}",
                        f"no attribute {flag!r}.",
                        "set it to False (The Well's format asks for it).",
                    )
        self.grid = tuple(grid)
        return self._inspect_time(dims, found) and ok

    def _inspect_time(self, dims: Any, found: _Findings) -> bool:
        path = self.path
        if "time" not in dims or not hasattr(dims["time"], "shape"):
            found.add(
                "missing-dataset",
                path,
                "/dimensions/time",
                "no time axis.",
                "write the times of the steps as dataset dimensions/time (shape (steps,)).",
            )
            return False
        time = dims["time"]
        sample_varying = time.attrs.get("sample_varying", time.ndim == 2)
        if "sample_varying" not in time.attrs:
            found.add(
                "well-attribute",
                path,
                "/dimensions/time@sample_varying",
                "no attribute 'sample_varying'.",
                "set it (False unless each trajectory has its own times).",
            )
        elif not _is_bool(sample_varying):
            found.add(
                "bad-attribute",
                path,
                "/dimensions/time@sample_varying",
                f"sample_varying={sample_varying!r}; expected a boolean.",
                "write it as True or False.",
            )
            return False
        if "time_varying" not in time.attrs:
            found.add(
                "well-attribute",
                path,
                "/dimensions/time@time_varying",
                "no attribute 'time_varying' (The Well's current checker asks for it on the time axis).",
                "set it to True.",
            )
        expected_ndim = 2 if sample_varying else 1
        if time.ndim != expected_ndim or (sample_varying and time.shape[0] != self.num_trajectories):
            lead = "(trajectories, steps)" if sample_varying else "(steps,)"
            found.add(
                "shape",
                path,
                "/dimensions/time",
                f"shape {time.shape} with sample_varying={bool(sample_varying)}; expected {lead}.",
                "write (steps,), or (n_trajectories, steps) with sample_varying=True.",
            )
            return False
        if time.dtype.kind not in "fiu":
            found.add(
                "dtype",
                path,
                "/dimensions/time",
                f"dtype {time.dtype}; expected numbers.",
                "write the times as float32/float64.",
            )
            return False
        self.num_steps = int(time.shape[-1])
        if self.num_steps < 2:
            found.add(
                "too-few-steps",
                path,
                "/dimensions/time",
                f"{self.num_steps} time step(s); a next-frame model needs at least 2.",
                "store at least 2 steps per trajectory.",
            )
            return False
        times = np.atleast_2d(np.asarray(time[()], dtype=np.float64))
        steps = np.diff(times, axis=-1)
        if not np.isfinite(times).all() or (steps <= 0).any():
            row, col = np.argwhere(~np.isfinite(times[:, 1:]) | ~(steps > 0))[0]
            found.add(
                "time-axis",
                path,
                "/dimensions/time",
                f"times not finite and strictly increasing: step {col} -> {col + 1}"
                + (f" of trajectory {row}" if sample_varying else "")
                + f" goes {times[row, col]} -> {times[row, col + 1]}.",
                "store the steps in time order, each time once.",
            )
            return True  # the fields can still be checked against the number of steps
        self.time_step = float(steps[0].mean())
        if np.abs(steps - steps.mean(axis=-1, keepdims=True)).max() > 1e-3 * np.abs(steps).max():
            found.add(
                "time-step",
                path,
                "/dimensions/time",
                f"time steps range from {steps.min():g} to {steps.max():g}; pfm uses their mean "
                f"{self.time_step:g}.",
                "store frames at a constant interval (The Well's format assumes one).",
            )
        return True

    def _inspect_boundaries(self, f: Any, found: _Findings) -> None:
        path = self.path
        if "boundary_conditions" not in f:
            found.add(
                "well-attribute",
                path,
                "/boundary_conditions",
                "no group 'boundary_conditions'.",
                "add one group per boundary (`pfm data convert` writes them from the spec's boundary_conditions).",
            )
            return
        for name, group in f["boundary_conditions"].items():
            where = f"/boundary_conditions/{name}"
            bc_type = _text(group.attrs.get("bc_type", "unknown"))
            self.boundary_conditions[name] = bc_type
            if bc_type.lower() not in BC_TYPES:
                found.add(
                    "boundary-condition",
                    path,
                    f"{where}@bc_type",
                    f"bc_type={bc_type!r}; The Well names {BC_TYPES}.",
                    "set bc_type to periodic, wall or open.",
                )
            missing = [
                a
                for a in ("associated_dims", "associated_fields", "sample_varying", "time_varying")
                if a not in group.attrs
            ]
            if missing or "mask" not in group:
                found.add(
                    "boundary-condition",
                    path,
                    where,
                    f"lacks {missing + ([] if 'mask' in group else ['mask'])}.",
                    "add the attributes and the boolean mask over the associated axes (docs/data_format.md).",
                )
                continue
            dims = _texts(group.attrs["associated_dims"])
            unknown = [d for d in dims if d not in self.spatial_dims]
            lead = int(bool(group.attrs["sample_varying"])) + int(bool(group.attrs["time_varying"]))
            sizes = tuple(n for d, n in zip(self.spatial_dims, self.grid, strict=False) if d in dims)
            if unknown or tuple(group["mask"].shape[lead:]) != sizes:
                found.add(
                    "boundary-condition",
                    path,
                    f"{where}/mask",
                    f"associated_dims {dims} (spatial_dims {self.spatial_dims}) and mask shape "
                    f"{group['mask'].shape}; expected the mask over those axes, sizes {sizes}.",
                    "name spatial axes in associated_dims and give the mask their sizes.",
                )

    def _inspect_scalars(self, f: Any, found: _Findings) -> None:
        if "scalars" not in f:
            found.add(
                "well-attribute",
                self.path,
                "/scalars",
                "no group 'scalars'.",
                "add it, with field_names listing one dataset per scalar (may be empty).",
            )
        elif "field_names" not in f["scalars"].attrs:
            found.add(
                "well-attribute",
                self.path,
                "/scalars@field_names",
                "no attribute 'field_names'.",
                "set it to the list of scalar datasets in the group (may be empty).",
            )

    def _inspect_fields(self, f: Any, group_name: str, order: int, found: _Findings) -> None:
        path, group = self.path, f[group_name]
        if "field_names" not in group.attrs:
            found.add(
                "missing-attribute",
                path,
                f"/{group_name}@field_names",
                "no attribute 'field_names'.",
                "set it to the list of fields in the group ([] when none).",
            )
            return
        names = group.attrs["field_names"]
        if np.size(names) and not _is_text_list(names):
            found.add(
                "bad-attribute",
                path,
                f"/{group_name}@field_names",
                f"field_names={names!r}; expected a list of strings.",
                "write the field names as a list of strings.",
            )
            return
        names = _texts(names) if np.size(names) else []
        for extra in sorted(set(group) - set(names)):
            found.add(
                "unlisted-dataset",
                path,
                f"/{group_name}/{extra}",
                "not listed in field_names, so it is not read.",
                f"add {extra!r} to /{group_name}@field_names, or remove the dataset.",
            )
        for name in names:
            info = self._inspect_field(group, group_name, name, order, found)
            if info is not None:
                (self.fields if info.time_varying else self.constant_fields).append(info)

    def _inspect_field(
        self, group: Any, group_name: str, name: str, order: int, found: _Findings
    ) -> FieldInfo | None:
        path, where = self.path, f"/{group_name}/{name}"
        if name not in group or not hasattr(group[name], "shape"):
            found.add(
                "missing-dataset",
                path,
                where,
                f"field_names lists {name!r} but there is no such dataset.",
                f"write the dataset, or drop {name!r} from /{group_name}@field_names.",
            )
            return None
        ds = group[name]
        flags = {}
        for flag in ("sample_varying", "time_varying", "dim_varying"):
            value = ds.attrs.get(flag)
            if value is None:
                found.add(
                    "missing-attribute",
                    path,
                    f"{where}@{flag}",
                    f"no attribute {flag!r}; without it the axes of the dataset are ambiguous.",
                    f"set it ({'a list of one boolean per spatial axis' if flag == 'dim_varying' else 'a boolean'}).",
                )
                return None
            if flag == "dim_varying":
                values = np.atleast_1d(value)
                good = (
                    values.ndim == 1 and len(values) == self.num_spatial_dims and all(map(_is_bool, values))
                )
                value = tuple(bool(v) for v in values) if good else value
            else:
                good = _is_bool(value)
            if not good:
                found.add(
                    "bad-attribute",
                    path,
                    f"{where}@{flag}",
                    f"{flag}={value!r}; expected "
                    + (f"{self.num_spatial_dims} booleans." if flag == "dim_varying" else "a boolean."),
                    "write it with numpy/Python booleans, e.g. dim_varying = [True] * n_spatial_dims.",
                )
                return None
            flags[flag] = value
        info = FieldInfo(
            group_name,
            name,
            order,
            bool(flags["sample_varying"]),
            bool(flags["time_varying"]),
            flags["dim_varying"],
            channel_names(name, self.spatial_dims, order),
        )
        expected = self.stored_shape(info)
        if tuple(ds.shape) != expected:
            axes = (["trajectories"] if info.sample_varying else []) + (
                ["steps"] if info.time_varying else []
            )
            axes += [d for d, v in zip(self.spatial_dims, info.dim_varying, strict=True) if v]
            axes += ["components"] * order
            found.add(
                "shape",
                path,
                where,
                f"shape {tuple(ds.shape)}; its attributes and the file's axes imply {expected} "
                f"({', '.join(axes)}).",
                "write the array with that shape, or correct n_trajectories, the time axis, the coordinates or "
                f"the flags (a t{order} field has {order} trailing component axes of size n_spatial_dims).",
            )
            return None
        if ds.dtype.kind not in "fiub":  # real numbers; pfm reads them as float32
            found.add(
                "dtype",
                path,
                where,
                f"dtype {ds.dtype}; fields hold real numbers.",
                "store it as float32 (The Well's format); a complex field as two real fields.",
            )
            return None
        if ds.dtype != np.float32:
            found.add(
                "not-float32",
                path,
                where,
                f"stored as {ds.dtype}; pfm reads it as float32.",
                "store it as float32 (The Well's format; half the size of float64).",
            )
        return info

    # ----------------------------------------------------------------------------------------- reading
    def stored_shape(self, info: FieldInfo) -> tuple[int, ...]:
        """The shape a field's dataset has in this file, from its flags."""
        lead = ((self.num_trajectories,) if info.sample_varying else ()) + (
            (self.num_steps,) if info.time_varying else ()
        )
        spatial = tuple(n for n, v in zip(self.grid, info.dim_varying, strict=True) if v)
        return (*lead, *spatial, *([self.num_spatial_dims] * info.order))

    def _expand(
        self,
        data: np.ndarray,
        info: FieldInfo,
        num_lead: int,
        sides: tuple[int, ...] | None = None,
        num_channels: int | None = None,
    ) -> np.ndarray:
        """Broadcast ``(lead..., *stored spatial, *components)`` to the full grid (or a box of ``sides``),
        components flattened (``num_channels`` of them; default all of the field's)."""
        sides = self.grid if sides is None else sides
        num_channels = len(info.channels) if num_channels is None else num_channels
        shape = list(data.shape[:num_lead])
        for n, varying in zip(sides, info.dim_varying, strict=True):
            shape.append(n if varying else 1)
        data = data.reshape(*shape, num_channels)
        return np.broadcast_to(data, (*data.shape[:num_lead], *sides, num_channels))

    def read(
        self,
        f: Any,
        trajectory: int,
        steps: slice,
        region: tuple[slice, ...] | None = None,
        component: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """Time-varying channels of ``steps`` of one trajectory: ``(steps, *grid, channels)`` float32.

        ``f`` is this file opened with h5py; each field is one hyperslab read (only the window is read).
        ``region``: one ``slice(start, stop)`` per spatial axis, to read only that box (the grid's axes are
        then the box's sides); ``component``: ``(index in fields, channel of that field)`` to read one channel
        of one field only (Tadpole's single-channel crops).
        """
        region = region if region is not None else tuple(slice(0, n) for n in self.grid)
        sides = tuple(r.stop - r.start for r in region)
        chosen = self.fields if component is None else [self.fields[component[0]]]
        parts = []
        for info in chosen:
            ds = f[info.group][info.name]
            space = tuple(r for r, varying in zip(region, info.dim_varying, strict=True) if varying)
            pick: tuple[int, ...] = ()
            if component is not None:
                pick = tuple(
                    int(c) for c in np.unravel_index(component[1], (self.num_spatial_dims,) * info.order)
                )
            data = ds[((trajectory, steps) if info.sample_varying else (steps,)) + space + pick]
            num_channels = 1 if component is not None else len(info.channels)
            parts.append(self._expand(np.asarray(data, dtype=np.float32), info, 1, sides, num_channels))
        return np.concatenate(parts, axis=-1)

    def chunks(
        self, f: Any, info: FieldInfo, max_bytes: int = 256 << 20
    ) -> Iterator[tuple[int | None, int, np.ndarray]]:
        """A field's stored values in pieces of at most about ``max_bytes``: ``(trajectory, first step, array)``.

        Pieces follow each trajectory's steps in order (``trajectory`` None for a field shared by all
        trajectories; first step 0 for a constant field); arrays are ``([steps,] *stored spatial, *components)``.
        """
        ds = f[info.group][info.name]
        trajectories = range(self.num_trajectories) if info.sample_varying else [None]
        lead = (0,) if info.sample_varying else ()
        if not info.time_varying:
            for t in trajectories:
                yield t, 0, np.asarray(ds[(t,) if t is not None else ()])
            return
        frame = math.prod(ds.shape[len(lead) + 1 :]) * ds.dtype.itemsize
        per = max(1, max_bytes // max(frame, 1))
        for t in trajectories:
            for s in range(0, self.num_steps, per):
                key = (slice(s, s + per),) if t is None else (t, slice(s, s + per))
                yield t, s, np.asarray(ds[key])


def split_files(folder: Path) -> list[Path]:
    """The HDF5 files of one split folder, sorted."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in _SUFFIXES)
