"""PLaTITO / TITO model: official names and shapes, numerics against an official-style reference, loading."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import rounding_tolerance

from pfm.models.tito import PLATITO_SIZES, PLaTITO
from pfm.models.tito_network import mask_and_zero_com

ASSETS = Path(__file__).parent / "assets"
ROOT = Path(__file__).parents[1]

_spec = importlib.util.spec_from_file_location("tito_bench", ROOT / "benchmarks" / "tito.py")
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

TINY = dict(token_dim=32, adaln_dim=24, pair_dim=16, num_layers=2, num_heads=4, num_registers=3)
TINY_FEATS = dict(index_dim=16, time_dim=16, lag_dim=8, temperature_dim=8)


def tiny(kind: str = "platito", seed: int = 0, **feats) -> PLaTITO:
    """A tiny model with random, non-trivial weights (adaLN-Zero gates opened)."""
    torch.manual_seed(seed)
    plm = 12 if kind == "platito" else 0
    f = {**TINY_FEATS, **feats}
    if kind == "tito":
        f.setdefault("residue_dim", 10)
    model = PLaTITO(**TINY, plm_dim=plm, features=f).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


def batch(model: PLaTITO, b: int = 3, n: int = 11, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, n, dtype=torch.bool)
    if b == 3:
        mask[1, 7:] = False
        mask[2, 4:] = False
    x = mask_and_zero_com(torch.randn(b, n, 3, generator=g).cumsum(1) * 0.3, mask)
    lag = torch.tensor([1.0, 10.0, 150.0][:b])
    temp = torch.tensor([320.0, 379.0, 450.0][:b])
    if model.is_tito:
        kw = {"residue_ids": torch.randint(0, 23, (b, n), generator=g)}
    else:
        kw = {"sequence_emb": torch.randn(b, n, model.plm_dim, generator=g) * mask[..., None]}
    return x, mask, lag, temp, kw


def _terms_per_pass(model: PLaTITO, num_tokens: int) -> int:
    """Terms summed along one pass of a net: per layer its adaLN, qkv, attention, output and SwiGLU sums."""
    w = model.widths
    per_layer = 2 * w["adaln_dim"] + num_tokens + w["num_registers"] + 8 * w["token_dim"] + w["pair_dim"]
    return w["num_layers"] * per_layer


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# ------------------------------------------------------------------------------------------------ names


@pytest.mark.parametrize(
    ("size", "anchor"), [("platito_19m", "platito_19m"), ("platito_36m", "platito_36m_inferred")]
)
def test_names_and_shapes_equal_the_official_checkpoints(size, anchor):
    expected = json.loads((ASSETS / "platito_state_dicts.json").read_text())[anchor]
    got = {k: list(v.shape) for k, v in PLaTITO(size).state_dict().items()}
    assert got == expected


@pytest.mark.parametrize("size", sorted(PLATITO_SIZES))
def test_every_size_builds_and_reads_back_its_widths(size):
    model = PLaTITO(size)
    again = PLaTITO.from_official(model.to_official_state_dict())
    assert again.widths == model.widths
    assert again.features == model.features
    assert model.is_tito == (size == "tito_3m")
    num = sum(p.numel() for p in model.parameters()) / 1e6
    assert {"tito_3m": 3.7, "platito_3m": 3.8, "platito_19m": 19.0, "platito_36m": 36.0}[
        size
    ] == pytest.approx(num, abs=0.05)


# ------------------------------------------------------------------------------------------------ numerics


@pytest.mark.parametrize("kind", ["platito", "tito"])
def test_condition_velocity_sample_equal_the_official_style_reference(kind):
    model = tiny(kind)
    x, mask, lag, temp, kw = batch(model)
    with torch.no_grad():
        cond = model.condition(x, mask, lag, temp, **kw)
        cond_ref = ref.reference_condition(model, x, mask, lag, temp, **kw)
        assert rel(cond, cond_ref) < 1e-5
        z = mask_and_zero_com(torch.randn_like(x), mask)
        s = torch.tensor([0.0, 0.3, 0.9])
        v = model.velocity(z, s, cond_ref, mask)
        v_ref = ref.reference_velocity(model, z, s, cond_ref, mask)
        assert rel(v, v_ref) < 1e-5
        noise = mask_and_zero_com(torch.randn_like(x), mask)
        out = model.sample(x, mask, lag, temp, steps=4, noise=noise, **kw)
        out_ref = ref.reference_sample(model, x, mask, lag, temp, steps=4, noise=noise, **kw)
    assert rel(out, out_ref) < 1e-4
    # the reference is not trivially equal to anything: another model gives another answer
    with torch.no_grad():
        other = ref.reference_condition(tiny(kind, seed=5), x, mask, lag, temp, **kw)
    assert rel(other, cond_ref) > 0.1


def test_tito_residue_embedding_first_in_the_concatenation_is_read_and_used():
    model = tiny("tito", residue_first=True)
    sd = model.to_official_state_dict()
    assert any(k.endswith("feat_creators.0.res_id_emb.weight") for k in sd)
    again = PLaTITO.from_official(sd)
    assert again.features.residue_first
    x, mask, lag, temp, kw = batch(model)
    with torch.no_grad():
        assert (
            rel(
                again.condition(x, mask, lag, temp, **kw),
                ref.reference_condition(model, x, mask, lag, temp, **kw),
            )
            < 1e-5
        )


def test_round_trip_through_the_official_layout_is_exact():
    model = tiny("platito")
    sd = model.to_official_state_dict()
    assert all(k.startswith(("velocity_net.", "condition_net.")) for k in sd)
    again = PLaTITO.from_official({"state_dict": sd, "hyper_parameters": {"anything": 1}, "epoch": 3})
    x, mask, lag, temp, kw = batch(model)
    noise = mask_and_zero_com(torch.randn_like(x), mask)
    a = model.sample(x, mask, lag, temp, steps=3, noise=noise, **kw)
    b = again.sample(x, mask, lag, temp, steps=3, noise=noise, **kw)
    assert torch.equal(a, b)
    assert all(torch.equal(v, again.to_official_state_dict()[k]) for k, v in sd.items())


def test_padding_residues_change_nothing():
    model = tiny("platito")
    x, mask, lag, temp, kw = batch(model, b=1, n=9)
    n_pad = 5
    mask_p = torch.cat([mask, torch.zeros(1, n_pad, dtype=torch.bool)], dim=1)
    x_p = torch.cat([x, torch.full((1, n_pad, 3), float("nan"))], dim=1)  # garbage, even NaN, in the padding
    emb_p = torch.cat([kw["sequence_emb"], torch.full((1, n_pad, model.plm_dim), 1e6)], dim=1)
    noise = mask_and_zero_com(torch.randn_like(x), mask)
    noise_p = torch.cat([noise, torch.zeros(1, n_pad, 3)], dim=1)
    with torch.no_grad():
        cond = model.condition(x, mask, lag[:1], temp[:1], **kw)
        cond_p = model.condition(x_p, mask_p, lag[:1], temp[:1], sequence_emb=emb_p)
        out = model.sample(x, mask, lag[:1], temp[:1], steps=3, noise=noise, **kw)
        out_p = model.sample(x_p, mask_p, lag[:1], temp[:1], sequence_emb=emb_p, steps=3, noise=noise_p)
    # Padding changes only the order of float32 sums (PLaTITO runs in float32 only: time_embedding casts), so
    # the tolerance is rounding's: one pass of the condition net, then the condition net and 3 velocity passes.
    chain = _terms_per_pass(model, 9 + n_pad)
    torch.testing.assert_close(cond_p[:, :9], cond, **rounding_tolerance(cond, terms=chain))
    assert torch.equal(cond_p[:, 9:], torch.zeros_like(cond_p[:, 9:]))
    torch.testing.assert_close(out_p[:, :9], out, **rounding_tolerance(out, terms=(1 + 3) * chain))
    assert torch.equal(out_p[:, 9:], torch.zeros(1, n_pad, 3))


def test_velocity_and_samples_have_zero_centre_of_mass_and_zero_padding():
    model = tiny("tito")
    x, mask, lag, temp, kw = batch(model)
    with torch.no_grad():
        cond = model.condition(x, mask, lag, temp, **kw)
        v = model.velocity(torch.randn_like(x), 0.5, cond, mask)
        out = model.sample(x + 5.0, mask, lag, temp, steps=2, **kw)  # an off-centre start is centred first
    for t in (v, out):
        assert t.abs().max() > 1e-3
        assert torch.equal(t[~mask], torch.zeros_like(t[~mask]))
        assert t.sum(dim=1).abs().max() < 1e-4


def test_sample_uses_given_noise_and_is_deterministic():
    model = tiny("platito")
    x, mask, lag, temp, kw = batch(model)
    noise = mask_and_zero_com(torch.randn_like(x), mask)
    a = model.sample(x, mask, lag, temp, steps=3, noise=noise, **kw)
    b = model.sample(x, mask, lag, temp, steps=3, noise=noise.clone(), **kw)
    c = model.sample(x, mask, lag, temp, steps=3, noise=mask_and_zero_com(torch.randn_like(x), mask), **kw)
    assert torch.equal(a, b)
    assert rel(c, a) > 1e-2
    # lag and temperature are inputs that matter
    d = model.sample(x, mask, lag * 3, temp, steps=3, noise=noise, **kw)
    assert rel(d, a) > 1e-3


def test_rollout_chains_transitions_from_one_generator():
    model = tiny("tito")
    x, mask, lag, temp, kw = batch(model)
    traj = model.rollout(
        x, mask, lag, temp, num_transitions=3, steps=2, generator=torch.Generator().manual_seed(7), **kw
    )
    assert traj.shape == (3, 4, 11, 3)
    g = torch.Generator().manual_seed(7)
    frame = mask_and_zero_com(x, mask)
    torch.testing.assert_close(traj[:, 0], frame)
    for k in range(3):
        frame = model.sample(frame, mask, lag, temp, steps=2, generator=g, **kw)
        torch.testing.assert_close(traj[:, k + 1], frame)
    assert rel(traj[:, 2], traj[:, 1]) > 1e-3


# ------------------------------------------------------------------------------------------------ errors


def test_bad_inputs_are_named():
    model = tiny("platito")
    x, mask, lag, temp, kw = batch(model)
    with pytest.raises(ValueError, match=r"sequence_emb of shape \(3, 11, 12\)"):
        model.condition(x, mask, lag, temp, sequence_emb=torch.zeros(3, 11, 7))
    with pytest.raises(ValueError, match="TITO needs residue_ids"):
        tiny("tito").condition(x, mask, lag, temp)
    with pytest.raises(ValueError, match="residue_ids span"):
        tiny("tito").condition(x, mask, lag, temp, residue_ids=torch.full((3, 11), 40))
    with pytest.raises(ValueError, match="mask has shape"):
        model.condition(x, mask.float(), lag, temp, **kw)
    with pytest.raises(ValueError, match="size 'platito_7m' is unknown"):
        PLaTITO("platito_7m")
    with pytest.raises(ValueError, match="steps=0"):
        model.sample(x, mask, lag, temp, steps=0, **kw)
    bad = x.clone()
    bad[0, 2, 1] = float("nan")  # a NaN at a valid residue is refused, not propagated
    with pytest.raises(ValueError, match="non-finite coordinates at valid residues"):
        model.sample(bad, mask, lag, temp, steps=1, **kw)
    with pytest.raises(ValueError, match=r"lag has shape \(2,\); expected \(3,\)"):
        model.condition(x, mask, lag[:2], temp, **kw)
    with pytest.raises(ValueError, match=r"cond has shape"):
        model.velocity(x, 0.5, torch.zeros(3, 11, 5), mask)
    # a scalar lag / temperature applies to every sample
    full = model.condition(x, mask, torch.full((3,), 10.0), torch.full((3,), 350.0), **kw)
    torch.testing.assert_close(model.condition(x, mask, 10, 350.0, **kw), full)


def test_loading_a_state_dict_of_another_layout_names_the_keys():
    sd = tiny("platito").to_official_state_dict()
    with pytest.raises(ValueError, match=r"wrong shape.*Build the model with PLaTITO\.from_official"):
        PLaTITO("platito_3m").load_official_state_dict(sd)
    with pytest.raises(ValueError, match="not an official PLaTITO"):
        PLaTITO.from_official({"encoder.weight": torch.zeros(1)})


# ------------------------------------------------------------------------------------------------ official .ckpt


class RunsCode:
    """Unpickling this runs os.system (creates the marker file): the authors' pickled classes stand in here."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_official_ckpt(path: Path, model: PLaTITO, marker: Path) -> Path:
    """A Lightning-like checkpoint whose hyper_parameters hold an object that runs code when unpickled."""
    torch.save(
        {
            "state_dict": model.to_official_state_dict(),
            "hyper_parameters": {"velocity_net": RunsCode(marker), "fm": RunsCode(marker)},
            "epoch": 1,
            "pytorch-lightning_version": "2.4.0",
        },
        path,
    )
    return path


