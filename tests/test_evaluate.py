"""`pfm evaluate` and the metrics it shares with training validation.

Closed-form metric cases (predicting the mean, a constant offset, persistence on a stationary field, a rollout
that blows up at step k, windows and medians); the one rollout rule; then end to end: a tiny GPhyT trained for a
few steps, scored on held-out online data and on a small dataset in The Well's layout, an export folder, and a
tiny PLaTITO through the same command.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import pfm_train
from well_files import make_well_dataset

from pfm.cli import main
from pfm.evaluation.metrics import field_errors, nrmse, parse_windows, sample_errors, vrmse, window_scores
from pfm.evaluation.scores import RolloutScores, persistence, summarise, trajectory_mean
from pfm.models.rollout import rollout


def _fields(b: int = 3, c: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 16, 12, c, generator=g, dtype=torch.float64) * torch.tensor(
        [1.0, 40.0]
    ) + torch.tensor([3.0, -7.0])


# --------------------------------------------------------------------------------------------- closed forms
def test_predicting_the_field_mean_gives_vrmse_one() -> None:
    t = _fields()
    mean = t.mean(dim=(1, 2), keepdim=True).expand_as(t)
    torch.testing.assert_close(vrmse(mean, t), torch.ones(3, 2, dtype=torch.float64), rtol=1e-6, atol=0)
    # and nRMSE is 1 for predicting zero
    torch.testing.assert_close(nrmse(torch.zeros_like(t), t), torch.ones(3, 2, dtype=torch.float64))


@pytest.mark.parametrize("c", [0.5, -3.0])
def test_a_constant_offset_gives_c_over_std(c: float) -> None:
    t = _fields()
    std = t.std(dim=(1, 2), unbiased=False)
    v, n = field_errors(t + c, t)
    torch.testing.assert_close(v, abs(c) / std, rtol=1e-6, atol=0)
    rms = t.pow(2).mean(dim=(1, 2)).sqrt()
    torch.testing.assert_close(n, abs(c) / rms, rtol=1e-6, atol=0)
    # channels-first frames (Tadpole) give the same numbers
    v1, _ = field_errors((t + c).movedim(-1, 1), t.movedim(-1, 1), channel_dim=1)
    torch.testing.assert_close(v1, v)


def test_vrmse_is_the_same_in_standardised_units() -> None:
    t, p = _fields(seed=0), _fields(seed=1)
    shift, scale = torch.tensor([5.0, -2.0]), torch.tensor([0.1, 30.0])
    torch.testing.assert_close(vrmse((p - shift) / scale, (t - shift) / scale), vrmse(p, t))
    assert not torch.allclose(nrmse((p - shift) / scale, (t - shift) / scale), nrmse(p, t))


def test_float32_inputs_are_accumulated_in_float64() -> None:
    t = torch.full((1, 64, 64, 1), 1e4) + torch.randn(1, 64, 64, 1)
    v = vrmse(t + 1.0, t)
    assert v.dtype == torch.float32
    expected = 1.0 / t.double().std(unbiased=False)
    assert abs(float(v) - float(expected)) < 1e-5 * float(expected)


def test_val_nrmse_weighs_every_sample_the_same() -> None:
    """val/nrmse's reduction: per sample, the mean over present fields; then the mean over samples."""
    errors = torch.tensor([[1.0, 3.0, 8.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert sample_errors(errors, mask).tolist() == [2.0, 4.0]
    assert float(sample_errors(errors, mask).mean()) == 3.0  # pooled over present pairs it would be 8 / 3
    assert sample_errors(errors).tolist() == pytest.approx([4.0, 4.0 / 3.0])


def test_persistence_on_a_stationary_field_scores_zero() -> None:
    frame = _fields(b=2)
    trajectory = frame[:, None].expand(2, 7, *frame.shape[1:])  # (B, T, *spatial, F), constant in time
    context, truth = trajectory[:, :3], trajectory[:, 3:]
    scores = RolloutScores()
    scores.add(persistence(context, 4), truth, torch.ones(2, 2, dtype=torch.bool), torch.zeros(2))
    assert scores.errors("vrmse").abs().max() == 0 and scores.errors("nrmse").abs().max() == 0
    # the per-trajectory mean baseline of a stationary field: VRMSE 1 at every step
    mean = RolloutScores()
    mean.add(trajectory_mean(truth), truth, torch.ones(2, 2, dtype=torch.bool), torch.zeros(2))
    torch.testing.assert_close(mean.errors("vrmse"), torch.ones(2, 4, 2, dtype=torch.float64))


def test_a_rollout_that_blows_up_at_step_k_counts_k_minus_one_finite_steps() -> None:
    """x_{n+1} = 2 x_n, and sample 1 turns NaN at step 3, sample 2 at step 1; sample 0 never."""
    calls = []

    def step(window: torch.Tensor) -> torch.Tensor:
        calls.append(window.shape[0])
        nxt = window[:, -1:] * 2
        k = len(calls)
        bad = torch.zeros(window.shape[0], dtype=torch.bool)
        if k == 1:
            bad[2] = True  # sample 2 at step 1
        if k == 3:
            bad[1] = True  # sample 1 at step 3 (rows 0, 1 are left: sample 2 stopped)
        return torch.where(bad[:, None, None], torch.full_like(nxt, float("nan")), nxt)

    start = torch.ones(3, 2, 4)  # (B, T, features)
    out, finite = rollout(step, start, 5)
    assert finite.tolist() == [5, 2, 0]
    assert calls == [3, 2, 2, 1, 1], "a stopped sample is no longer stepped"
    torch.testing.assert_close(out[0, :, 0], torch.tensor([2.0, 4, 8, 16, 32]))
    assert torch.isnan(out[1, 2:]).all() and torch.isfinite(out[1, :2]).all() and torch.isnan(out[2]).all()
    # the window slides (T = 2 frames) and grows up to num_frames when it starts shorter
    seen = []
    rollout(lambda w: (seen.append(w.shape[1]), w[:, -1:] + 1)[1], torch.zeros(1, 1, 3), 4, num_frames=3)
    assert seen == [1, 2, 3, 3]

    # scored: the failed steps count as failures in the median and leave the mean
    truth = torch.ones(3, 5, 4, 4, 1)
    scores = RolloutScores()
    scores.add(out[..., None, None].expand(3, 5, 4, 4, 1)[..., :1], truth, torch.ones(3, 1, dtype=torch.bool),
               torch.zeros(3), finite)  # fmt: skip
    errors = scores.errors("nrmse")[..., 0]
    assert torch.isnan(errors[1, 2:]).all() and torch.isfinite(errors[0]).all()
    first = window_scores(errors, finite, 1, 1)
    assert first["num_failed"] == 1 and first["mean"] == pytest.approx(1.0)  # |2 - 1| / 1, sample 0 and 1
    late = window_scores(errors, finite, 3, 5)
    assert late["num_failed"] == 2 and late["median"] == math.inf
    assert late["mean"] == pytest.approx((7 + 15 + 31) / 3)


def test_windows_and_medians() -> None:
    errors = torch.tensor(
        [[1.0, 2.0, 3.0, 4.0], [3.0, 3.0, 3.0, 3.0], [0.0, 0.0, 0.0, 8.0], [5.0, 1.0, 1.0, 1.0]]
    )
    finite = torch.full((4,), 4)
    w = window_scores(errors, finite, 2, 4)  # per trajectory: 3, 3, 8/3, 1
    assert w["mean"] == pytest.approx((3 + 3 + 8 / 3 + 1) / 4)
    assert w["median"] == pytest.approx((8 / 3 + 3) / 2)  # even count: the mean of the middle two
    assert window_scores(errors[:3], finite[:3], 1, 1)["median"] == 1.0
    assert parse_windows("1,2-5, 6-12") == ((1, 1), (2, 5), (6, 12))
    assert parse_windows(None) == ((1, 1), (2, 5), (6, 12), (13, 30))
    with pytest.raises(ValueError, match="'2-x'"):
        parse_windows("1,2-x")
    with pytest.raises(ValueError, match="first <= last"):
        parse_windows("5-2")
    # windows are cut where the rollouts end
    scores = RolloutScores()
    t = _fields(b=2)[:, None].expand(2, 7, 16, 12, 2)
    scores.add(t + 1, t, torch.ones(2, 2, dtype=torch.bool), torch.zeros(2))
    rows = summarise({"model": scores}, ["a", "b"], ["toy"], parse_windows(None))["rows"]
    assert sorted({r["window"] for r in rows}) == ["1", "2-5", "6-7"]


# ------------------------------------------------------------------------------------------ end to end
TINY_GPHYT = [
    "experiment=gphyt_demo",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "checkpoint_every_n_steps=2",
    "trainer.enable_progress_bar=false",
    "data.num_val_batches=1",
    "data.val_burn_in_steps=2",
    "data.batch_size=2",
    "data.num_trajectories=1",
    "data.num_val_future=2",
    "model.num_layers=1",
    "model.hidden_dim=32",
    "model.mlp_dim=64",
    "model.num_heads=2",
    "plots=false",
]


@pytest.fixture(scope="module")
def gphyt_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-step gphyt_demo run on 16x16 fields; returns its last checkpoint."""
    out = tmp_path_factory.mktemp("gphyt_eval")
    result = pfm_train(TINY_GPHYT, out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "checkpoints" / "last.ckpt"


def _check_outputs(out: Path, fields: list[str]) -> dict:
    record = json.loads((out / "metrics.json").read_text())
    for picture in ("error_vs_step.png", "rollout.png"):
        assert (out / picture).read_bytes().startswith(b"\x89PNG"), picture
    table = (out / "metrics.md").read_text()
    assert "| VRMSE | 1 |" in table and "persistence" in table
    models = {r["model"] for r in record["rows"]}
    assert models == {"model", "persistence", "mean"}
    assert set(record["fields"]) == set(fields)
    for row in record["rows"]:
        assert {"model", "metric", "source", "field", "window", "mean", "median"} <= set(row)
    return record


def test_gphyt_checkpoint_on_held_out_online_data(gphyt_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "online"
    argv = ["evaluate", str(gphyt_run), "--out", str(out), "--steps", "3", "--num-trajectories", "4"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| VRMSE | 1 |" in printed
    record = _check_outputs(out, ["vorticity", "vel_x", "vel_y"])
    assert record["data"]["kind"] == "online" and record["num_trajectories"] == 4 and record["num_steps"] == 3
    assert record["windows"] == ["1", "2-3"]
    assert len(record["sources"]) == 3  # the demo's three families, each scored apart too
    assert {r["source"] for r in record["rows"]} >= {"all", *record["sources"]}
    # persistence and mean are computed from the truth: the mean baseline's VRMSE is about 1 per step
    for row in record["rows"]:
        if row["model"] == "mean" and row["metric"] == "vrmse" and row["field"] == "all":
            assert 0.99 <= row["mean"] < 1.5, row
    # the held-out seed is neither the training nor the validation seed
    assert record["data"]["seed"] not in (0, 1_000_003)
    # another held-out seed gives other trajectories (through the Python entry the recipes use)
    from pfm.evaluate import evaluate_checkpoint

    again = evaluate_checkpoint(gphyt_run, tmp_path / "other", steps=3, num_trajectories=4, seed=7)
    assert json.loads((tmp_path / "other" / "metrics.json").read_text())["rows"] == again["rows"]
    assert again["rows"][0]["mean"] != record["rows"][0]["mean"]


WELL_RUN = [
    "model=gphyt_s",
    "data=well",
    "task=next_frame",
    "logger=csv",
    "data.batch_size=2",
    "data.num_workers=0",
    "data.num_val_samples=2",
    "data.num_val_future=2",
    *[o for o in TINY_GPHYT if o.startswith(("trainer.", "checkpoint_", "plots"))],
    "model.size=null",
    *[f"+{o}" for o in TINY_GPHYT if o.startswith("model.")],
    "+model.patch_size=[1,8,8]",
]


def test_gphyt_checkpoint_on_a_well_layout_dataset(tmp_path: Path) -> None:
    data = tmp_path / "toy_flow"
    raw = make_well_dataset(data, grid=(32, 32), num_steps=9)
    run = tmp_path / "run"
    result = pfm_train([*WELL_RUN, f"data.path={data}"], run)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "well"
    # the checkpoint records its data: the test split of the same dataset is scored
    argv = ["evaluate", str(run / "checkpoints" / "last.ckpt"), "--out", str(out), "--windows", "1,2-3"]
    assert main(argv) == 0
    record = _check_outputs(
        out, ["pressure", "vel_x", "vel_y", "stress_xx", "stress_xy", "stress_yx", "stress_yy"]
    )
    assert record["data"]["split"] == "test" and record["data"]["normalization"] == "stats"
    assert record["num_trajectories"] == 2
    assert record["num_steps"] == 3 and record["windows"] == [
        "1",
        "2-3",
    ]  # 5 frames left; the windows end at 3
    # persistence computed here by hand, in physical units, from the raw test arrays
    pressure = torch.from_numpy(raw["test"]["pressure"]).double()  # (traj, steps, x, y)
    v = vrmse(pressure[:, 3:4].movedim(1, -1), pressure[:, 4:5].movedim(1, -1))[:, 0]
    row = next(
        r for r in record["rows"]
        if (r["model"], r["metric"], r["field"], r["window"]) == ("persistence", "vrmse", "pressure", "1")
    )  # fmt: skip
    assert row["mean"] == pytest.approx(float(v.mean()), rel=1e-6)
    assert row["median"] == pytest.approx(float(v.mean()), rel=1e-6)  # two trajectories: the middle two
    # another split and start, and the same checkpoint's export folder through the same command
    export = tmp_path / "export"
    assert main(["export", str(run / "checkpoints" / "last.ckpt"), "--out", str(export)]) == 0
    out2 = tmp_path / "valid"
    argv = ["evaluate", str(export), "data=well", f"data.path={data}", "--split", "valid", "--start", "2",
            "--out", str(out2)]  # fmt: skip
    assert main(argv) == 0
    again = json.loads((out2 / "metrics.json").read_text())
    assert again["data"]["split"] == "valid" and again["num_steps"] == 9 - 2 - 4
    # the model scored the same way from the checkpoint and from its export
    model_rows = [r for r in again["rows"] if r["model"] == "model"]
    assert model_rows and all(r["mean"] is None or r["mean"] >= 0 for r in model_rows)


def test_bad_inputs_are_named(gphyt_run: Path, tmp_path: Path) -> None:
    data = tmp_path / "toy"
    make_well_dataset(data, grid=(32, 32), num_steps=6)
    # a model trained on other fields cannot score this dataset: said before any rollout
    with pytest.raises(ValueError, match=r"\['pressure', 'stress_xx'.*head=gphyt_fields"):
        main(["evaluate", str(gphyt_run), "data=well", f"data.path={data}", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match=r"data\.path=/data/my_flow"):
        main(["evaluate", str(gphyt_run), "path=/x", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="'1,x'"):
        main(["evaluate", str(gphyt_run), "--out", str(tmp_path), "--windows", "1,x"])
    with pytest.raises(ValueError, match="--start 3"):
        main(
            [
                "evaluate",
                str(gphyt_run),
                "data=well",
                f"data.path={data}",
                "--start",
                "3",
                "--out",
                str(tmp_path),
            ]
        )


@pytest.mark.slow  # a Tadpole-S on 32^3 fields: minutes on a shared CPU
def test_tadpole_dynamics_checkpoint_on_held_out_online_windows(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["experiment=tadpole_finetune", "logger=csv", "plots=false", "data.n=32", "data.window=3",
            "data.batch_size=1", "data.num_trajectories=1", "data.num_val_batches=1", "trainer.max_steps=1",
            "trainer.val_check_interval=1", "trainer.enable_progress_bar=false", "checkpoint_every_n_steps=1"]  # fmt: skip
    result = pfm_train(args, run)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "eval"
    ckpt = str(run / "checkpoints" / "last.ckpt")
    assert main(["evaluate", ckpt, "--out", str(out), "--steps", "2", "--num-trajectories", "2"]) == 0
    record = _check_outputs(out, ["vel_x", "vel_y", "vel_z"])  # 3D Burgers' names
    assert record["kind"] == "windows" and record["context"] == 1 and record["num_steps"] == 2
    assert len(record["data"]["families"]) == 1 and record["num_trajectories"] == 2  # the held-out family
    with pytest.raises(ValueError, match="--context 4"):
        main(["evaluate", ckpt, "--out", str(out), "--context", "4"])


def test_platito_checkpoint_runs_the_chain_evaluation(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["experiment=platito_demo", "logger=csv", "plots=false", "task.evaluation=null", "trainer.max_steps=2",
            "trainer.val_check_interval=2", "trainer.enable_progress_bar=false", "checkpoint_every_n_steps=2",
            "data.num_chains=4", "data.batch_size=4", "data.substeps=5"]  # fmt: skip
    result = pfm_train(args, run)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "eval"
    small = ["evaluation.num_replicas=4", "evaluation.num_frames=40", "evaluation.num_model_trajectories=8",
             "evaluation.num_transitions=4", "evaluation.steps=3", "evaluation.num_residues=10"]  # fmt: skip
    assert main(["evaluate", str(run / "checkpoints" / "last.ckpt"), *small, "--out", str(out)]) == 0
    record = json.loads((out / "metrics.json").read_text())
    assert record["kind"] == "chains" and record["settings"]["num_frames"] == 40
    for key in ("fes_mae_kcal", "coverage", "ck_model_tv", "ck_reference_tv"):
        assert key in record["metrics"], key
    assert 0.0 <= record["metrics"]["coverage"] <= 1.0
    assert (out / "fes.png").read_bytes().startswith(b"\x89PNG")
    assert "| coverage |" in (out / "metrics.md").read_text()
