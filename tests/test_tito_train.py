"""Flow-matching training of transfer operators on online chains: data module, loss, evaluation, end to end."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from datagen.md import ForceField, langevin_step
from pfm.data.chains import ChainDataModule
from pfm.embeddings import sequence_key, write_table
from pfm.evaluation import evaluate_chains, free_energy_mae, reference_run
from pfm.tasks.flow_matching import FlowMatchingTask, centred_noise, masked_mse

SMALL = {
    "min_residues": 6,
    "max_residues": 9,
    "num_chains": 4,
    "substeps": 5,
    "warmup_frames": 1,
    "batch_size": 4,
    "num_val_batches": 1,
    "val_burn_in_frames": 1,
}


class TinyTransferOperator(nn.Module):
    """A stand-in with the PLaTITO interface (condition / velocity / sample / rollout), a few MLPs wide."""

    def __init__(self, plm_dim: int = 0, width: int = 16) -> None:
        super().__init__()
        self.plm_dim = plm_dim
        self.seq = nn.Linear(plm_dim, width) if plm_dim else nn.Embedding(20, width)
        self.cond = nn.Sequential(nn.Linear(width + 5, width), nn.SiLU(), nn.Linear(width, width))
        self.vel = nn.Sequential(nn.Linear(width + 4, width), nn.SiLU(), nn.Linear(width, 3))

    def condition(self, x_t, mask, lag, temperature, sequence_emb=None, residue_ids=None):
        seq = self.seq(sequence_emb) if self.plm_dim else self.seq(residue_ids)
        b, num = mask.shape
        scalars = torch.stack((lag / 10, temperature / 300), -1)[:, None].expand(b, num, 2)
        return self.cond(torch.cat((seq, x_t, scalars), -1))

    def velocity(self, z, s, cond, mask):
        v = self.vel(torch.cat((z, s[:, None, None].expand(*z.shape[:2], 1), cond), -1))
        m = mask[..., None].float()
        return (v - (v * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)) * m

    def sample(
        self,
        x_t,
        mask,
        lag,
        temperature,
        sequence_emb=None,
        residue_ids=None,
        steps=50,
        noise=None,
        generator=None,
    ):
        cond = self.condition(x_t, mask, lag, temperature, sequence_emb, residue_ids)
        z = centred_noise(mask, generator) if noise is None else noise
        grid = torch.linspace(0, 1, steps + 1, device=z.device)
        for k in range(steps):
            s = grid[k].expand(z.shape[0])
            z = z + (grid[k + 1] - grid[k]) * self.velocity(z, s, cond, mask)
        return z

    def rollout(
        self,
        x_0,
        mask,
        lag,
        temperature,
        sequence_emb=None,
        residue_ids=None,
        *,
        num_transitions,
        steps=50,
        generator=None,
    ):
        frames = [x_0]
        for _ in range(num_transitions):
            frames.append(
                self.sample(
                    frames[-1], mask, lag, temperature, sequence_emb, residue_ids, steps, generator=generator
                )
            )
        return torch.stack(frames, 1)


def _task(model: nn.Module, **kwargs) -> FlowMatchingTask:
    return FlowMatchingTask(model, optimizer=lambda p: torch.optim.Adam(p, lr=1e-3), **kwargs)


def test_batches_are_padded_pairs_in_ns_and_kelvin() -> None:
    dm = ChainDataModule(**SMALL, lags=[2, 4], frame_ns=0.5, temperatures=[310.0])
    dm.setup()
    batch = dm.next_batch()
    assert dm.spec == {"plm_dim": 0}
    assert set(batch) == {"x_t", "x_next", "mask", "lag", "temperature", "residue_ids"}
    assert set(batch["lag"].tolist()) <= {1.0, 2.0}  # frames x 0.5 ns
    assert torch.equal(batch["temperature"], torch.full((4,), 310.0))
    num = batch["mask"].shape[1]
    assert batch["x_t"].shape == (4, num, 3) and batch["residue_ids"].shape == (4, num)
    assert num == int(batch["mask"].sum(1).max())


def test_identity_and_table_embeddings_follow_the_sequence(tmp_path: Path) -> None:
    dm = ChainDataModule(**SMALL, embeddings="identity")
    dm.setup()
    batch = dm.next_batch()
    assert dm.spec == {"plm_dim": 20}
    expected = torch.nn.functional.one_hot(batch["residue_ids"], 20).float() * batch["mask"][..., None]
    assert torch.equal(batch["sequence_emb"], expected)

    seqs = ["MKTAYIAK", "GSHMLEDPV", "ACDEFG"]
    emb = {sequence_key(s): torch.randn(len(s), 5) for s in seqs}
    table = write_table(tmp_path / "t.safetensors", emb, {sequence_key(s): s for s in seqs}, "test")
    dm = ChainDataModule(**SMALL, embeddings=str(table))
    dm.setup()
    batch = dm.next_batch()
    assert dm.spec == {"plm_dim": 5}
    letters = "ACDEFGHIKLMNPQRSTVWY"
    for row in range(4):
        seq = "".join(letters[i] for i in batch["residue_ids"][row][batch["mask"][row]].tolist())
        assert seq in seqs
        torch.testing.assert_close(batch["sequence_emb"][row, : len(seq)], emb[sequence_key(seq)])
        assert (batch["sequence_emb"][row, len(seq) :] == 0).all()


def test_data_state_resumes_exactly() -> None:
    a = ChainDataModule(**SMALL, seed=5)
    a.setup()
    a.next_batch()
    state = a.state_dict()
    expected = a.next_batch()
    b = ChainDataModule(**SMALL, seed=5)
    b.load_state_dict(state)
    b.setup()
    got = b.next_batch()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


class _Spy(TinyTransferOperator):
    def velocity(self, z, s, cond, mask):
        self.seen = (z.detach().clone(), s.detach().clone())
        return super().velocity(z, s, cond, mask)


def test_loss_is_rectified_flow_matching() -> None:
    """z_s = (1 - s) z0 + s x1 + sigma eps and target x1 - z0, rebuilt from the same random stream."""
    dm = ChainDataModule(**SMALL)
    dm.setup()
    batch = dm.next_batch()
    model = _Spy()
    task = _task(model, sigma=0.01)
    g = torch.Generator().manual_seed(7)
    loss = task.loss(batch, g)
    g = torch.Generator().manual_seed(7)
    mask, x1 = batch["mask"], batch["x_next"]
    z0 = centred_noise(mask, g)
    s = torch.rand(4, generator=g)
    eps = centred_noise(mask, g)
    z_s = (1 - s[:, None, None]) * z0 + s[:, None, None] * x1 + 0.01 * eps
    torch.testing.assert_close(model.seen[0], z_s)
    torch.testing.assert_close(model.seen[1], s)
    cond = model.condition(
        batch["x_t"], mask, batch["lag"], batch["temperature"], residue_ids=batch["residue_ids"]
    )
    torch.testing.assert_close(loss, masked_mse(model.velocity(z_s, s, cond, mask), x1 - z0, mask))
    # padded residues do not count
    pred, target = torch.zeros(1, 3, 3), torch.ones(1, 3, 3)
    target[0, 2] = 100.0
    assert masked_mse(pred, target, torch.tensor([[True, True, False]])) == 1.0


def test_training_lowers_the_loss() -> None:
    import lightning as L

    torch.manual_seed(0)
    dm = ChainDataModule(**{**SMALL, "batch_size": 8}, refresh_fraction=0.0)
    model = TinyTransferOperator(width=32)
    task = _task(model)
    dm.setup()
    val = next(iter(dm.val_dataloader()))
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    before = float(task.loss(val, g()))
    trainer = L.Trainer(max_steps=150, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        limit_val_batches=0, enable_model_summary=False)  # fmt: skip
    trainer.fit(task, datamodule=dm)
    after = float(task.loss(val, g()))
    assert after < 0.8 * before, (before, after)


class _Oracle(nn.Module):
    """Rollouts by the true Langevin dynamics of the evaluation chain: what a perfect model would do."""

    def __init__(self, system, sim: dict, frame_ns: float) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))
        self.system, self.sim, self.frame_ns = system, sim, frame_ns

    def rollout(self, x_0, mask, lag, temperature, num_transitions, steps, generator, **_):
        system = self.system.select(torch.zeros(x_0.shape[0], dtype=torch.long))
        frames_per_lag = round(float(lag[0]) / self.frame_ns)
        out, x = [x_0], x_0
        for _ in range(num_transitions):
            x = langevin_step(
                x,
                system,
                ForceField(),
                self.sim["step_size"],
                generator,
                frames_per_lag * self.sim["substeps"],
            )
            out.append(x - x.mean(1, keepdim=True))
        return torch.stack(out, 1)


class _Frozen(_Oracle):
    """A model that never moves: its rollouts stay at the start frames."""

    def rollout(self, x_0, mask, lag, temperature, num_transitions, steps, generator, **_):
        return x_0[:, None].expand(-1, num_transitions + 1, -1, -1)


def test_evaluation_tells_a_faithful_model_from_a_frozen_one(tmp_path: Path) -> None:
    dm = ChainDataModule(**SMALL, temperatures=[350.0])
    settings = {"num_residues": 8, "num_replicas": 16, "num_frames": 120, "lag_frames": 2,
                "num_model_trajectories": 32, "num_transitions": 30, "num_bins": 12}  # fmt: skip
    ref = reference_run(
        dm.simulation(), num_residues=8, temperature=350.0, num_replicas=1, num_frames=1, seed=12345
    )
    oracle = _Oracle(ref["system"], dm.simulation(), dm.frame_ns)
    good = evaluate_chains(oracle, dm, out_dir=tmp_path, **settings)
    bad = evaluate_chains(_Frozen(ref["system"], dm.simulation(), dm.frame_ns), dm, **settings)
    assert good["fes_mae_kcal"] < bad["fes_mae_kcal"]
    assert good["coverage"] > bad["coverage"]
    assert good["coverage"] > 0.5 and good["fes_mae_kcal"] < 1.0
    assert good["transition_2n_tv_vs_reference"] < 0.3
    assert bad["ck_model_tv"] >= 0.0 and math.isfinite(good["ck_reference_tv"])
    assert (tmp_path / "fes.png").stat().st_size > 10_000 and (tmp_path / "evaluation.json").exists()


def test_free_energy_mae_counts_shared_bins_only() -> None:
    inf = math.inf
    ref = torch.tensor([[0.0, 1.0], [2.0, inf]]).numpy()
    model = torch.tensor([[0.5, inf], [2.0, 3.0]]).numpy()
    mae, coverage = free_energy_mae(ref, model)
    assert mae == pytest.approx(0.25) and coverage == pytest.approx(2 / 3)


@pytest.mark.slow
def test_platito_demo_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pfm-train experiment=platito_demo`, shrunk: checkpoint, metrics, fes.png and evaluation.json."""
    import json

    from conftest import pfm_train

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "run"
    result = pfm_train(
        [
            "experiment=platito_demo",
            "logger=csv",
            "trainer.max_steps=4",
            "trainer.val_check_interval=2",
            "trainer.log_every_n_steps=1",
            "trainer.enable_progress_bar=false",
            "checkpoint_every_n_steps=2",
            "data.num_chains=4",
            "data.batch_size=4",
            "data.substeps=5",
            "task.evaluation.num_frames=30",
            "task.evaluation.num_replicas=4",
            "task.evaluation.num_model_trajectories=8",
            "task.evaluation.num_transitions=4",
            "task.evaluation.steps=2",
            "+task.evaluation.num_bins=6",
        ],
        out,
        full_error=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "checkpoints" / "last.ckpt").exists()
    metrics = (out / "csv" / "metrics.csv").read_text()
    assert "train/loss" in metrics and "val/loss" in metrics and "eval/fes_mae_kcal" in metrics
    assert (out / "fes.png").stat().st_size > 10_000
    results = json.loads((out / "evaluation.json").read_text())
    assert 0.0 <= results["coverage"] <= 1.0 and results["lag_ns"] == 2.0


