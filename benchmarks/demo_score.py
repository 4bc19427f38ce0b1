"""Score demo checkpoints on one validation set, so that runs of different batch sizes compare.

    python benchmarks/demo_score.py RUN/checkpoints/step0000400.ckpt [MORE.ckpt ...] [--override KEY=VALUE ...]

The set is the one ``pfm-train experiment=demo`` validates on (32 crops, seed 0) unless ``--override`` changes
it (e.g. ``--override data.batch_size=4 data.num_val_batches=8 data.val_burn_in_steps=20``, the same span of
validation-pool steps in batches of 4). Prints the mean per-crop nRMSE of each checkpoint's network on it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# benchmarks/datagen.py would shadow the datagen package that pfm imports: keep this folder off the import path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import lightning as L  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from pfm.build import build_task  # noqa: E402
from pfm.checkpoints.files import read_checkpoint  # noqa: E402
from pfm.paths import CONF_DIR  # noqa: E402


def main() -> None:
    """Validate each checkpoint on the composed demo's validation set and print its val/nrmse."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--override", nargs="*", default=[], help="Hydra overrides of the demo's config")
    args = parser.parse_args()
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = compose("train", overrides=["experiment=demo", "data.prefetch=false", *args.override])
    datamodule, task = build_task(cfg)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    crops = cfg.data.batch_size * cfg.data.num_val_batches
    for path in args.checkpoints:
        task.load_state_dict(read_checkpoint(path)["state_dict"])
        result = trainer.validate(task, datamodule=datamodule, verbose=False)[0]
        print(f"{path}: val/nrmse over {crops} crops = {result['val/nrmse']:.4f}", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)  # the score does not depend on it, and one thread leaves the machine to the rest
    main()
