"""mdCATH reader: small files written in the mdCATH HDF5 layout (mdcath-only-protein-v1.0)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pfm.data.mdcath import MdCathDataModule, MdCathDomain, find_domains
from pfm.embeddings import sequence_key, write_table

THREE = {"M": "MET", "K": "LYS", "T": "THR", "A": "ALA", "H": "HSD", "G": "GLY", "W": "TRP"}
ATOMS = ["N", "CA", "C", "O"]  # per residue in these files; the reader must pick CA by name


def _pdb(sequence: str) -> str:
    lines = ["CRYST1    0.000    0.000    0.000  90.00  90.00  90.00 P 1           1"]
    serial = 1
    for r, aa in enumerate(sequence, 1):
        for name in ATOMS:
            lines.append(
                f"ATOM  {serial:5d} {name:<4s} {THREE[aa]:<4s}A{r:4d}    {0.0:8.3f}{0.0:8.3f}{0.0:8.3f}  1.00  0.00      P1   {name[0]}"
            )
            serial += 1
    lines += ["TER", "END"]
    return "\n".join(lines) + "\n"


def write_domain(folder: Path, name: str, sequence: str, frames: dict[int, list[np.ndarray]]) -> Path:
    """One mdCATH file: ``frames[temperature][replica]`` are all-atom coordinates (F, N, 3) in Angstrom."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"mdcath_dataset_{name}.h5"
    num_atoms = len(sequence) * len(ATOMS)
    with h5py.File(path, "w") as f:
        f.attrs["layout"] = "mdcath-only-protein-v1.0"
        g = f.create_group(name)
        g.attrs["numResidues"] = len(sequence)
        g.attrs["numProteinAtoms"] = num_atoms
        g.attrs["numChains"] = 1
        g.create_dataset("pdbProteinAtoms", data=_pdb(sequence).encode())
        g.create_dataset("pdb", data=_pdb(sequence).encode())
        g.create_dataset("psf", data=b"PSF\n")
        resnames = [THREE[aa] for aa in sequence for _ in ATOMS]
        g.create_dataset("resname", data=np.array(resnames, dtype="S4"))
        g.create_dataset("resid", data=np.repeat(np.arange(1, len(sequence) + 1), len(ATOMS)))
        g.create_dataset("element", data=np.array([a[0] for _ in sequence for a in ATOMS], dtype="S1"))
        g.create_dataset(
            "z", data=np.array([{"N": 7, "C": 6, "O": 8}[a[0]] for _ in sequence for a in ATOMS])
        )
        g.create_dataset("chain", data=np.array([b"A"] * num_atoms))
        for temp, replicas in frames.items():
            tg = g.create_group(str(temp))
            for r, coords in enumerate(replicas):
                rg = tg.create_group(str(r))
                rg.attrs["numFrames"] = coords.shape[0]
                ds = rg.create_dataset("coords", data=coords.astype(np.float32))
                ds.attrs["unit"] = "Angstrom"
                rg.create_dataset("box", data=np.eye(3, dtype=np.float32) * 5.0)
    return path


def _trajectory(sequence: str, num_frames: int, seed: int) -> np.ndarray:
    """Frame f puts residue r's CA at (10 f + r, r, seed) Angstrom; other atoms nearby."""
    num = len(sequence)
    x = np.zeros((num_frames, num * len(ATOMS), 3), dtype=np.float32)
    for f in range(num_frames):
        for r in range(num):
            for a in range(len(ATOMS)):
                other = 0.0 if ATOMS[a] == "CA" else 0.3 * (a + 1)  # non-CA atoms sit off the CA grid
                x[f, r * len(ATOMS) + a] = (10.0 * f + r + other, r + other, seed)
    return x


@pytest.fixture
def mdcath(tmp_path: Path) -> Path:
    write_domain(
        tmp_path / "data",
        "1abcA00",
        "MKTAH",
        {320: [_trajectory("MKTAH", 12, 1)], 450: [_trajectory("MKTAH", 12, 2)] * 2},
    )
    write_domain(
        tmp_path / "data",
        "2xyzB01",
        "GWAKTM",
        {320: [_trajectory("GWAKTM", 8, 3)], 348: [_trajectory("GWAKTM", 8, 4)]},
    )
    return tmp_path


def test_domain_reads_calpha_in_nm(mdcath: Path) -> None:
    files = find_domains(mdcath)
    assert sorted(files) == ["1abcA00", "2xyzB01"]
    domain = MdCathDomain(files["1abcA00"])
    assert domain.sequence == "MKTAH" and domain.num_residues == 5
    assert domain.ca_index.tolist() == [1, 5, 9, 13, 17]
    assert {(r.temperature, r.replica, r.num_frames) for r in domain.replicas} == {
        (320, "0", 12),
        (450, "0", 12),
        (450, "1", 12),
    }
    x = domain.frames(domain.replicas[0], [3, 7])
    assert x.shape == (2, 5, 3)
    np.testing.assert_allclose(x[0, :, 0], (30.0 + np.arange(5)) / 10.0, rtol=1e-6)  # CA x: 10 f + r Angstrom
    np.testing.assert_allclose(x[1, :, 1], np.arange(5) / 10.0, rtol=1e-6)


