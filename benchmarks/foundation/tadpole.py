"""Does pretraining help Tadpole? Pretrain, export, fine-tune on a held-out 3D family, against scratch.

One command runs the whole experiment (docs/foundation.md, "Tadpole"):
1. **Data of the held-out family** (written to files): 3D incompressible Navier-Stokes (velocity, 3 channels),
   `navier_stokes_velocity` of pfm's generator on a 32^3 periodic grid (dt 0.005, 4 solver steps a frame),
   averaged over 2x2x2 cells to 16^3 (`--grid`: the files' grid, the simulation at twice it), `--frames`
   frames a trajectory; saved as arrays and made a dataset in The Well's layout by `pfm data convert`
   (train: the largest N trajectories, valid, test).
2. **Pretraining**: `pfm-train experiment=tadpole_pretrain` (Tadpole-S autoencoder) on online single-channel
   16^3 crops of 32^3 fields of the eight families of `conf/data/tadpole_pretrain_crops.yaml` (Navier-Stokes
   velocity is not among them); `pfm export` of its last checkpoint. One pretraining run serves every seed.
3. **Fine-tuning** ("pretrained" arm): `pfm-train experiment=tadpole_finetune init_from=<export>` with the
   dynamics head (LoRA rank 32 on the frozen autoencoder, zero-initialised skips and latent transformer) on the
   first N training trajectories; **scratch** arm: the same command without `init_from` and with
   `head.freeze_base=false` (the same network, every weight trained from random initialisation), the same
   data, steps, batch and learning rates (1e-3; the skip scales 1e-2 in both). N in --n, seeds in --seeds.
4. **Scoring**: `pfm evaluate` of every last checkpoint on the test split (rollouts from the first frame,
   VRMSE per window, mean and median over test trajectories, persistence and mean baselines).
5. table.md / table.csv (over seeds), results.csv (every model), error_vs_n.png, timing.json, summary.md.

Usage (from a clone, with the venv's python):
    python benchmarks/foundation/tadpole.py --quick --out /tmp/ft_tadpole_quick     # N 2, 8; seed 0
    nice -n 5 python benchmarks/foundation/tadpole.py --out /tmp/ft_tadpole         # N 2, 8, 32; seeds 0, 1, 2
    # one GPU: the command in docs/foundation.md, "Tadpole" (--grid 32 --device cuda, longer runs)
Sizes can be made smaller still (the test does) with --pretrain-steps, --finetune-steps, --frames, --test.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common.py, also when this file is imported
from _common import (
    ARMS,
    BIN,
    Results,
    Stages,
    add_override_flags,
    evaluate,
    make_parser,
    parse_args,
    pfm_export,
    pfm_train,
    plot_error_vs_n,
    run_command,
    with_flags,
    write_summary,
)

FAMILY = "navier_stokes_velocity"  # the held-out family; tadpole_pretrain_crops does not hold it
GRID = 16  # grid of the files (--grid); the simulation runs at twice it and is averaged 2x2x2
DATA_SEED = 19  # the held-out trajectories (ICs, viscosities) do not change with the fine-tuning seed
# mode -> sizes; --pretrain-steps etc. override them
SIZES = {
    "quick": {"pretrain_steps": 60, "finetune_steps": 30, "frames": 9, "valid": 1, "test": 4},
    "full": {"pretrain_steps": 250, "finetune_steps": 40, "frames": 9, "valid": 2, "test": 8},
}
WINDOWS = "1,2-4,5-8"  # rollout windows of pfm evaluate (cut where the trajectories end)


def write_dataset(
    out: Path,
    num_train: int,
    num_valid: int,
    num_test: int,
    frames: int,
    grid: int = GRID,
    device: str = "cpu",
) -> Path:
    """Held-out Navier-Stokes trajectories, (traj, frames, grid, grid, grid, 3), as a Well-layout dataset in `out`.

    Simulated on a (2 grid)^3 periodic grid on `device` and averaged over 2x2x2 cells.
    """
    import numpy as np
    import torch
    import yaml

    from datagen.families import load_family
    from datagen.pool import PDEPool

    # 0.02 time units a frame: dt 0.005 (CFL 0.48 at the amplitude 3 of the family's limits), 4 steps
    spec = dataclasses.replace(load_family(FAMILY), dt=0.005, substeps=4)
    total = num_train + num_valid + num_test
    pool = PDEPool(
        [spec], n=2 * grid, num_trajectories=total, refresh_fraction=0.0, seed=DATA_SEED, device=device
    )
    states = []
    for step in range(frames):
        if step:
            pool.advance()
        field = pool.families[0].current  # (traj, 3, 2 grid, 2 grid, 2 grid)
        states.append(torch.nn.functional.avg_pool3d(field, 2))
    if pool.num_rejected:
        raise RuntimeError(f"{pool.num_rejected} trajectories blew up and were replaced; lower dt.")
    velocity = torch.stack(states, 1).permute(0, 1, 3, 4, 5, 2).cpu().numpy().astype(np.float32)
    src = out.with_name(out.name + "_arrays")
    src.mkdir(parents=True, exist_ok=True)
    np.save(src / "velocity.npy", velocity)
    index = list(range(total))
    spec_file = {
        "dataset_name": FAMILY,
        "spatial_dims": ["x", "y", "z"],
        "dt": spec.dt * spec.substeps,
        "boundary_conditions": {"x": "periodic", "y": "periodic", "z": "periodic"},
        "fields": {"velocity": {"file": "velocity.npy", "order": 1}},
        "splits": {
            "train": index[:num_train],
            "valid": index[num_train : num_train + num_valid],
            "test": index[num_train + num_valid :],
        },
    }
    (src / "spec.yaml").write_text(yaml.safe_dump(spec_file, sort_keys=False))
    run_command(
        [BIN / "pfm", "data", "convert", src / "spec.yaml", out], out.with_name(out.name + "_convert.log")
    )
    return out


def last_logged(metrics_csv: Path, key: str) -> float | None:
    """The last value of column `key` in a run's csv/metrics.csv (None if never logged)."""
    import csv

    with open(metrics_csv, newline="") as f:
        values = [row[key] for row in csv.DictReader(f) if row.get(key)]
    return float(values[-1]) if values else None


