"""`pfm sample` on what training really writes: a pfm-train checkpoint and its `pfm export` folder.

A tiny PLaTITO (experiment=platito_demo, shrunk) trains a few flow-matching steps; the checkpoint is exported;
`pfm embed --provider identity` writes the table; `pfm sample` then rolls out trajectories from both the
checkpoint and the export. Same seed: the same trajectories from either; another seed: other ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SEQUENCE = "MKTAYIAKQR"  # 10 residues, inside platito_demo's 8-12


def _start_pdb(path: Path) -> torch.Tensor:
    """A random bead chain with 0.38 nm bonds, written as a C-alpha PDB; returns its (L, 3) nm coordinates."""
    from pfm.sample import write_ca_pdb

    g = torch.Generator().manual_seed(3)
    steps = torch.randn(len(SEQUENCE), 3, generator=g)
    coords = (steps / steps.norm(dim=1, keepdim=True) * 0.38).cumsum(0)
    write_ca_pdb(path, coords[None], SEQUENCE)
    return coords


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 3-step platito_demo run, its export and an identity embedding table for SEQUENCE."""
    import os

    from conftest import pfm_train

    from pfm.cli import main

    tmp = tmp_path_factory.mktemp("sample_export")
    threads = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}  # for this run only
    run = tmp / "run"
    args = ["experiment=platito_demo", "logger=csv", "plots=false", "task.evaluation=null",
            "trainer.max_steps=3", "trainer.val_check_interval=3", "trainer.enable_progress_bar=false",
            "checkpoint_every_n_steps=3", "data.num_chains=4", "data.batch_size=4", "data.substeps=5"]  # fmt: skip
    result = pfm_train(args, run, full_error=True, env=threads)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = run / "checkpoints" / "last.ckpt"
    export = tmp / "export"
    assert main(["export", str(ckpt), "--out", str(export)]) == 0
    fasta = tmp / "seq.fasta"
    fasta.write_text(f">start\n{SEQUENCE}\n")
    table = tmp / "identity.safetensors"
    assert main(["embed", "--provider", "identity", "--fasta", str(fasta), "--out", str(table)]) == 0
    pdb = tmp / "start.pdb"
    _start_pdb(pdb)
    return {"ckpt": ckpt, "export": export, "table": table, "pdb": pdb, "tmp": tmp}


def _sample(files: dict[str, Path], source: str, out: str, seed: int = 7) -> dict:
    from pfm.cli import main

    args = ["sample", str(files[source]), "--pdb", str(files["pdb"]), "--embeddings", str(files["table"]),
            "--lag", "2", "--temperature", "350", "--steps", "3", "--flow-steps", "4", "--trajectories", "4",
            "--pdb-trajectories", "2", "--seed", str(seed), "--out", str(files["tmp"] / out)]  # fmt: skip
    assert main(args) == 0
    return torch.load(files["tmp"] / out / "trajectories.pt", weights_only=True)


@pytest.mark.slow
def test_pfm_sample_from_a_trained_checkpoint_and_its_export(trained: dict[str, Path]) -> None:
    from pfm.build import load_tito
    from pfm.models.tito import PLaTITO
    from pfm.sample import read_ca_pdb

    # both sources hold the trained network, not a fresh one
    from_ckpt, official_ckpt = load_tito(trained["ckpt"])
    from_export, official_export = load_tito(trained["export"])
    assert isinstance(from_export, PLaTITO) and not official_ckpt and not official_export
    assert from_ckpt.plm_dim == from_export.plm_dim == 20  # one-hot "embeddings" of platito_demo
    a, b = from_ckpt.state_dict(), from_export.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    ckpt = _sample(trained, "ckpt", "from_ckpt")
    export = _sample(trained, "export", "from_export")
    coords = ckpt["coords"]
    n = len(SEQUENCE)
    assert coords.shape == (4, 4, n, 3) and coords.dtype == torch.float32
    assert torch.isfinite(coords).all()
    assert coords.mean(dim=2).abs().max() < 1e-5, "every frame has zero centre of mass (nm)"
    start, seq = read_ca_pdb(trained["pdb"])
    torch.testing.assert_close(coords[:, 0], (start - start.mean(0)).expand(4, n, 3))
    assert (coords[:, 1:] - coords[:, :1]).norm(dim=-1).mean() > 1e-3, "the model moves the chain"
    assert (coords[0, 1:] - coords[1, 1:]).abs().max() > 1e-3, "trajectories of one batch differ"
    assert ckpt["sequence"] == SEQUENCE and ckpt["lag_ns"] == 2.0 and ckpt["temperature_K"] == 350.0

    # same seed: the checkpoint and its export give the same trajectories, bit for bit
    assert torch.equal(export["coords"], coords)
    other = _sample(trained, "export", "other_seed", seed=8)
    assert not torch.allclose(other["coords"][:, 1:], coords[:, 1:])

    # the PDB parses back: the sequence, and the first model equals frame 0 (3 decimals in Angstrom)
    for i in range(2):
        path = trained["tmp"] / "from_export" / f"trajectory_{i}.pdb"
        text = path.read_text()
        assert text.count("MODEL") == 4 and text.count(" CA ") == 4 * n
        first, seq = read_ca_pdb(path)
        assert seq == SEQUENCE
        torch.testing.assert_close(first, coords[i, 0], atol=1e-4, rtol=0)
    assert not (trained["tmp"] / "from_export" / "trajectory_2.pdb").exists()
