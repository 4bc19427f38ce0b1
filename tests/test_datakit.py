"""`pfm data convert|check|stats`: small 2D and 3D datasets made from plain arrays, checked, their stats
streamed, read back by the Well reader; every kind of broken file `check` refuses; every writer in
tests/well_files.py passes `check`."""

from __future__ import annotations

import inspect
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import well_files
import yaml
from well_files import make_well_dataset, write_well_file

from pfm.cli import main
from pfm.data import WellDataModule
from pfm.data.well_dataset import WellDataset
from pfm.wellfmt import PROBLEM_KINDS, WARNING_KINDS, WellFile, check_dataset
from pfm.wellfmt.stats import compute_stats


# ------------------------------------------------------------------------------------------------ helpers
def solver_output(
    folder: Path, grid: tuple[int, ...], *, num_traj: int = 5, num_steps: int = 6, seed: int = 0
):
    """Arrays as a user's solver might save them, and the convert spec naming them; returns (spec, arrays)."""
    rng = np.random.default_rng(seed)
    d = len(grid)
    arrays = {
        "pressure": rng.normal(1.0, 2.0, (num_traj, num_steps, *grid)),  # float64, as solvers often write
        "velocity": rng.normal(0.0, 0.5, (num_traj, num_steps, *grid, d)).astype(np.float32),
        "stress": rng.normal(0.0, 1.0, (num_traj, num_steps, *grid, d, d)).astype(np.float32),
        "obstacle": (rng.random(grid) > 0.8).astype(np.float32),
    }
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "pressure.npy", arrays["pressure"])
    np.savez(folder / "run.npz", u=arrays["velocity"], stress=arrays["stress"])
    np.save(folder / "obstacle.npy", arrays["obstacle"])
    axes = ["x", "y", "z"][:d]
    spec = {
        "dataset_name": f"toy{d}d",
        "spatial_dims": axes,
        "dt": 0.5,
        "coordinates": {"x": [0.0, 2.0]},
        "boundary_conditions": {"x": "periodic", "y": ["wall", "open"]},
        "simulation_parameters": {"Re": 100.0},
        "fields": {
            "pressure": "pressure.npy",
            "velocity": {"file": "run.npz", "key": "u", "order": 1},
            "stress": {"file": "run.npz", "order": 2},
            "obstacle": {"file": "obstacle.npy", "time_varying": False},
        },
        "splits": {"train": [0, 1, 3], "valid": [2], "test": [4]},
    }
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder / "spec.yaml", arrays


def run(capsys, *argv: str) -> tuple[int, str]:
    """`pfm ARGV` in this process: its exit status and its stdout + stderr."""
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out + out.err