def test_official_ckpt_loads_weights_and_runs_no_pickled_code(tmp_path):
    from pfm.unpickle import load_state_dict

    marker = tmp_path / "ran"
    model = tiny("platito")
    ckpt = write_official_ckpt(tmp_path / "platito_3M.ckpt", model, marker)
    torch.load(ckpt, weights_only=False)  # the fixture is live: plain unpickling runs the payload
    assert marker.exists()
    marker.unlink()
    loaded = PLaTITO.from_official(load_state_dict(ckpt))
    assert not marker.exists()
    assert all(
        torch.equal(v, loaded.to_official_state_dict()[k]) for k, v in model.to_official_state_dict().items()
    )


# ------------------------------------------------------------------------------------------------ pfm sample


def test_pdb_round_trip(tmp_path):
    from pfm.sample import read_ca_pdb, write_ca_pdb

    frames = torch.randn(2, 6, 3)
    write_ca_pdb(tmp_path / "t.pdb", frames, "ACDKWY")
    text = (tmp_path / "t.pdb").read_text()
    assert text.count("MODEL") == 2 and text.count(" CA ") == 12
    coords, seq = read_ca_pdb(tmp_path / "t.pdb")  # first model only
    assert seq == "ACDKWY"
    torch.testing.assert_close(coords, frames[0], atol=1e-4, rtol=0)


