"""Test helper: small datasets in The Well's exact layout (HDF5 files under data/{train,valid,test}, stats.yaml)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import yaml

from pfm.wellfmt import check_dataset


def write_well_file(
    path: Path, *, name: str = "toy_flow", num_traj: int = 2, num_steps: int = 9, grid=(8, 6), seed=0
):
    """A file in The Well's layout (docs/data_format.md): t0 pressure, t1 velocity, t2 stress, constant t0 mask."""
    rng = np.random.default_rng(seed)
    d = len(grid)
    axes = ["x", "y", "z"][:d]
    data = {
        "pressure": rng.normal(2.0, 3.0, (num_traj, num_steps, *grid)).astype(np.float32),
        "velocity": rng.normal(-1.0, 0.5, (num_traj, num_steps, *grid, d)).astype(np.float32),
        "stress": rng.normal(0.0, 2.0, (num_traj, num_steps, *grid, d, d)).astype(np.float32),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs["dataset_name"] = name
        f.attrs["grid_type"] = "cartesian"
        f.attrs["n_spatial_dims"] = d
        f.attrs["n_trajectories"] = num_traj
        f.attrs["simulation_parameters"] = ["Re"]
        f.attrs["Re"] = 100.0
        dims = f.create_group("dimensions")
        dims.attrs["spatial_dims"] = axes
        t = dims.create_dataset("time", data=np.arange(num_steps, dtype=np.float32) * 0.25)
        t.attrs["sample_varying"] = False
        t.attrs["time_varying"] = True
        for axis, n in zip(axes, grid, strict=True):
            c = dims.create_dataset(axis, data=np.linspace(0, 1, n, dtype=np.float32))
            c.attrs["sample_varying"] = False
            c.attrs["time_varying"] = False
        bcs = f.create_group("boundary_conditions")
        for axis, n in zip(axes, grid, strict=True):
            bc = bcs.create_group(f"{axis}_periodic")
            bc.attrs["associated_dims"] = [axis]
            bc.attrs["associated_fields"] = []
            bc.attrs["bc_type"] = "periodic"
            bc.attrs["sample_varying"] = False
            bc.attrs["time_varying"] = False
            mask = np.zeros(n, dtype=bool)
            mask[[0, -1]] = True
            bc.create_dataset("mask", data=mask)
            bc.create_dataset("values", data=np.zeros(2, dtype=np.float32))
        scalars = f.create_group("scalars")
        scalars.attrs["field_names"] = ["Re"]
        re = scalars.create_dataset("Re", data=np.array(100.0, dtype=np.float32))
        re.attrs["sample_varying"] = False
        re.attrs["time_varying"] = False
        for order, group_name, fields in (
            (0, "t0_fields", ["pressure", "obstacle"]),
            (1, "t1_fields", ["velocity"]),
            (2, "t2_fields", ["stress"]),
        ):
            group = f.create_group(group_name)
            group.attrs["field_names"] = fields
            for field in fields:
                if field == "obstacle":  # constant in time and over trajectories: not a dynamic field
                    ds = group.create_dataset(field, data=np.ones(grid, dtype=np.float32))
                    ds.attrs["sample_varying"] = False
                    ds.attrs["time_varying"] = False
                else:
                    ds = group.create_dataset(field, data=data[field], chunks=(1, 1, *grid, *([d] * order)))
                    ds.attrs["sample_varying"] = True
                    ds.attrs["time_varying"] = True
                ds.attrs["dim_varying"] = [True] * d
                if order == 2:
                    ds.attrs["symmetric"] = False
                    ds.attrs["antisymmetric"] = False
    return data


def make_well_dataset(root: Path, *, name: str = "toy_flow", grid=(8, 6), num_steps: int = 9) -> dict:
    raw = {
        split: write_well_file(
            root / "data" / split / f"{name}_{split}.hdf5", name=name, grid=grid, num_steps=num_steps, seed=i
        )
        for i, split in enumerate(("train", "valid", "test"))
    }
    d = len(grid)
    stats = {
        "mean": {"pressure": 2.0, "velocity": [-1.0] * d, "stress": [[0.0] * d] * d, "obstacle": 1.0},
        "std": {"pressure": 3.0, "velocity": [0.5] * d, "stress": [[2.0] * d] * d, "obstacle": 0.0},
        "rms": {"pressure": 3.6, "velocity": [1.1] * d, "stress": [[2.0] * d] * d, "obstacle": 1.0},
    }
    (root / "stats.yaml").write_text(yaml.safe_dump(stats))
    # every dataset a test writes passes `pfm data check` (tests that break one do so afterwards)
    problems = [str(p) for p in check_dataset(root) if p.is_problem]
    assert not problems, "\n".join(problems)
    return raw