def reference_stats(arrays: dict[str, np.ndarray], train: list[int]) -> dict[str, dict[str, np.ndarray]]:
    """mean/std/rms and their time-difference versions, all at once in float64 (components last)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, order in (("pressure", 0), ("velocity", 1), ("stress", 2)):
        x = np.asarray(arrays[name], dtype=np.float64)[train]
        for suffix, values in (("", x), ("_delta", np.diff(x, axis=1))):
            flat = values.reshape(-1, *values.shape[values.ndim - order :]) if order else values.reshape(-1)
            mean, std = flat.mean(axis=0), flat.std(axis=0)
            out.setdefault("mean" + suffix, {})[name] = mean
            out.setdefault("std" + suffix, {})[name] = std
            out.setdefault("rms" + suffix, {})[name] = np.sqrt((flat**2).mean(axis=0))
    return out


# ------------------------------------------------------------------------------ convert -> check -> stats
@pytest.mark.parametrize("grid", [(8, 6), (6, 4, 4)], ids=["2d", "3d"])
def test_convert_check_stats_and_read_back(tmp_path: Path, capsys, grid: tuple[int, ...]) -> None:
    spec, arrays = solver_output(tmp_path / "raw", grid)
    out = tmp_path / "dataset"
    rc, text = run(capsys, "data", "convert", str(spec), str(out), "--chunk-mb", "1e-9")  # one frame a piece
    assert rc == 0, text
    assert "trajectories per split {'train': 3, 'valid': 1, 'test': 1}" in text
    rc, text = run(capsys, "data", "check", str(out))
    assert rc == 0 and text.startswith("OK: ") and f"{len(grid)}D" in text, text
    assert "problem" not in text and "warning" not in text, text

    # stats.yaml (written by convert, rewritten by `pfm data stats` in pieces of one step) = all at once in float64
    written = yaml.safe_load((out / "stats.yaml").read_text())
    rc, text = run(capsys, "data", "stats", str(out))
    assert rc == 0 and "mean_delta" in text, text
    streamed = yaml.safe_load((out / "stats.yaml").read_text())
    want = reference_stats(arrays, [0, 1, 3])
    assert set(streamed) == set(want) == {"mean", "std", "rms", "mean_delta", "std_delta", "rms_delta"}
    for key, table in want.items():
        for name, value in table.items():
            np.testing.assert_allclose(np.asarray(streamed[key][name]), value, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(
                np.asarray(streamed[key][name]), np.asarray(written[key][name]), rtol=1e-12
            )
    # the constant field has mean/std/rms and no time-difference stats, as in The Well
    assert "obstacle" in streamed["mean"] and "obstacle" not in streamed["mean_delta"]

    # read back by pfm's reader: raw values of train trajectory 1 (source index 1), steps 2..4, channels in order
    ds = WellDataset(out / "data" / "train", length=3, normalization="none")
    d = len(grid)
    assert ds.channels[:3] == ["pressure", "vel_x", "vel_y"] and len(ds.channels) == 1 + d + d * d
    item = next(i for i, (_, traj, start) in enumerate(ds.index) if (traj, start) == (1, 2))
    x = ds[item]["input"].numpy()
    expected = np.concatenate(
        [
            arrays["pressure"][1, 2:5, ..., None],
            arrays["velocity"][1, 2:5],
            arrays["stress"][1, 2:5].reshape(3, *grid, d * d),
        ],
        axis=-1,
    ).astype(np.float32)
    np.testing.assert_array_equal(x, expected)
    assert float(ds[item]["dt"]) == 0.5
    dm = WellDataModule(str(out), num_frames=2, batch_size=2, num_workers=0)
    assert dm.grid == grid and dm.num_spatial_dims == d
    bcs = {"x_periodic": "periodic", "y_open_high": "open", "y_wall_low": "wall", "z_periodic": "periodic"}
    assert dm.boundary_conditions == {k: v for k, v in bcs.items() if k[0] in "xyz"[:d]}
    batch = next(iter(dm.val_dataloader()))
    assert batch["input"].shape[-1] == 1 + d + d * d and torch.isfinite(batch["input"]).all()


def test_stats_streamed_over_files_equals_all_at_once(tmp_path: Path) -> None:
    """Three train files, pieces of one step: the merged moments equal one float64 pass over everything."""
    raws = [
        write_well_file(
            tmp_path / "data" / "train" / f"part{i}.hdf5", num_traj=i + 1, num_steps=5 + i, seed=i
        )
        for i in range(3)
    ]
    streamed = compute_stats(tmp_path, max_bytes=1)
    whole = compute_stats(tmp_path, max_bytes=1 << 30)
    for name, order in (("pressure", 0), ("velocity", 1), ("stress", 2)):
        parts = [np.asarray(r[name], dtype=np.float64) for r in raws]
        values = np.concatenate([p.reshape(-1, *p.shape[p.ndim - order :]) for p in parts])
        deltas = np.concatenate([np.diff(p, axis=1).reshape(-1, *p.shape[p.ndim - order :]) for p in parts])
        for key, ref in (
            ("mean", values.mean(0)),
            ("std", values.std(0)),
            ("rms", np.sqrt((values**2).mean(0))),
            ("mean_delta", deltas.mean(0)),
            ("std_delta", deltas.std(0)),
            ("rms_delta", np.sqrt((deltas**2).mean(0))),
        ):
            np.testing.assert_allclose(np.asarray(streamed[key][name]), ref, rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(
                np.asarray(streamed[key][name]), np.asarray(whole[key][name]), rtol=1e-12
            )


def test_stats_refuses_nan_and_writes_atomically(tmp_path: Path, capsys) -> None:
    make_well_dataset(tmp_path)
    before = (tmp_path / "stats.yaml").read_text()
    with h5py.File(tmp_path / "data" / "train" / "toy_flow_train.hdf5", "r+") as f:
        f["t0_fields/pressure"][1, 4, 0, 0] = np.nan
    rc, text = run(capsys, "data", "stats", str(tmp_path))
    assert rc == 1 and "/t0_fields/pressure holds NaN/Inf (trajectory 1" in text, text
    assert (tmp_path / "stats.yaml").read_text() == before  # untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ------------------------------------------------------------------------------------------ convert errors
def _spec(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda s, a, f: np.save(f / "pressure.npy", a["pressure"][:, :, :7]),
            r"disagree on the grid: pressure \(7, 6\), velocity \(8, 6\), stress \(8, 6\), obstacle \(8, 6\)",
        ),
        (
            lambda s, a, f: np.savez(f / "run.npz", u=a["velocity"][..., :1], stress=a["stress"]),
            r"fields.velocity .* has shape \(5, 6, 8, 6, 1\); a t1 field in 2D is \(trajectories, steps, 2 grid axes, 1 component axes of size 2\)",
        ),
        (
            lambda s, a, f: np.save(f / "pressure.npy", a["pressure"][0]),
            r"fields.pressure .* has shape \(6, 8, 6\); a t0 field in 2D is \(trajectories, steps, 2 grid axes\)",
        ),
        (
            lambda s, a, f: s.update(splits={"train": [0, 1], "valid": [1]}),
            "trajectory 1 is in splits.train and",
        ),
        (
            lambda s, a, f: s.update(splits={"train": [0, 9], "valid": [1]}),
            "names trajectory 9; the arrays hold 5",
        ),
        (lambda s, a, f: s.update(dt=0), r"dt=0; expected a positive number"),
        (lambda s, a, f: s.update(boundary_conditions={"x": "reflective"}), "expected one of .*periodic"),
        (lambda s, a, f: s.update(fileds={}), r"unknown keys \['fileds'\]"),
        (
            lambda s, a, f: s["fields"]["stress"].update(key="sigma"),
            r"has no array 'sigma'; it holds \['u', 'stress'\]",
        ),
    ],
    ids=["grid", "components", "no-trajectory-axis", "overlap", "range", "dt", "bc", "typo", "npz-key"],
)
def test_convert_errors_name_the_array_and_the_fix(
    tmp_path: Path, capsys, edit: Callable, message: str
) -> None:
    spec_path, arrays = solver_output(tmp_path / "raw", (8, 6))
    spec = _spec(spec_path)
    edit(spec, arrays, tmp_path / "raw")
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    rc, text = run(capsys, "data", "convert", str(spec_path), str(tmp_path / "out"))
    assert rc == 1
    assert re.search(message, text), text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # nothing written


def test_convert_leaves_nothing_when_it_fails_midway(tmp_path: Path, capsys) -> None:
    """A NaN in the test split's trajectory is found after train and valid were written: no dataset remains."""
    spec_path, arrays = solver_output(tmp_path / "raw", (8, 6))
    arrays["pressure"][4, 3, 2, 1] = np.inf
    np.save(tmp_path / "raw" / "pressure.npy", arrays["pressure"])
    rc, text = run(capsys, "data", "convert", str(spec_path), str(tmp_path / "out"))
    assert rc == 1 and "fields.pressure" in text and "trajectory 4, step 3, holds NaN/Inf" in text, text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]
    (tmp_path / "out").mkdir()
    rc, text = run(capsys, "data", "convert", str(spec_path), str(tmp_path / "out"))
    assert rc == 1 and "already exists" in text


