"""Coarse-grained chain dynamics (datagen/md): forces, zero-temperature descent, equipartition, pool resume."""

from __future__ import annotations

import pytest
import torch

from datagen.md import BOLTZMANN_KJ, ChainPool, ForceField, energy, forces, langevin_step, make_chains
from datagen.md.chains import BOND_LENGTH
from datagen.seeding import generator

SMALL = {"num_chains": 4, "min_residues": 6, "max_residues": 9, "substeps": 5, "warmup_frames": 1}


def _chains(num: int = 6, max_len: int = 12, temperature: float = 300.0, seed: int = 0):
    g = generator(seed, "test")
    lengths = torch.randint(5, max_len + 1, (num,), generator=g)
    system = make_chains(lengths, max_len, torch.full((num,), temperature), g, ForceField())
    return system, g


def test_forces_are_minus_the_energy_gradient() -> None:
    system, g = _chains()
    x = (system.native + 0.05 * torch.randn(system.native.shape, generator=g)) * system.mask[..., None]
    y = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(energy(y, system, ForceField()).sum(), y)
    expected = -grad * system.mask[..., None]
    torch.testing.assert_close(forces(x, system, ForceField()), expected, rtol=1e-4, atol=1e-3)


def test_native_structures_differ_and_have_contacts() -> None:
    system, _ = _chains(num=8)
    assert (system.contact.sum((1, 2)) > 0).float().mean() >= 0.5
    bonds = (system.native[:, 1:] - system.native[:, :-1]).norm(dim=-1)[system.mask[:, 1:]]
    torch.testing.assert_close(bonds, torch.full_like(bonds, BOND_LENGTH), atol=1e-4, rtol=0)
    assert not torch.equal(system.residue_ids[0], system.residue_ids[1])
    assert (system.native[0] - system.native[1]).abs().max() > 0.1


def test_energy_decreases_under_zero_temperature_dynamics() -> None:
    system, g = _chains()
    ff = ForceField()
    x = (system.native + 0.08 * torch.randn(system.native.shape, generator=g)) * system.mask[..., None]
    energies = [energy(x, system, ff)]
    for _ in range(30):
        x = langevin_step(x, system, ff, 2e-4, g, temperature_scale=0.0)
        energies.append(energy(x, system, ff))
    e = torch.stack(energies)
    assert (e[1:] <= e[:-1] + 1e-3).all(), "gradient descent must not raise the energy"
    assert (e[-1] < e[0] - 1.0).all()


def test_bond_lengths_follow_equipartition() -> None:
    """Two-bead chains feel only the bond: r follows p(r) ~ r^2 exp(-k_bond (r - r0)^2 / 2kT)."""
    num, temperature = 2000, 350.0
    ff = ForceField()
    g = generator(1, "bonds")
    system = make_chains(torch.full((num,), 2), 2, torch.full((num,), temperature), g, ff)
    x = langevin_step(system.native.clone(), system, ff, 2e-4, g, 100)
    samples = []
    for _ in range(10):
        x = langevin_step(x, system, ff, 2e-4, g, 20)
        samples.append((x[:, 1] - x[:, 0]).norm(dim=-1))
    r = torch.cat(samples)
    grid = torch.linspace(1e-3, 1.0, 20001, dtype=torch.float64)
    kt = BOLTZMANN_KJ * temperature
    density = grid.square() * torch.exp(-ff.k_bond * (grid - BOND_LENGTH).square() / (2 * kt))
    density /= density.sum()
    expected_msd = float((density * (grid - BOND_LENGTH).square()).sum())  # ~ kT/k + (2kT/(k r0))^2
    expected_mean = float((density * grid).sum())
    # Euler-Maruyama at step*k = 0.1 inflates the variance by ~5%; a wrong noise amplitude would be 2x off
    assert abs(float((r - BOND_LENGTH).square().mean()) / expected_msd - 1) < 0.1
    assert abs(float(r.mean()) - expected_mean) < 0.005


def test_pool_is_deterministic_and_resumes_exactly() -> None:
    a = ChainPool(**SMALL, lags=[1, 2], seed=3)
    b = ChainPool(**SMALL, lags=[1, 2], seed=3)
    for _ in range(2):
        a.advance()
        b.advance()
    state = a.state_dict()
    first = [a.sample_pairs(3)]
    a.advance()
    first.append(a.sample_pairs(3))
    resumed = ChainPool(**SMALL, lags=[1, 2], seed=3)
    resumed.load_state_dict(state)
    second = [resumed.sample_pairs(3)]
    resumed.advance()
    second.append(resumed.sample_pairs(3))
    for x, y in zip(first, second, strict=True):
        for key in x:
            assert torch.equal(x[key], y[key]), key
    assert torch.equal(b.sample_pairs(3)["x_t"], first[0]["x_t"])
    other = ChainPool(**SMALL, lags=[1, 2], seed=3, pool_index=1)
    assert not torch.equal(other.frames, ChainPool(**SMALL, lags=[1, 2], seed=3).frames)


