"""Shared fixtures: the config folder, tiny-run overrides, and quiet offline loggers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"

# Small enough that a full train/validate/checkpoint cycle takes seconds on 2 CPU cores.
TINY_RUN = [
    "data.n=16",
    "data.crop=16",
    "data.batch_size=2",
    "data.num_trajectories=2",
    "data.num_val_batches=1",
    "trainer.max_steps=3",
    "trainer.val_check_interval=3",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "checkpoint_every_n_steps=3",
]


# Two small online PDE families for the pool and data-stream tests: one scalar (diffusion), one vector (Burgers).
DIFFUSION = {
    "name": "diffusion",
    "dt": 0.01,
    "coefficients": {"diffusivity": [5e-4, 5e-3]},
    "log_uniform": ["diffusivity"],
}
BURGERS = {"name": "burgers", "dt": 0.002, "coefficients": {"diffusivity": [0.04, 0.06]}}


@pytest.fixture
def one_thread():
    """Small FFTs on a shared 2-core machine: one torch thread avoids OpenMP contention (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def conf_dir() -> Path:
    """The repository's Hydra config folder."""
    return CONF_DIR


@pytest.fixture
def tiny_run() -> list[str]:
    """Overrides that shrink any autoencoder experiment to a few-second run."""
    return list(TINY_RUN)


def pfm_train(
    args: Sequence[str], out: Path, *, full_error: bool = False, timeout: int = 900
) -> subprocess.CompletedProcess:
    """Run ``python -m pfm.train *args`` with run folder and working directory ``out``; wandb offline."""
    out.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "HYDRA_FULL_ERROR": "1" if full_error else "0",
    }
    cmd = [sys.executable, "-m", "pfm.train", *args, f"hydra.run.dir={out}"]
    return subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=timeout)


def resume_run(steps: int, keep_last: int | None) -> list[str]:
    """A conv_vae run of ``steps`` steps, checkpointed every 3, as the resume and SLURM preemption tests use it."""
    return [
        "model=conv_vae",  # small and fast; pinned, since test_resume's mismatch test names one of its keys
        "data.n=16",
        "data.crop=16",
        "data.batch_size=2",
        "data.num_trajectories=2",
        "data.num_val_batches=1",
        f"trainer.max_steps={steps}",
        "trainer.val_check_interval=4",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "checkpoint_every_n_steps=3",
        f"checkpoint_keep_last={'null' if keep_last is None else keep_last}",
        "plots=false",
        "logger=csv",
    ]
