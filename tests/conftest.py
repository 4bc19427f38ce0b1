"""Shared fixtures: the config folder, tiny-run overrides, and quiet offline loggers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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


@pytest.fixture
def conf_dir() -> Path:
    """The repository's Hydra config folder."""
    return CONF_DIR


@pytest.fixture
def tiny_run() -> list[str]:
    """Overrides that shrink any autoencoder experiment to a few-second run."""
    return list(TINY_RUN)