def test_convert_fraction_splits_and_time_file(tmp_path: Path, capsys) -> None:
    spec_path, _ = solver_output(tmp_path / "raw", (4, 4), num_traj=10)
    spec = _spec(spec_path)
    np.save(tmp_path / "raw" / "t.npy", np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5]))
    spec.pop("dt")
    spec.pop("splits")
    spec["time"] = "t.npy"
    spec_path.write_text(yaml.safe_dump(spec))
    rc, text = run(capsys, "data", "convert", str(spec_path), str(tmp_path / "out"))
    assert rc == 0 and "{'train': 8, 'valid': 1, 'test': 1}" in text, text
    assert WellFile(tmp_path / "out" / "data" / "train" / "toy2d_train.hdf5").time_step == pytest.approx(0.1)


# ----------------------------------------------------------------------------- what The Well's format allows
def test_check_accepts_what_the_wells_format_allows(tmp_path: Path, capsys) -> None:
    """Per-trajectory times, a field shared by all trajectories, a field constant along y (broadcast on read),
    an integer field: The Well's format checker accepts these, so check does and the reader reads them."""
    make_well_dataset(tmp_path)
    for split in ("train", "valid", "test"):
        with h5py.File(tmp_path / "data" / split / f"toy_flow_{split}.hdf5", "r+") as f:
            times = f["dimensions/time"][()]
            del f["dimensions/time"]
            t = f["dimensions"].create_dataset("time", data=np.stack([times, times + 10.0]))
            t.attrs["sample_varying"] = True
            t.attrs["time_varying"] = True
            group = f["t0_fields"]
            group.attrs["field_names"] = [*group.attrs["field_names"], "forcing", "inflow", "phase"]
            forcing = group.create_dataset(
                "forcing", data=np.arange(9 * 48, dtype=np.float32).reshape(9, 8, 6)
            )
            inflow = group.create_dataset(
                "inflow", data=np.arange(2 * 9 * 8, dtype=np.float32).reshape(2, 9, 8)
            )
            phase = group.create_dataset("phase", data=np.ones((2, 9, 8, 6), dtype=np.int8))
            for ds, sample, dims in (
                (forcing, False, [True, True]),
                (inflow, True, [True, False]),
                (phase, True, [True, True]),
            ):
                ds.attrs["sample_varying"], ds.attrs["time_varying"], ds.attrs["dim_varying"] = (
                    sample,
                    True,
                    dims,
                )
    rc, text = run(capsys, "data", "check", str(tmp_path))
    assert rc == 1 and "stats.yaml: mean/forcing: no mean of field 'forcing'" in text, text
    rc, text = run(capsys, "data", "stats", str(tmp_path))
    assert rc == 0, text
    rc, text = run(capsys, "data", "check", str(tmp_path))
    assert rc == 0 and "'forcing', 'inflow', 'phase'" in text and "[not-float32]" in text, text
    ds = WellDataset(tmp_path / "data" / "train", length=2, normalization="none")
    x = ds[ds.index.index((0, 1, 3))]["input"]  # trajectory 1, steps 3 and 4
    c = ds.channels.index("inflow")
    np.testing.assert_array_equal(
        x[..., c].numpy(),
        np.broadcast_to((np.arange(2 * 9 * 8).reshape(2, 9, 8)[1, 3:5, :, None]), (2, 8, 6)),
    )
    np.testing.assert_array_equal(
        x[..., ds.channels.index("forcing")].numpy(), np.arange(9 * 48).reshape(9, 8, 6)[3:5]
    )


