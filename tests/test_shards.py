"""Shard round trip with real tar files: the shard DataModule yields what the online stream yields."""

from __future__ import annotations

import json
import tarfile

import pytest
import torch

from datagen import FamilySpec
from datagen.shards import write_shards
from pfm.data import OnlineCropDataModule, ShardDataModule

DIFFUSION = {
    "name": "diffusion",
    "dt": 0.01,
    "coefficients": {"diffusivity": [5e-4, 5e-3]},
    "log_uniform": ["diffusivity"],
}


# small FFTs and models on a shared 2-core machine: one torch thread (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


def test_round_trip_matches_online_stream(tmp_path) -> None:
    paths = write_shards(
        [FamilySpec(**DIFFUSION)],
        tmp_path,
        num_samples=12,
        samples_per_shard=5,
        crop=8,
        batch=4,
        pool_kwargs={"n": 16, "num_trajectories": 2, "seed": 3},
    )
    assert [p.name for p in paths] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporaries
    with tarfile.open(paths[0]) as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile(next(n for n in names if n.endswith(".json"))).read())
    assert {"pde", "coefficients", "seed", "time", "dt", "grid", "code_version"} <= set(meta)
    assert meta["pde"] == "diffusion" and 5e-4 <= meta["coefficients"]["diffusivity"] <= 5e-3
    shards = list(ShardDataModule(str(tmp_path), batch_size=4).train_dataloader())
    online = OnlineCropDataModule([DIFFUSION], n=16, crop=8, batch_size=4, num_trajectories=2, seed=3)
    online.setup()
    assert len(shards) == 3
    for batch in shards:
        expected = online.next_batch()
        assert torch.equal(batch["input"], expected["input"]) and torch.equal(batch["pde"], expected["pde"])


def test_pairs_round_trip_and_resampled_stream(tmp_path) -> None:
    spec = FamilySpec("burgers", dt=0.002, coefficients={"diffusivity": 0.05})
    write_shards(
        [spec],
        tmp_path,
        num_samples=4,
        samples_per_shard=2,
        kind="pairs",
        lag=2,
        crop=None,
        batch=2,
        pool_kwargs={"n": 16, "num_trajectories": 2},
    )
    dm = ShardDataModule(str(tmp_path), batch_size=2, resampled=True)
    assert dm.spec["num_channels"] == 3 and dm.pde_names == ["burgers"]
    stream = iter(dm.train_dataloader())
    for _ in range(5):  # more batches than written: resampled streams never end
        batch = next(stream)
        assert batch["input"].shape == batch["target"].shape == (2, 3, 16, 16, 16)


def test_missing_directory_says_how_to_make_it(tmp_path) -> None:
    with pytest.raises(ValueError, match="pfm-datagen write"):
        ShardDataModule(str(tmp_path / "nothing"))