def merge_overrides(*groups: list[str]) -> list[str]:
    """Hydra overrides, a later `key=value` replacing an earlier one of the same key (in its place)."""
    merged: dict[str, str] = {}
    for override in (o for group in groups for o in group):
        merged[override.split("=", 1)[0]] = override
    return list(merged.values())


def pretrain_overrides(steps: int, grid: int = GRID) -> list[str]:
    """pfm-train overrides of the pretraining run: Tadpole-S VAE on grid^3 crops of eight (2 grid)^3 families."""
    return [
        "experiment=tadpole_pretrain",
        f"data.n={2 * grid}",
        f"data.crop={grid}",
        "data.batch_size=8",
        "data.num_trajectories=2",
        "data.batches_per_advance=4",
        "data.num_val_batches=1",
        "task.sample_latent=false",  # the deterministic latent, as experiment=demo (conf/experiment/demo.yaml)
        "task.optimizer.lr=6e-4",
        "task.scheduler.warmup_steps=20",
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}",
        f"checkpoint_every_n_steps={steps}",
        "checkpoint_every_n_minutes=null",
        "trainer.enable_progress_bar=false",
        "logger=csv",
        "plots=false",
    ]


def finetune_overrides(
    arm: str, dataset: Path, n: int, seed: int, steps: int, export: Path | None, frames: int = 9
) -> list[str]:
    """pfm-train overrides of one fine-tuning ("pretrained") or from-scratch run on N trajectories."""
    common = [
        "experiment=tadpole_finetune",
        "data=well",
        f"data.path={dataset}",
        f"data.max_trajectories={n}",
        "data.num_frames=1",  # one transition t -> t + 1 a sample (the head is a one-step predictor)
        "data.num_future=1",
        f"data.num_val_future={min(4, frames - 1)}",  # validation rollouts within the trajectories
        "data.batch_size=2",
        "data.num_workers=0",
        "data.num_val_samples=2",
        # the four zero-initialised skip scales at 10x the lr (docs/own_data.md's example): at 1e-3 they reach
        # about 0.04 in 40 steps, and both arms stayed far above persistence (one-step VRMSE 0.56-0.86 vs 0.31)
        "finetune.param_groups=[{pattern: skip_scales, lr: 1.0e-2}]",
        f"seed={seed}",
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}",
        f"checkpoint_every_n_steps={steps}",
        "trainer.enable_progress_bar=false",
        "logger=csv",
        "plots=false",
    ]
    if arm == "pretrained":
        return [*common, f"init_from={export}"]
    if arm == "scratch":
        return [*common, "head.freeze_base=false"]
    raise ValueError(f"arm={arm!r}; expected one of {ARMS}.")