# ------------------------------------------------------------------- every fixture in The Well's layout passes
def _writers() -> list[str]:
    return [
        n for n, f in vars(well_files).items() if n.startswith(("write_", "make_")) and inspect.isfunction(f)
    ]


@pytest.mark.parametrize("grid", [(8, 6), (6, 4, 4), (10,)], ids=["2d", "3d", "1d"])
@pytest.mark.parametrize("writer", _writers())
def test_every_well_files_writer_passes_check(
    tmp_path: Path, capsys, writer: str, grid: tuple[int, ...]
) -> None:
    """Loops over tests/well_files.py's writers (a new writer is checked without editing this test)."""
    target = tmp_path / "data" / "train" / "one.hdf5" if writer.startswith("write_") else tmp_path
    write = getattr(well_files, writer)
    write(target, **({"grid": grid} if "grid" in inspect.signature(write).parameters else {}))
    rc, text = run(capsys, "data", "check", str(target))
    assert rc == 0 and text.splitlines()[-1].startswith("OK: "), text
    assert "warning" not in text, text


# ------------------------------------------------------------------------------- what check refuses, by kind
TRAIN = Path("data/train/toy_flow_train.hdf5")


def _edit(root: Path, change: Callable, file: Path = TRAIN) -> None:
    with h5py.File(root / file, "r+") as f:
        change(f)


