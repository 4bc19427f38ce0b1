"""GPhyT data: named fields per PDE family, online field windows with random strides, The Well's HDF5 layout,
and the mixing DataModule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import family_config, online_gray_scott, small_gray_scott
from well_files import make_well_dataset

from datagen.fields import field_names
from datagen.pdes import get_pde, known_pdes
from pfm.data import MixedFieldDataModule, OnlineFieldDataModule, WellDataModule
from pfm.data.fields import remap_fields


# ----------------------------------------------------------------------------------------------- field names
@pytest.mark.parametrize("name", known_pdes())
def test_every_family_names_each_channel_once(name: str) -> None:
    pde = get_pde(name)
    for d in pde.supported_dims:
        names = field_names(name, d)
        assert len(names) == pde.num_channels(d) == len(set(names))
        if pde.is_vector and name != "burgers_single_channel":
            assert names[0].endswith("_x")


def test_one_name_for_one_quantity() -> None:
    assert field_names("navier_stokes_velocity", 3) == ("vel_x", "vel_y", "vel_z")
    assert field_names("kolmogorov_flow_velocity", 2) == field_names("burgers", 2) == ("vel_x", "vel_y")
    assert field_names("navier_stokes_vorticity", 2) == field_names("kolmogorov_flow_vorticity", 2)
    assert field_names("gray_scott", 2) == ("species_u", "species_v")
    # a family without a physical name keeps its own name, so it never collides with another family
    assert field_names("allen_cahn", 2) == ("allen_cahn",)


# ------------------------------------------------------------------------------------------- online windows
def test_online_windows_name_fields_and_mask_absent_ones() -> None:
    dm = OnlineFieldDataModule(
        {
            "v": family_config("navier_stokes_vorticity"),
            "g": small_gray_scott(),
            "u": family_config("navier_stokes_velocity"),
        },
        num_spatial_dims=2,
        n=32,
        num_frames=3,
        num_future=1,
        num_val_future=2,
        max_stride=2,
        batch_size=8,
        num_trajectories=2,
        num_val_batches=1,
        val_burn_in_steps=1,
    )
    assert dm.spec == {
        "fields": ("vorticity", "species_u", "species_v", "vel_x", "vel_y"),
        "num_spatial_dims": 2,
        "grid": (32, 32),
        "num_frames": 3,
    }
    dm.setup()
    batch = dm.next_batch()
    assert batch["input"].shape == (8, 4, 32, 32, 5)
    expected = {0: [0], 1: [1, 2], 2: [3, 4]}
    for i, source in enumerate(batch["source"].tolist()):
        present = torch.nonzero(batch["field_mask"][i]).flatten().tolist()
        assert present == expected[source]
        absent = [c for c in range(5) if c not in present]
        assert batch["input"][i, ..., absent].abs().max() == 0
        assert batch["input"][i, ..., present].abs().amax(dim=(0, 1, 2)).min() > 0
    assert set(batch["stride"].tolist()) <= {1, 2}
    val = next(iter(dm.val_dataloader()))
    assert val["input"].shape == (8, 5, 32, 32, 5)
    assert (val["stride"] == 1).all()


def test_online_frames_are_stride_solver_frames_apart() -> None:
    # Constant-coefficient diffusion commutes with rolls, flips and axis permutations, so even augmented
    # windows must satisfy frame[j + 1] = solver^(stride * substeps)(frame[j]).
    family = family_config("diffusion", coefficients={"diffusivity": 0.01}, dt=0.01, substeps=2)
    family.pop("log_uniform", None)
    dm = OnlineFieldDataModule(
        {"d": family},
        num_spatial_dims=2,
        n=16,
        num_frames=2,
        min_stride=1,
        max_stride=3,
        batch_size=6,
        num_trajectories=2,
        seed=3,
    )
    dm.setup()
    batch = dm.next_batch()
    strides = batch["stride"].tolist()
    assert len(set(strides)) > 1, f"strides {strides} should vary per sample"
    stepper = dm.pools[0].families[0].stepper
    for i, stride in enumerate(strides):
        frames = batch["input"][i].movedim(-1, 1)  # (T, C, H, W)
        for j in range(frames.shape[0] - 1):
            stepped = stepper(frames[j : j + 1], stride * 2)[0]
            torch.testing.assert_close(stepped, frames[j + 1], rtol=1e-4, atol=1e-5)
        assert batch["dt"][i].item() == pytest.approx(0.01 * 2 * stride)


def test_online_3d_velocity_windows() -> None:
    dm = OnlineFieldDataModule(
        {"u": family_config("navier_stokes_velocity", coefficients={"diffusivity": [0.02, 0.03]})},
        num_spatial_dims=3,
        n=16,
        num_frames=2,
        batch_size=2,
        num_trajectories=1,
    )
    dm.setup()
    batch = dm.next_batch()
    assert dm.spec["fields"] == ("vel_x", "vel_y", "vel_z")
    assert batch["input"].shape == (2, 3, 16, 16, 16, 3)
    assert batch["field_mask"].all()


def test_bad_strides_are_named() -> None:
    with pytest.raises(ValueError, match="min_stride=3"):
        OnlineFieldDataModule(
            {"d": family_config("diffusion")}, num_spatial_dims=2, n=16, min_stride=3, max_stride=2
        )


# ------------------------------------------------------------------------------------------------- The Well
def test_well_reads_the_layout_with_stats_normalisation(tmp_path: Path) -> None:
    raw = make_well_dataset(tmp_path)
    dm = WellDataModule(
        str(tmp_path), num_frames=2, num_future=1, num_val_future=3, max_stride=3, batch_size=2
    )
    assert dm.spec == {
        "fields": ("pressure", "vel_x", "vel_y", "stress_xx", "stress_xy", "stress_yx", "stress_yy"),
        "num_spatial_dims": 2,
        "grid": (8, 6),
        "num_frames": 2,
    }
    assert dm.pde_names == ["toy_flow"]
    assert dm.boundary_conditions == {"x_periodic": "periodic", "y_periodic": "periodic"}
    ds = dm.train_set
    seen_strides = set()
    for item in range(len(ds)):
        sample = ds[item]
        _, traj, start = ds.index[item]
        stride = int(sample["stride"])
        seen_strides.add(stride)
        steps = slice(start, start + 2 * stride + 1, stride)
        expected = np.concatenate(
            [
                (raw["train"]["pressure"][traj, steps, ..., None] - 2.0) / 3.0,
                (raw["train"]["velocity"][traj, steps] + 1.0) / 0.5,
                raw["train"]["stress"][traj, steps].reshape(3, 8, 6, 4) / 2.0,
            ],
            axis=-1,
        )
        torch.testing.assert_close(sample["input"], torch.from_numpy(expected))
        assert float(sample["dt"]) == pytest.approx(0.25 * stride)
    assert seen_strides == {1, 2, 3}
    # one handle per file and process, kept open between reads
    assert len(ds._files) == 1 and ds._files[0].id.valid
    # validation: the other split, normalised with the same stats.yaml statistics
    val = next(iter(dm.val_dataloader()))
    assert val["input"].shape == (2, 5, 8, 6, 7)
    first = raw["valid"]["pressure"][0, 0:5]
    torch.testing.assert_close(val["input"][0, ..., 0], torch.from_numpy((first - 2.0) / 3.0))


def test_well_sample_normalisation_and_workers(tmp_path: Path) -> None:
    make_well_dataset(tmp_path)
    dm = WellDataModule(str(tmp_path), num_frames=3, normalization="sample", batch_size=4, num_workers=2)
    batch = next(iter(dm.train_dataloader()))
    context = batch["input"][:, :3]
    torch.testing.assert_close(context.mean(dim=(1, 2, 3)), torch.zeros(4, 7), atol=1e-4, rtol=0)
    assert batch["input"].shape == (4, 4, 8, 6, 7)


def test_well_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="data/train"):
        WellDataModule(str(tmp_path))
    make_well_dataset(tmp_path)
    (tmp_path / "stats.yaml").unlink()
    with pytest.raises(ValueError, match="normalization=sample"):
        WellDataModule(str(tmp_path))
    with pytest.raises(ValueError, match="needs 17"):
        WellDataModule(str(tmp_path), normalization="none", num_frames=8, num_future=1, min_stride=2)


# ----------------------------------------------------------------------------------------------- mixing
def test_remap_fields_places_channels_by_name() -> None:
    x = torch.arange(6.0).reshape(1, 3, 2)  # channels a, b
    mask = torch.ones(1, 2, dtype=torch.bool)
    y, m = remap_fields(x, mask, ["a", "b"], ["b", "c", "a"])
    assert torch.equal(y[..., 0], x[..., 1]) and torch.equal(y[..., 2], x[..., 0])
    assert y[..., 1].abs().sum() == 0 and m.tolist() == [[True, False, True]]
    with pytest.raises(ValueError, match="not among"):
        remap_fields(x, mask, ["a", "z"], ["a"])


def test_mixed_sources_follow_their_weights(tmp_path: Path) -> None:
    make_well_dataset(tmp_path / "a", name="flow_a")
    make_well_dataset(tmp_path / "b", name="flow_b", grid=(8, 8))
    sources = {
        "a": WellDataModule(str(tmp_path / "a"), num_frames=2, batch_size=1, rename={"pressure": "density"}),
        "b": WellDataModule(str(tmp_path / "b"), num_frames=2, batch_size=1),
        "online": online_gray_scott(batch_size=1, num_trajectories=1, num_val_batches=1, val_burn_in_steps=1),
    }
    dm = MixedFieldDataModule(sources, weights={"a": 1.0, "b": 6.0, "online": 1.0}, seed=1)
    assert dm.pde_names == ["flow_a", "flow_b", "gray_scott"]
    assert dm.spec["fields"][:2] == ("density", "vel_x") and "pressure" in dm.spec["fields"]
    assert dm.spec["fields"][-2:] == ("species_u", "species_v")
    dm.setup()
    counts = {0: 0, 1: 0, 2: 0}
    for _ in range(60):
        batch = dm.next_batch()
        source = int(batch["source"][0])
        counts[source] += 1
        present = {dm.spec["fields"][i] for i in torch.nonzero(batch["field_mask"][0]).flatten().tolist()}
        if source == 0:
            assert "density" in present and "pressure" not in present
        elif source == 1:
            assert "pressure" in present and "density" not in present and batch["input"].shape[2:4] == (8, 8)
        else:
            assert present == {"species_u", "species_v"}
    assert counts[1] > 30 and counts[0] > 0 and counts[2] > 0, counts
    val_sources = {int(b["source"][0]) for b in dm.val_dataloader()}
    assert val_sources == {0, 1, 2}


def test_mixed_rejects_inconsistent_sources(tmp_path: Path) -> None:
    make_well_dataset(tmp_path, grid=(8, 6, 4))
    well3d = WellDataModule(str(tmp_path), num_frames=2)
    online2d = online_gray_scott()
    with pytest.raises(ValueError, match="num_spatial_dims"):
        MixedFieldDataModule({"w": well3d, "o": online2d})
    with pytest.raises(ValueError, match=r"not among data\.sources"):
        MixedFieldDataModule({"w": well3d}, weights={"x": 1.0})
