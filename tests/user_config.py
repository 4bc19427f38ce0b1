"""A user's own config folder, kept outside pfm: an experiment and a data file that build on pfm's groups."""

from __future__ import annotations

from pathlib import Path

# data/my_heat.yaml: pfm's online_crops (a file of pfm's data group), made small
MY_DATA = """\
# my data: pfm's online crops of the heat equation, small enough for a few seconds
defaults:
  - online_crops
  - _self_
n: 16
crop: 16
batch_size: 2
num_trajectories: 2
num_val_batches: 1
prefetch: false
"""

# experiment/my_exp.yaml: pfm's model and task groups with the data file above
MY_EXPERIMENT = """\
# @package _global_
defaults:
  - override /model: conv_vae
  - override /data: my_heat
  - override /task: autoencoder
  - override /logger: csv
seed: 7
trainer:
  max_steps: 2
  val_check_interval: 2
  log_every_n_steps: 1
  enable_progress_bar: false
checkpoint_every_n_steps: 2
plots: false
"""


def write_user_config(folder: Path) -> Path:
    """Write ``folder/experiment/my_exp.yaml`` and ``folder/data/my_heat.yaml``; returns ``folder``."""
    (folder / "experiment").mkdir(parents=True, exist_ok=True)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "experiment" / "my_exp.yaml").write_text(MY_EXPERIMENT)
    (folder / "data" / "my_heat.yaml").write_text(MY_DATA)
    return folder
