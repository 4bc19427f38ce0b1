"""Exact resume: a ``pfm-train`` process killed with SIGKILL as soon as a given checkpoint appears (so in the
steps after it) and resumed with ``resume=auto`` ends with bitwise the same weights as an uninterrupted run
(one CPU process, and two). Truncated checkpoints are skipped with a warning; a checkpoint of another model is
refused, naming the mismatch."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import resume_run

from pfm.checkpoints import (
    check_compatible,
    find_resume_checkpoint,
    list_checkpoints,
    read_checkpoint,
    read_run_info,
)

STEPS = 10
RUN = resume_run(STEPS, keep_last=3)


def _cmd(out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "pfm.train", *RUN, *args, f"hydra.run.dir={out}"]


def _env() -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1"}


def _pfm_train(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(out, *args), cwd=out, env=_env(), capture_output=True, text=True, timeout=600)


def _final(out: Path) -> dict[str, torch.Tensor]:
    checkpoint = read_checkpoint(out / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == STEPS
    return {k: v.clone() for k, v in checkpoint["state_dict"].items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: the same run, never interrupted."""
    out = tmp_path_factory.mktemp("uninterrupted")
    result = _pfm_train(out)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def test_keeps_the_last_k_checkpoints_and_links_last(uninterrupted: Path) -> None:
    names = [p.name for p in list_checkpoints(uninterrupted / "checkpoints")]
    assert names == ["step0000006.ckpt", "step0000009.ckpt", "step0000010.ckpt"]
    last = uninterrupted / "checkpoints" / "last.ckpt"
    assert last.samefile(uninterrupted / "checkpoints" / "step0000010.ckpt")
    assert not list((uninterrupted / "checkpoints").glob("*.tmp")), "temporaries are renamed away"


def _kill_when(proc: subprocess.Popen, target: Path, *, group: bool = False) -> bool:
    """SIGKILL ``proc`` (its process group with ``group``) as soon as ``target`` exists; False if it ended first.

    Checkpoints are renamed into place, so ``target`` existing means it is whole; the kill lands in the steps
    after it (each takes tens of milliseconds here; the file is polled every 5 ms).
    """
    deadline = time.monotonic() + 400
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    if proc.poll() is not None:
        return False
    assert target.exists(), f"{target.name} did not appear in 400 s"
    if group:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.returncode == -signal.SIGKILL


def _killed_run(run_dir: Path, wait_for: int, *args: str) -> None:
    """Start a run in ``run_dir`` and kill it right after its step-``wait_for`` checkpoint (3 tries)."""
    for attempt in range(3):
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir()
        # a new session, so that one killpg reaches rank 0 and the rank-1 process Lightning launched from it
        proc = subprocess.Popen(
            _cmd(run_dir, *args),
            cwd=run_dir,
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if not _kill_when(proc, run_dir / "checkpoints" / f"step{wait_for:07d}.ckpt", group=True):
            continue  # it ended before the kill (a stalled poller on a busy machine): inconclusive, again
        steps = [int(p.stem.removeprefix("step")) for p in (run_dir / "checkpoints").glob("step*.ckpt")]
        assert steps and wait_for <= max(steps) < STEPS, (attempt, sorted(steps))
        return
    pytest.fail(f"3 runs ended before the kill after their step-{wait_for} checkpoint; raise STEPS")


@pytest.mark.slow
@pytest.mark.parametrize("wait_for", [3, 6])
def test_sigkill_after_a_checkpoint_then_resume_auto_is_bitwise(
    uninterrupted: Path, tmp_path: Path, wait_for: int
) -> None:
    run_dir = tmp_path / "killed"
    _killed_run(run_dir, wait_for)
    result = _pfm_train(run_dir, "resume=auto")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Resuming from" in result.stderr + result.stdout
    resumed, reference = _final(run_dir), _final(uninterrupted)
    assert resumed.keys() == reference.keys()
    for name, value in reference.items():
        assert torch.equal(resumed[name], value), (
            f"{name} differs after kill at >= step {wait_for} and resume"
        )


def test_truncated_checkpoint_is_skipped_with_a_warning(
    uninterrupted: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "checkpoints"
    shutil.copytree(uninterrupted / "checkpoints", folder)
    newest = folder / "step0000010.ckpt"
    newest.unlink()  # break the hard link before truncating, so the reference stays whole
    data = (uninterrupted / "checkpoints" / "step0000010.ckpt").read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="pfm.checkpoints"):
        chosen = find_resume_checkpoint(folder)
    assert chosen == folder / "step0000009.ckpt"
    assert "step0000010.ckpt" in caplog.text and "truncated" in caplog.text


def test_resume_from_another_model_fails_naming_the_mismatch(uninterrupted: Path, tmp_path: Path) -> None:
    checkpoint = uninterrupted / "checkpoints" / "step0000009.ckpt"
    result = _pfm_train(tmp_path, "model.width=8", f"resume={checkpoint}")
    assert result.returncode != 0
    assert "model.width: checkpoint has 16, this run has 8" in result.stderr, result.stderr[-3000:]
    assert not list((tmp_path / "checkpoints").glob("step*")), "nothing was trained"


def test_a_checkpoint_that_recorded_num_data_shards_resumes_under_num_pools(tmp_path: Path) -> None:
    """Checkpoints written before data.num_pools recorded num_data_shards: read as num_pools, at the top of the
    run description and in its data config, so the same value resumes and another is named."""
    described = {
        "model": {"_target_": "M", "width": 16},
        "head": None,
        "task_target": "T",
        "data_spec": {"n": 8},
    }
    old = tmp_path / "step0000003.ckpt"
    config = {"data": {"_target_": "D", "num_data_shards": 2}}
    torch.save(
        {"pfm": {**described, "num_data_shards": 2, "checkpoint_format": "file", "config": config}}, old
    )
    check_compatible(old, {**described, "num_pools": 2, "checkpoint_format": "file"})
    with pytest.raises(ValueError, match="num_pools: checkpoint has 2, this run has 4"):
        check_compatible(old, {**described, "num_pools": 4, "checkpoint_format": "file"})
    _, info = read_run_info(old)
    assert info["num_pools"] == 2 and "num_data_shards" not in info
    assert info["config"]["data"] == {"_target_": "D", "num_pools": 2}


DDP = ["strategy=ddp", "strategy.devices=2", "data.num_pools=2"]


@pytest.mark.slow
def test_ddp_two_processes_sigkill_then_resume_auto_is_bitwise(tmp_path: Path) -> None:
    """2-process DDP (gloo): killed right after the step-3 checkpoint, resumed, bitwise the same weights.

    Bitwise, as for one process: each rank computes what it did before, and gloo's all-reduce of 2 ranks
    adds 2 numbers, which is commutative in floating point, so no reduction order can differ.
    """
    reference_dir = tmp_path / "uninterrupted"
    killed_dir = tmp_path / "killed"
    reference_dir.mkdir()
    result = _pfm_train(reference_dir, *DDP)
    assert result.returncode == 0, result.stderr[-4000:]
    _killed_run(killed_dir, 3, *DDP)
    result = _pfm_train(killed_dir, *DDP, "resume=auto")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Resuming from" in result.stderr + result.stdout
    resumed, reference = _final(killed_dir), _final(reference_dir)
    assert resumed.keys() == reference.keys()
    for name, value in reference.items():
        assert torch.equal(resumed[name], value), f"{name} differs after kill at >= step 3 and resume"