def _replace(f: h5py.File, path: str, data: np.ndarray) -> None:
    attrs = dict(f[path].attrs)
    del f[path]
    f[path] = data
    f[path].attrs.update(attrs)


def _garbage(root: Path) -> None:
    (root / "data" / "valid" / "notes.hdf5").write_text("not an HDF5 file")


def _empty_split(root: Path) -> None:
    for p in (root / "data" / "valid").iterdir():
        p.unlink()


def _too_few_steps(root: Path) -> None:
    write_well_file(root / TRAIN, num_steps=1)


def _other_grid(root: Path) -> None:
    write_well_file(root / "data" / "valid" / "toy_flow_valid.hdf5", grid=(8, 8))


def _bad_stats(root: Path) -> None:
    stats = yaml.safe_load((root / "stats.yaml").read_text())
    stats["mean"]["velocity"] = [0.0, 0.0, 0.0]
    (root / "stats.yaml").write_text(yaml.safe_dump(stats))


# kind -> (how to break a good dataset, the object the finding must name)
BREAKERS: dict[str, tuple[Callable[[Path], None], str]] = {
    "not-a-dataset": (lambda r: shutil.rmtree(r / "data"), "data/"),
    "missing-split": (lambda r: shutil.rmtree(r / "data" / "valid"), "data/valid/"),
    "empty-split": (_empty_split, "data/valid/"),
    "not-hdf5": (_garbage, "notes.hdf5: /"),
    "missing-group": (lambda r: _edit(r, lambda f: f.__delitem__("t1_fields")), "/t1_fields"),
    "missing-attribute": (
        lambda r: _edit(r, lambda f: f["t1_fields/velocity"].attrs.__delitem__("dim_varying")),
        "/t1_fields/velocity@dim_varying",
    ),
    "bad-attribute": (
        lambda r: _edit(r, lambda f: f["dimensions"].attrs.__setitem__("spatial_dims", ["x"])),
        "/dimensions@spatial_dims",
    ),
    "missing-dataset": (lambda r: _edit(r, lambda f: f.__delitem__("dimensions/y")), "/dimensions/y"),
    "shape": (
        lambda r: _edit(r, lambda f: _replace(f, "t0_fields/pressure", np.zeros((2, 9, 8, 5), np.float32))),
        "/t0_fields/pressure",
    ),
    "dtype": (
        lambda r: _edit(r, lambda f: _replace(f, "t0_fields/pressure", np.zeros((2, 9, 8, 6), np.complex64))),
        "/t0_fields/pressure",
    ),
    "time-axis": (
        lambda r: _edit(r, lambda f: f["dimensions/time"].__setitem__(5, 0.0)),
        "/dimensions/time",
    ),
    "too-few-steps": (_too_few_steps, "/dimensions/time"),
    "non-finite": (
        lambda r: _edit(r, lambda f: f["t2_fields/stress"].__setitem__((1, 7, 2, 3, 0, 1), np.nan)),
        "/t2_fields/stress",
    ),
    "inconsistent-files": (_other_grid, "toy_flow_valid.hdf5: /"),
    "missing-stats": (lambda r: (r / "stats.yaml").unlink(), "stats.yaml"),
    "bad-stats": (_bad_stats, "mean/velocity"),
}