def test_pairs_are_lagged_frames_with_lag_in_ns(mdcath: Path) -> None:
    dm = MdCathDataModule(str(mdcath), lags=[3], temperatures=[320, 450], batch_size=6, augment=False)
    batch = dm.next_batch()
    assert batch["lag"].tolist() == [3.0] * 6
    assert set(batch["temperature"].tolist()) <= {320.0, 450.0}
    mask = batch["mask"]
    assert batch["x_t"].shape == (6, 6, 3) and dm.spec == {"plm_dim": 0}
    # frames are 1 ns apart and the x coordinate grows by 1 nm per frame: centring removes it, so compare
    # the un-centred difference through the residue spacing along y (0.1 nm) and the COM (zero)
    com = (batch["x_next"] * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(com, torch.zeros_like(com), atol=1e-5, rtol=0)
    n = mask.sum(1)
    for i in range(6):
        y = batch["x_t"][i, : n[i], 1]
        torch.testing.assert_close(y[1:] - y[:-1], torch.full((int(n[i]) - 1,), 0.1), atol=1e-5, rtol=0)
    letters = "ACDEFGHIKLMNPQRSTVWY"
    seqs = {"".join(letters[j] for j in batch["residue_ids"][i, : n[i]].tolist()) for i in range(6)}
    assert seqs <= {"MKTAH", "GWAKTM"}


def test_lag_reaches_the_right_frame(mdcath: Path) -> None:
    dm = MdCathDataModule(
        str(mdcath), domains=["1abcA00"], lags=[4], temperatures=[320], batch_size=1, augment=False
    )
    domain = dm.train_domains[0]
    seen = []
    original = domain.frames
    domain.frames = lambda rep, idx: (seen.append(list(idx)), original(rep, idx))[1]
    dm.next_batch()
    assert seen and seen[0][1] - seen[0][0] == 4 and 0 <= seen[0][0] <= 12 - 1 - 4


def test_embeddings_from_tables(mdcath: Path, tmp_path: Path) -> None:
    emb = {s: torch.randn(len(s), 7) for s in ("MKTAH", "GWAKTM")}
    table = write_table(
        tmp_path / "t.safetensors",
        {sequence_key(s): e for s, e in emb.items()},
        {sequence_key(s): s for s in emb},
        "x",
    )
    dm = MdCathDataModule(str(mdcath), embeddings=str(table), lag_range=[1, 2], batch_size=4)
    batch = dm.next_batch()
    assert dm.spec == {"plm_dim": 7} and batch["sequence_emb"].shape[-1] == 7
    official = tmp_path / "official.pt"
    torch.save({"1abcA00": emb["MKTAH"][None], "2xyzB01": emb["GWAKTM"]}, official)
    dm = MdCathDataModule(str(mdcath), embeddings=str(official), lag_range=[1, 2], batch_size=4)
    batch = dm.next_batch()
    for i in range(4):
        n = int(batch["mask"][i].sum())
        key = "MKTAH" if n == 5 else "GWAKTM"
        torch.testing.assert_close(batch["sequence_emb"][i, :n], emb[key])
    bad = tmp_path / "short.pt"
    torch.save({"1abcA00": torch.randn(4, 7), "2xyzB01": emb["GWAKTM"]}, bad)
    with pytest.raises(ValueError, match="re-embed"):
        MdCathDataModule(str(mdcath), embeddings=str(bad), lag_range=[1, 2])


def test_resume_and_held_out_domains(mdcath: Path) -> None:
    a = MdCathDataModule(str(mdcath), lag_range=[1, 3], batch_size=3, seed=4)
    a.next_batch()
    state = a.state_dict()
    expected = a.next_batch()
    b = MdCathDataModule(str(mdcath), lag_range=[1, 3], batch_size=3, seed=4)
    b.load_state_dict(state)
    got = b.next_batch()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    dm = MdCathDataModule(str(mdcath), val_domains=["2xyzB01"], lag_range=[1, 2], batch_size=2)
    assert [d.name for d in dm.train_domains] == ["1abcA00"]
    val = next(iter(dm.val_dataloader()))
    assert val["mask"].sum(1).tolist() == [6, 6]


def test_bad_settings_are_named(mdcath: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="mdcath_dataset_"):
        MdCathDataModule(str(tmp_path / "empty"), lag_range=[1, 2])
    with pytest.raises(FileNotFoundError, match="not a folder"):
        MdCathDataModule(str(tmp_path / "nowhere"), lag_range=[1, 2])
    with pytest.raises(ValueError, match="9zzzA00"):
        MdCathDataModule(str(mdcath), domains=["9zzzA00"], lag_range=[1, 2])
    with pytest.raises(ValueError, match="300"):
        MdCathDataModule(str(mdcath), temperatures=[300], lag_range=[1, 2])
    with pytest.raises(ValueError, match="exactly one"):
        MdCathDataModule(str(mdcath), lags=[1], lag_range=[1, 2])


def test_state_matches_the_last_trained_batch(mdcath: Path) -> None:
    dm = MdCathDataModule(str(mdcath), lag_range=[1, 3], batch_size=3, seed=1)
    dm.next_batch()
    ahead = dm.make_batch()  # made ahead by the fetcher, not trained
    resumed = MdCathDataModule(str(mdcath), lag_range=[1, 3], batch_size=3, seed=1)
    resumed.load_state_dict(dm.state_dict())
    assert torch.equal(resumed.next_batch()["x_t"], ahead["x_t"])