def test_pairs_are_lagged_frames_centred_and_padded() -> None:
    pool = ChainPool(**SMALL, lags=[1, 3], refresh_fraction=0.0, seed=0)
    pool.advance()
    batch = pool.sample_pairs(16, augment=False)
    assert set(batch["lag"].tolist()) <= {1.0, 3.0}
    mask = batch["mask"]
    assert batch["x_t"].shape == (16, int(mask.sum(1).max()), 3)
    com = (batch["x_t"] * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(com, torch.zeros_like(com), atol=1e-5, rtol=0)
    assert (batch["x_t"][~mask] == 0).all()
    # x_next is the newest frame; x_t the frame `lag` earlier (here compared without centring)
    g = generator(0, 0, pool.step, "pairs")
    rows = torch.randint(pool.num_chains, (16,), generator=g)
    lags = pool.draw_lags(16, g)
    k = 0
    raw_t = pool.frames[(pool.head - int(lags[k])) % pool.history, rows[k], : mask.shape[1]][mask[k]]
    torch.testing.assert_close(batch["x_t"][k][mask[k]], raw_t - raw_t.mean(0))
    temps = batch["temperature"]
    assert set(temps.tolist()) <= {300.0, 350.0, 400.0}


def test_rotation_augmentation_keeps_distances() -> None:
    pool = ChainPool(**SMALL, lags=[2], seed=0)
    plain = pool.sample_pairs(4, augment=False)
    rotated = pool.sample_pairs(4, augment=True)
    torch.testing.assert_close(
        torch.cdist(plain["x_t"], plain["x_t"]), torch.cdist(rotated["x_t"], rotated["x_t"])
    )
    assert not torch.allclose(plain["x_t"], rotated["x_t"])


def test_blown_up_chains_are_dropped_and_counted() -> None:
    pool = ChainPool(**SMALL, lags=[1], refresh_fraction=0.0, seed=0)
    pool.frames[pool.head, 1] *= 40.0  # chain 1 is torn apart: bonds far beyond max_bond
    pool.frames[pool.head, 2, 0, 0] = float("nan")
    kept = pool.system.native[0].clone()
    pool.advance()
    assert pool.num_rejected == 2
    assert torch.equal(pool.system.native[0], kept)  # healthy chains are not replaced
    assert not torch.equal(pool.system.native[1], ChainPool(**SMALL, lags=[1], seed=0).system.native[1])
    assert torch.isfinite(pool.frames).all()
    bonds = (pool.frames[:, :, 1:] - pool.frames[:, :, :-1]).norm(dim=-1)
    assert float(bonds[:, pool.system.mask[:, 1:]].max()) < pool.max_bond


def test_unstable_step_size_is_an_error() -> None:
    pool = ChainPool(**SMALL, lags=[1], seed=0)
    pool.step_size = 5e-2  # far beyond stability: every chain, old and new, explodes within a frame
    with pytest.raises(FloatingPointError, match=r"lower data\.step_size"):
        pool.advance()


def test_lag_range_and_sequence_library() -> None:
    pool = ChainPool(**SMALL, lags=None, lag_range=[2, 4], sequences=[[0, 1, 2, 3, 4, 5, 6], [7] * 8])
    assert pool.history == 5
    batch = pool.sample_pairs(32)
    assert set(batch["lag"].tolist()) <= {2.0, 3.0, 4.0}
    assert set(batch["sequence_index"].tolist()) <= {0, 1}
    first = batch["sequence_index"] == 0
    if first.any():
        assert batch["residue_ids"][first][0, :7].tolist() == [0, 1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lags": [1], "lag_range": [1, 2]}, "exactly one"),
        ({"lags": [0]}, "integers >= 1"),
        ({"lags": None, "lag_range": [3, 2]}, "1 <= low <= high"),
        ({"lags": [1], "min_residues": 9, "max_residues": 5}, "min <= max"),
        ({"lags": [1], "temperatures": []}, "values > 0 K"),
        ({"lags": [1], "force_field": {"k_bnd": 1.0}}, "k_bnd"),
        ({"lags": [1], "sequences": [[1, 2]]}, "widen data"),
    ],
)
def test_bad_settings_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ChainPool(**{**SMALL, **kwargs})