def test_every_refused_kind_has_a_test_and_every_kind_is_documented() -> None:
    assert set(BREAKERS) == set(PROBLEM_KINDS) and len(PROBLEM_KINDS) >= 10
    assert not set(PROBLEM_KINDS) & set(WARNING_KINDS)
    doc = (Path(__file__).resolve().parents[1] / "docs" / "own_data.md").read_text()
    assert [k for k in [*PROBLEM_KINDS, *WARNING_KINDS] if f"`{k}`" not in doc] == []


@pytest.mark.parametrize("kind", list(BREAKERS))
def test_check_refuses_a_broken_dataset_and_names_the_fix(tmp_path: Path, capsys, kind: str) -> None:
    make_well_dataset(tmp_path)
    assert not [f for f in check_dataset(tmp_path) if f.is_problem]
    breaker, obj = BREAKERS[kind]
    breaker(tmp_path)
    rc, text = run(capsys, "data", "check", str(tmp_path))
    assert rc == 1, text
    lines = [line for line in text.splitlines() if line.startswith("problem:") and line.endswith(f"[{kind}]")]
    assert lines, text
    assert any(obj in line and " Fix: " in line for line in lines), lines
    assert f"{kind} x" in text.splitlines()[-1]


def test_check_details(tmp_path: Path, capsys) -> None:
    """Where a NaN is; warnings are reported and pass unless --strict; the reader refuses what check refuses."""
    make_well_dataset(tmp_path)
    BREAKERS["non-finite"][0](tmp_path)
    rc, text = run(capsys, "data", "check", str(tmp_path))
    assert "the first at trajectory 1, step 7" in text, text
    rc, text = run(capsys, "data", "check", str(tmp_path), "--no-values")
    assert rc == 0, text
    shutil.rmtree(tmp_path / "data" / "test")
    (tmp_path / "data" / "train" / "README.txt").write_text("notes")
    rc, text = run(capsys, "data", "check", str(tmp_path), "--no-values")
    assert rc == 0 and "[missing-test]" in text and "[stray-file]" in text and "2 warning(s)" in text, text
    rc, text = run(capsys, "data", "check", str(tmp_path), "--no-values", "--strict")
    assert rc == 1, text
    BREAKERS["missing-attribute"][0](tmp_path)
    with pytest.raises(
        ValueError, match=r"velocity@dim_varying: no attribute 'dim_varying'.*\[missing-attribute\]"
    ):
        WellDataModule(str(tmp_path))


def test_the_docs_spec_converts_as_written(tmp_path: Path, capsys) -> None:
    """docs/own_data.md's spec, with arrays of the shapes it names, converts and passes check."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "own_data.md").read_text()
    spec = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "spec.yaml").write_text(spec)
    rng = np.random.default_rng(0)
    shape = (8, 3, 4, 5)  # trajectories (the spec's splits name 0..7), steps, x, y
    np.save(tmp_path / "temperature.npy", rng.normal(size=shape).astype(np.float32))
    np.savez(tmp_path / "flow.npz", velocity=rng.normal(size=(*shape, 2)).astype(np.float32))
    np.save(tmp_path / "stress.npy", rng.normal(size=(*shape, 2, 2)).astype(np.float32))
    np.save(tmp_path / "mask.npy", (rng.random(shape[2:]) > 0.5).astype(np.float32))
    rc, text = run(capsys, "data", "convert", str(tmp_path / "spec.yaml"), str(tmp_path / "blobs"))
    assert rc == 0, text
    rc, text = run(capsys, "data", "check", str(tmp_path / "blobs"))
    assert rc == 0 and "warning" not in text, text
    layout = WellFile(tmp_path / "blobs" / "data" / "train" / "blobs_train.hdf5")
    assert layout.boundary_conditions == {
        "x_periodic": "periodic",
        "y_open_high": "open",
        "y_wall_low": "wall",
    }
    assert [f.name for f in layout.constant_fields] == ["obstacle"] and layout.num_trajectories == 6
