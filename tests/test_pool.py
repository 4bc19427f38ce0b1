"""Online pool and DataModules: determinism, exact resume, disjoint pools, rejection, windows, pairs."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import BURGERS, DIFFUSION

from datagen import FamilySpec, PDEPool
from datagen.augment import transform
from pfm.data import OnlineCropDataModule, OnlinePairDataModule, OnlineWindowDataModule

pytestmark = pytest.mark.usefixtures("one_thread")


def _module(**kwargs) -> OnlineCropDataModule:
    base = {"n": 16, "crop": 8, "batch_size": 4, "num_trajectories": 2, "refresh_fraction": 0.3, "seed": 1}
    dm = OnlineCropDataModule([DIFFUSION, BURGERS], **(base | kwargs))
    dm.setup()
    return dm


def test_stream_is_deterministic() -> None:
    a, b = _module(), _module()
    for _ in range(3):
        x, y = a.next_batch(), b.next_batch()
        assert torch.equal(x["input"], y["input"]) and torch.equal(x["pde"], y["pde"])


def test_state_dict_resumes_exactly() -> None:
    a = _module()
    for _ in range(2):
        a.next_batch()
    state = copy.deepcopy(a.state_dict())
    expected = [a.next_batch() for _ in range(3)]
    b = _module()
    b.load_state_dict(state)
    for x in expected:
        assert torch.equal(x["input"], b.next_batch()["input"])


def test_pools_are_disjoint_and_union_is_independent_of_process_count() -> None:
    one = _module(num_pools=2)  # one process holding pools 0 and 1
    batch = one.next_batch()["input"]
    half = batch.shape[0] // 2
    assert not torch.equal(batch[:half], batch[half:])
    pools = [
        PDEPool(
            [FamilySpec(**DIFFUSION), FamilySpec(**BURGERS)],
            n=16,
            num_trajectories=2,
            refresh_fraction=0.3,
            seed=1,
            pool_index=s,
        )
        for s in (0, 1)
    ]
    for pool, part in zip(pools, (batch[:half], batch[half:]), strict=True):  # two "ranks", one pool each
        pool.advance()
        x, _ = pool.sample_crops(half, 8)
        dims = tuple(range(1, x.ndim))
        x = (x - x.mean(dim=dims, keepdim=True)) / x.std(dim=dims, keepdim=True).clamp_min(1e-6)
        assert torch.equal(x, part)
    a, b = pools[0].families[0].current, pools[1].families[0].current
    assert not torch.allclose(a, b)


def test_blown_up_trajectories_are_dropped_counted_and_replaced() -> None:
    pool = PDEPool([FamilySpec(**DIFFUSION)], n=16, num_trajectories=3, refresh_fraction=0.0)
    pool.families[0].frames[pool.families[0].head, 1, 0, 0, 0, 0] = float("inf")
    pool.advance()
    assert pool.num_rejected == 1
    assert torch.isfinite(pool.families[0].current).all()
    # An anti-diffusive family (check bypassed) explodes and is rejected every time, never sampled.
    spec = FamilySpec("diffusion", dt=0.05, coefficients={"diffusivity": -0.05})
    with pytest.raises(ValueError, match="diffusivity"):
        PDEPool([spec], n=16, num_trajectories=2)
    bad = PDEPool([spec], n=16, num_trajectories=2, refresh_fraction=0.0, max_abs=1e3, check=False)
    for _ in range(5):
        bad.advance()
    assert bad.num_rejected > 0
    assert bad.families[0].current.abs().max() <= 1e3


def test_flips_and_permutations_rotate_vector_components() -> None:
    d = 3
    x = torch.randn(d, 4, 4, 4)
    flipped = transform(x, [True, False, False], [0, 1, 2], is_vector=True)
    assert torch.equal(flipped[0], -x[0].flip(0)) and torch.equal(flipped[1], x[1].flip(0))
    permuted = transform(x, [False] * 3, [1, 0, 2], is_vector=True)
    assert torch.equal(permuted[0], x[1].permute(1, 0, 2))
    # The divergence of a field is invariant under the transformation (a rotation/reflection of the box).
    from datagen.spectral import Grid, spectral_ops

    grid = Grid(3, 8, 1.0)
    ops = spectral_ops(grid)
    u = torch.randn(1, 3, 8, 8, 8)
    div = grid.ifft((ops.ik * grid.fft(u)).sum(1, keepdim=True))
    v = transform(u, [True, False, True], [2, 0, 1], is_vector=True)
    div_v = grid.ifft((ops.ik * grid.fft(v)).sum(1, keepdim=True))
    expected = transform(div, [True, False, True], [2, 0, 1], is_vector=False)
    # Flips move the sample points by one cell on a periodic grid: compare after undoing that with a roll.
    assert torch.allclose(div_v.abs().sum(), expected.abs().sum(), rtol=1e-4)


def test_windows_and_pairs() -> None:
    dm = OnlineWindowDataModule(
        [DIFFUSION, BURGERS], window=3, n=16, batch_size=4, num_trajectories=2, seed=0
    )
    dm.setup()
    batch = dm.next_batch()
    assert batch["input"].shape == (4, 3, 3, 16, 16, 16)
    assert dm.spec["num_channels"] == 3 and dm.spec["num_frames"] == 3
    for i in range(4):
        assert batch["channel_mask"][i].sum() == (1 if batch["pde"][i] == 0 else 3)
    pairs = OnlinePairDataModule(
        [DIFFUSION], lag=2, n=16, crop=8, batch_size=2, num_trajectories=2, augment=False
    )
    pairs.setup()
    p = pairs.next_batch()
    assert p["input"].shape == p["target"].shape == (2, 1, 8, 8, 8)
    assert (p["lag"] == 2).all() and not torch.equal(p["input"], p["target"])


def test_window_frames_are_consecutive_solver_steps() -> None:
    from datagen import make_stepper

    pool = PDEPool(
        [FamilySpec("diffusion", dt=0.01, coefficients={"diffusivity": 0.01})],
        n=16,
        num_trajectories=1,
        history=3,
    )
    pool.advance()
    w = pool.sample_windows(1, 3, augment=False)["input"][0]
    step = make_stepper("diffusion", dim=3, n=16, dt=0.01, diffusivity=0.01)
    torch.testing.assert_close(step(w[0:1]), w[1:2], atol=1e-5, rtol=0)


def test_crop_larger_than_grid_is_refused() -> None:
    with pytest.raises(ValueError, match=r"data.crop=32 is larger than the grid data.n=16"):
        OnlineCropDataModule([DIFFUSION], n=16, crop=32)


@pytest.mark.parametrize("config", ["online_crops", "online_windows", "online_pairs"])
def test_data_configs_compose_and_yield_a_batch(config: str) -> None:
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    conf = str(Path(__file__).parents[1] / "conf")
    with initialize_config_dir(config_dir=conf, version_base=None):
        cfg = compose(
            "train",
            overrides=[
                f"data={config}",
                "data.n=32",
                "data.batch_size=2",
                "data.num_trajectories=1",
                "data.crop=8",
            ],
        )
    dm = instantiate(cfg.data)
    dm.setup()
    batch = dm.next_batch()
    assert batch["input"].shape[0] == 2 and torch.isfinite(batch["input"]).all()


@pytest.mark.parametrize("module", ["crops", "chains"])
def test_a_pool_count_that_does_not_split_the_batch_is_named(module: str) -> None:
    from pfm.data.chains import ChainDataModule

    if module == "crops":
        dm = OnlineCropDataModule([DIFFUSION], n=16, crop=8, batch_size=3, num_pools=2)
    else:
        dm = ChainDataModule(batch_size=3, num_pools=2, num_chains=2)
    with pytest.raises(ValueError, match=r"data\.num_pools=2 .* divide data\.batch_size=3"):
        dm.setup()
    assert not dm.pools, "nothing is built before the layout is checked"