def main(argv: list[str] | None = None) -> int:
    """Run the recipe; returns 0."""
    parser = make_parser(
        __doc__, seeds=[0, 1, 2], quick_seeds=[0], n_values=[2, 8, 32], quick_n_values=[2, 8]
    )
    parser.add_argument("--pretrain-steps", type=int, help="pretraining steps (quick 60, full 250)")
    parser.add_argument("--finetune-steps", type=int, help="steps of every fine-tuning/scratch run (30, 40)")
    parser.add_argument("--frames", type=int, help="frames per trajectory (9: rollouts of 8 steps)")
    parser.add_argument("--test", type=int, help="test trajectories (quick 4, full 8)")
    parser.add_argument(
        "--train-trajectories",
        type=int,
        help="training trajectories generated (default: the largest N); the test trajectories follow them in one "
        "pool, so the same value (32 for the full mode) gives the same test set",
    )
    parser.add_argument(
        "--grid", type=int, default=GRID, help="grid of the files and crops (16; 32 on a GPU)"
    )
    parser.add_argument("--device", default="cpu", help="data generation and pfm evaluate (cpu, cuda)")
    parser.add_argument(
        "--export",
        type=Path,
        help="start both arms' comparisons from this `pfm export` folder: no pretraining",
    )
    add_override_flags(parser)
    args = parse_args(parser, argv)
    sizes = with_flags(
        SIZES["quick" if args.quick else "full"], args, ("pretrain_steps", "finetune_steps", "frames", "test")
    )
    command = shlex.join(
        ["python", "benchmarks/foundation/tadpole.py", *(sys.argv[1:] if argv is None else argv)]
    )
    print(f"{command}\nsizes {sizes}, N {args.n_values}, seeds {args.seeds}", flush=True)
    out, stages, results = args.out, Stages(), Results()
    how = {"threads": args.threads, "in_process": not args.subprocess}
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # data generation and pfm evaluate in this process

    with stages("data"):
        dataset = write_dataset(
            out / "data",
            args.train_trajectories or max(args.n_values),
            sizes["valid"],
            sizes["test"],
            sizes["frames"],
            args.grid,
            args.device,
        )
    if args.export is None:
        with stages("pretrain"):
            overrides = merge_overrides(
                pretrain_overrides(sizes["pretrain_steps"], args.grid), args.pretrain_set
            )
            ckpt = pfm_train(overrides, out / "pretrain", **how)
        with stages("export"):
            export = pfm_export(ckpt, out / "export", in_process=not args.subprocess)
        extra = {"pretrain_val_nrmse": last_logged(out / "pretrain" / "csv" / "metrics.csv", "val/nrmse")}
        print(f"pretraining: last val/nrmse {extra['pretrain_val_nrmse']}", flush=True)
    else:
        export, extra = args.export.resolve(), {"export": str(args.export.resolve())}
    steps = sizes["frames"] - 1
    for n in args.n_values:
        for seed in args.seeds:
            for arm in ARMS:
                name = f"{arm}_n{n}_s{seed}"
                with stages(name):
                    overrides = merge_overrides(
                        finetune_overrides(
                            arm, dataset, n, seed, sizes["finetune_steps"], export, sizes["frames"]
                        ),
                        args.finetune_set,
                    )
                    last = pfm_train(overrides, out / "runs" / name, **how)
                    record = evaluate(
                        last,
                        out / "eval" / name,
                        as_command=args.subprocess,
                        steps=steps,
                        windows=WINDOWS,
                        device=args.device,
                    )
                results.add(arm, n, seed, record)
                results.write(out)  # the table so far, in case a later run fails
    plot_error_vs_n(
        results,
        out / "error_vs_n.png",
        title=f"Tadpole-S dynamics on held-out 3D Navier-Stokes ({args.grid}^3): pretrained ({sizes['pretrain_steps']} "
        f"steps) + LoRA vs scratch, {sizes['finetune_steps']} steps each",
    )
    timing = write_summary(
        out,
        results,
        stages,
        command=command,
        extra={"sizes": sizes, "n": args.n_values, "seeds": args.seeds, **extra},
    )
    print((out / "table.md").read_text())
    print(f"wrote {out}/table.md, error_vs_n.png; {timing['total_s']:.0f} s in all", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