def test_ranks_draw_their_own_pools_of_the_same_global_batch() -> None:
    """Two pools in one process give the same samples as one pool on each of two ranks."""
    from types import SimpleNamespace

    kwargs = {**SMALL, "num_pools": 2, "augment": False}
    single = ChainDataModule(**kwargs)
    single.setup()
    whole = single.next_batch()
    for rank in (0, 1):
        dm = ChainDataModule(**kwargs)
        dm.trainer = SimpleNamespace(
            global_rank=rank, world_size=2, strategy=SimpleNamespace(root_device=torch.device("cpu"))
        )
        dm.setup()
        part = dm.next_batch()
        rows = slice(2 * rank, 2 * rank + 2)
        for i in range(2):
            n = int(part["mask"][i].sum())
            assert int(whole["mask"][rows][i].sum()) == n
            torch.testing.assert_close(part["x_t"][i, :n], whole["x_t"][rows][i, :n])
            torch.testing.assert_close(part["lag"][i], whole["lag"][rows][i])


@pytest.mark.slow
def test_platito_demo_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Resumed from its step-3 checkpoint, a run ends bitwise equal to the run never interrupted.

    Weights, optimizer moments and the data stream are compared with ``torch.equal``. Two causes of a
    mismatch this catches: a data stream one batch off (before the DataModule accounted for Lightning's
    fetcher: losses differ completely) and the one-off FLOP count of ThroughputMonitor running the resumed
    run's first step under FlopCounterMode, whose decomposed ``silu_backward`` changes gradients in the last
    bits (weights ~1e-8 apart after one step, 1.3e-5 after the demo's 300; now only a fresh run's step 0 is
    counted and the count is restored from the checkpoint).
    """
    import csv
    import shutil

    from conftest import pfm_train

    from pfm.checkpoints import read_checkpoint

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = ["experiment=platito_demo", "logger=csv", "plots=false", "task.evaluation=null",
            "trainer.max_steps=6", "trainer.val_check_interval=6", "trainer.enable_progress_bar=false",
            "checkpoint_every_n_steps=3", "checkpoint_keep_last=null", "data.num_chains=4",
            "data.batch_size=4", "data.substeps=5", "data.refresh_fraction=0.5", "trainer.log_every_n_steps=1"]  # fmt: skip
    whole = tmp_path / "whole"
    result = pfm_train(args, whole, full_error=True)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(whole / "checkpoints" / "step0000003.ckpt", resumed / "checkpoints" / "step0000003.ckpt")
    result = pfm_train([*args, "resume=auto"], resumed, full_error=True)
    assert result.returncode == 0, result.stderr[-3000:]
    a = read_checkpoint(whole / "checkpoints" / "last.ckpt")
    b = read_checkpoint(resumed / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 6
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), f"{key} differs after the resume"
    moments_a, moments_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert moments_a.keys() == moments_b.keys()
    for index, state in moments_a.items():
        for name, value in state.items():
            assert torch.equal(value, moments_b[index][name]), f"optimizer state {index}.{name} differs"
    assert a["lr_schedulers"] == b["lr_schedulers"]
    flops = [c["ThroughputMonitor"]["flops_per_step"] for c in (a["callbacks"], b["callbacks"])]
    assert flops[0] is not None and flops[0] > 0 and flops[0] == flops[1], "FLOP count restored, not redone"

    def losses(run: Path) -> dict[str, str]:
        rows = csv.DictReader((run / "csv" / "metrics.csv").open())
        return {r["step"]: r["train/loss"] for r in rows if r.get("train/loss")}

    after = losses(resumed)
    assert sorted(after) == ["3", "4", "5"]
    assert after == {k: v for k, v in losses(whole).items() if k in after}
    assert torch.equal(a["ChainDataModule"]["pools"][0]["frames"], b["ChainDataModule"]["pools"][0]["frames"])


def test_state_matches_the_last_trained_batch_not_the_one_made_ahead() -> None:
    """Lightning's fetcher makes a batch ahead; the saved state must replay it, not skip it."""
    dm = ChainDataModule(**SMALL, seed=2)
    dm.setup()
    dm.next_batch()
    ahead = dm.make_batch()  # made, not trained
    state = dm.state_dict()
    resumed = ChainDataModule(**SMALL, seed=2)
    resumed.load_state_dict(state)
    resumed.setup()
    assert torch.equal(resumed.next_batch()["x_t"], ahead["x_t"])
    stream = iter(dm.train_dataloader())  # a new iterator also restarts after the last trained batch
    assert torch.equal(next(stream)["x_t"], ahead["x_t"])