def test_pfm_sample_from_an_official_ckpt_runs_no_pickled_code(tmp_path):
    from pfm.cli import main
    from pfm.sample import read_ca_pdb, write_ca_pdb

    marker = tmp_path / "ran"
    model = tiny("platito")
    ckpt = write_official_ckpt(tmp_path / "platito.ckpt", model, marker)
    seq = "MKVLAEGWTY"
    start = torch.randn(len(seq), 3).cumsum(0) * 0.38
    write_ca_pdb(tmp_path / "start.pdb", start[None], seq)
    torch.save(
        {"dom1": torch.randn(len(seq), model.plm_dim)}, tmp_path / "emb.pt"
    )  # the official table format
    args = [
        "sample",
        str(ckpt),
        "--pdb",
        str(tmp_path / "start.pdb"),
        "--embeddings",
        str(tmp_path / "emb.pt"),
    ]
    args += ["--steps", "2", "--flow-steps", "2", "--trajectories", "3", "--pdb-trajectories", "2"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    assert not marker.exists()
    rec = torch.load(tmp_path / "out" / "trajectories.pt", weights_only=True)
    coords = rec["coords"]
    assert coords.shape == (3, 3, len(seq), 3) and rec["sequence"] == seq
    x0, _ = read_ca_pdb(tmp_path / "start.pdb")
    torch.testing.assert_close(coords[:, 0], (x0 - x0.mean(0))[None].expand(3, -1, -1))
    assert torch.isfinite(coords).all() and rel(coords[0, 2], coords[1, 2]) > 1e-3  # trajectories differ
    assert coords[:, 1:].sum(dim=2).abs().max() < 1e-4  # zero centre of mass
    assert (tmp_path / "out" / "trajectory_1.pdb").read_text().count("MODEL") == 3
    assert not (tmp_path / "out" / "trajectory_2.pdb").exists()
    # same seed, same trajectories
    assert main([*args, "--out", str(tmp_path / "again")]) == 0
    assert torch.equal(
        torch.load(tmp_path / "again" / "trajectories.pt", weights_only=True)["coords"], coords
    )


def test_pfm_sample_tito_and_pfm_checkpoints(tmp_path):
    from pfm.build import load_tito
    from pfm.cli import main
    from pfm.sample import write_ca_pdb

    model = tiny("tito")
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in model.to_official_state_dict().items()}},
        tmp_path / "t.ckpt",
    )
    loaded, official = load_tito(tmp_path / "t.ckpt")
    assert not official and loaded.is_tito
    assert all(
        torch.equal(v, loaded.to_official_state_dict()[k]) for k, v in model.to_official_state_dict().items()
    )
    write_ca_pdb(tmp_path / "s.pdb", torch.randn(1, 7, 3), "ACDEFGH")
    args = [
        "sample",
        str(tmp_path / "t.ckpt"),
        "--pdb",
        str(tmp_path / "s.pdb"),
        "--steps",
        "1",
        "--flow-steps",
        "1",
    ]
    assert main([*args, "--trajectories", "2", "--out", str(tmp_path / "o")]) == 0
    assert torch.load(tmp_path / "o" / "trajectories.pt", weights_only=True)["coords"].shape == (2, 2, 7, 3)


def test_pfm_sample_names_a_wrong_embedding_width(tmp_path):
    from pfm.cli import main
    from pfm.sample import write_ca_pdb

    ckpt = tmp_path / "p.ckpt"
    torch.save({"state_dict": tiny("platito").to_official_state_dict()}, ckpt)
    write_ca_pdb(tmp_path / "s.pdb", torch.randn(1, 5, 3), "ACDEF")
    torch.save({"x": torch.randn(5, 960)}, tmp_path / "e.pt")
    args = ["sample", str(ckpt), "--pdb", str(tmp_path / "s.pdb"), "--embeddings", str(tmp_path / "e.pt")]
    with pytest.raises(ValueError, match="960 wide; the model reads 12"):
        main([*args, "--steps", "1", "--out", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="pass --embeddings"):
        main([*args[:4], "--steps", "1", "--out", str(tmp_path / "o")])
