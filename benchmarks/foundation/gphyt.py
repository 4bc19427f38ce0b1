"""Foundation effect for GPhyT: pretrain on several 2D families, then zero-shot, fine-tuned and scratch on a
held-out one, every model scored with `pfm evaluate`.

    python benchmarks/foundation/gphyt.py --quick --out OUT    # 1 seed, N in {2, 8}, short runs
    python benchmarks/foundation/gphyt.py --out OUT            # 3 seeds, N in {2, 8, 32}
    python benchmarks/foundation/gphyt.py --out OUT --pretrained RUN/checkpoints/last.ckpt   # reuse a demo run

The recipe (docs/foundation.md, "Foundation: GPhyT"):

1. held-out data: 2D Kolmogorov flow in vorticity form (``kolmogorov_flow_vorticity``: forced, with drag, in a
   2 pi box), generated with pfm-datagen's pools (one pool per split, its own seed; whole trajectories from
   random initial conditions) and written as a dataset in The Well's layout by ``pfm data convert``
   (docs/own_data.md): ``train`` (32 trajectories), ``valid``, ``test``;
2. pretraining (``experiment=gphyt_demo``: a 4-layer GPhyT of width 128 on online 32x32 windows of
   Navier-Stokes in vorticity and velocity form and Burgers; neither Kolmogorov family). Its vocabulary holds ``vorticity``, so the held-out
   family's field is known and the model can be rolled out on it without training: **zero-shot**, GPhyT's
   in-context claim (the dynamics are read off the context frames). Exported once with ``pfm export``;
3. for each seed and N: **fine-tuned** (``experiment=foundation_gphyt_finetune``, ``head=gphyt_fields``, every
   weight trained, ``init_from=`` the export) and **scratch** (the same command without ``init_from``: the same
   architecture, random initialisation, the same N trajectories, steps and schedule) on the first N training
   trajectories (``data.max_trajectories=N``);
4. every model, the zero-shot export included, is scored by ``pfm evaluate`` on the test trajectories, beside
   persistence and the per-trajectory mean; the table and the plot come from ``_common.py``.

One pretraining run serves every seed of step 3 (the seeds vary the fine-tuning and scratch runs: their
initialisation of new weights, data order and random strides).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
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

HELD_OUT = "kolmogorov_flow_vorticity"

# Sizes: the full mode and --quick run the same code path; quick has fewer seeds, N values and steps.
FULL = {
    "pretrain_steps": 1000,  # experiment=gphyt_demo runs 300
    "finetune_steps": 150,
    "test_trajectories": 8,
    "trajectory_frames": 16,  # 4 context + 12 rollout steps
    "windows": "1,2-5,6-12",
}
QUICK = {
    "pretrain_steps": 100,
    "finetune_steps": 30,
    "test_trajectories": 4,
    "trajectory_frames": 10,  # 4 context + 6 rollout steps
    "windows": "1,2-6",
}
TRAIN_TRAJECTORIES = 32  # the largest N
VALID_TRAJECTORIES = 2


# ------------------------------------------------------------------------------------------------ held-out data
def trajectories(family: str, count: int, frames: int, n: int, seed: int) -> np.ndarray:
    """``count`` trajectories of ``frames`` pool frames of ``family`` on an ``n``^2 grid: ``(count, frames, C, n, n)``.

    A pfm-datagen pool with a history of ``frames`` frames and no refresh: every row is one trajectory from a
    random initial condition (after the family's warm-up), as the online data modules draw them.
    """
    import torch

    from datagen.families import load_family
    from datagen.pool import PDEPool

    pool = PDEPool(
        [load_family(family)],
        num_spatial_dims=2,
        n=n,
        num_trajectories=count,
        refresh_fraction=0.0,
        history=frames,
        seed=seed,
        graphs=False,
    )
    state = pool.families[0]
    return torch.stack([state.window(row, frames) for row in range(count)]).numpy()


def write_held_out(folder: Path, frames: int, test: int, log_dir: Path, grid: int = 32) -> Path:
    """The held-out family as a dataset in The Well's layout (``pfm data convert``); returns its folder."""
    from datagen.families import load_family
    from datagen.fields import field_names
    from datagen.seeding import derive_seed

    dataset = folder / "dataset"
    if (dataset / "stats.yaml").is_file():
        return dataset
    counts = {"train": TRAIN_TRAJECTORIES, "valid": VALID_TRAJECTORIES, "test": test}
    parts = [
        trajectories(HELD_OUT, count, frames, grid, derive_seed(0, f"foundation-gphyt-{split}"))
        for split, count in counts.items()
    ]
    arrays = np.concatenate(parts)  # (trajectories, frames, C, n, n)
    names = field_names(HELD_OUT, 2)
    assert names == ("vorticity",), names
    np.save(folder / "vorticity.npy", arrays[:, :, 0].astype(np.float32))
    spec = load_family(HELD_OUT)
    last = (spec.length or 1.0) * (grid - 1) / grid
    first = 0
    splits = {}
    for split, count in counts.items():
        splits[split] = list(range(first, first + count))
        first += count
    lines = [
        f"dataset_name: {HELD_OUT}",
        "spatial_dims: [x, y]",
        f"dt: {spec.dt * spec.substeps}",
        f"coordinates: {{x: [0.0, {last}], y: [0.0, {last}]}}",  # periodic: the last point is L - dx
        "boundary_conditions: {x: periodic, y: periodic}",
        "fields:",
        "  vorticity: vorticity.npy",
        f"splits: {json.dumps(splits)}",
    ]
    (folder / "spec.yaml").write_text("\n".join(lines) + "\n")
    run_command([BIN / "pfm", "data", "convert", folder / "spec.yaml", dataset], log_dir / "convert.log")
    run_command([BIN / "pfm", "data", "check", dataset], log_dir / "check.log")
    return dataset


# ------------------------------------------------------------------------------------------------- the arms
def pretrain(out: Path, steps: int, pretrained: Path | None, args: Any) -> Path:
    """``experiment=gphyt_demo`` (the held-out family is not in its mix) for ``steps``, then ``pfm export``.

    ``pretrained``: a checkpoint of such a run to export instead of training one. Returns the export folder.
    """
    export = out / "export"
    if (export / "model.safetensors").is_file():
        return export
    if pretrained is None:
        overrides = [
            f"experiment={args.pretrain_experiment}",
            f"trainer.max_steps={steps}",
            f"trainer.val_check_interval={steps}",
            f"checkpoint_every_n_steps={steps}",
            "+trainer.num_sanity_val_steps=0",
            "seed=0",
            *args.pretrain_set,
        ]
        pretrained = pfm_train(
            overrides, out / "pretrain", threads=args.threads, in_process=not args.subprocess
        )
    return pfm_export(pretrained, export, in_process=not args.subprocess)


def finetune(
    out: Path, dataset: Path, n: int, seed: int, steps: int, init_from: Path | None, args: Any
) -> Path:
    """Fine-tune from ``init_from`` (or train from scratch when None) on the first ``n`` trajectories."""
    arm = "pretrained" if init_from is not None else "scratch"
    run_dir = out / "runs" / f"{arm}_n{n}_seed{seed}"
    if (run_dir / "checkpoints" / "last.ckpt").exists():
        return run_dir / "checkpoints" / "last.ckpt"
    overrides = [
        "experiment=foundation_gphyt_finetune",
        f"data.path={dataset}",
        f"data.max_trajectories={n}",
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}",
        f"checkpoint_every_n_steps={steps}",
        f"seed={seed}",
        *args.finetune_set,
    ]
    if init_from is not None:
        overrides.append(f"init_from={init_from}")
    return pfm_train(overrides, run_dir, threads=args.threads, in_process=not args.subprocess)


def score(checkpoint: Path, dataset: Path, out: Path, sizes: dict[str, Any], args: Any) -> dict[str, Any]:
    """``pfm evaluate CHECKPOINT data=well data.path=DATASET`` on the held-out test split; metrics.json's record."""
    return evaluate(
        checkpoint,
        out,
        ["data=well", f"data.path={dataset}", "data.num_workers=0"],
        as_command=args.subprocess,
        steps=sizes["trajectory_frames"] - 4,
        windows=sizes["windows"],
    )


def main(argv: list[str] | None = None) -> int:
    """Run the recipe; write the table, the plot and the timing into ``--out``."""
    parser = make_parser(
        __doc__.split("\n\n")[0], seeds=[0, 1, 2], quick_seeds=[0], n_values=[2, 8, 32], quick_n_values=[2, 8]
    )
    parser.add_argument(
        "--pretrained",
        type=Path,
        default=None,
        help="export this experiment=gphyt_demo checkpoint instead of pretraining (e.g. a demo run of yours)",
    )
    parser.add_argument(
        "--pretrain-experiment", default="gphyt_demo", help="experiment= of pretraining (default gphyt_demo)"
    )
    parser.add_argument("--pretrain-steps", type=int, default=None, help="pretraining steps (full 1000)")
    parser.add_argument(
        "--finetune-steps", type=int, default=None, help="steps of every arm's run (full 150)"
    )
    parser.add_argument("--grid", type=int, default=32, help="side of the held-out fields (the model's grid)")
    add_override_flags(parser)
    args = parse_args(parser, argv)
    sizes = with_flags(QUICK if args.quick else FULL, args, ("pretrain_steps", "finetune_steps"))
    out = args.out
    (out / "eval").mkdir(exist_ok=True)
    stages, results = Stages(), Results()
    with stages("held-out data (pfm-datagen pools, pfm data convert)"):
        dataset = write_held_out(
            out, sizes["trajectory_frames"], sizes["test_trajectories"], out / "logs", args.grid
        )
    with stages("pretrain + export" if args.pretrained is None else "export (pretraining reused)"):
        export = pretrain(out, sizes["pretrain_steps"], args.pretrained, args)
    with stages("zero-shot evaluate"):
        zero_shot = score(export, dataset, out / "eval" / "zero-shot", sizes, args)
    for n in args.n_values:  # zero-shot does not depend on N or the seed: one record, drawn as a line
        results.add("zero-shot", n, args.seeds[0], zero_shot, baselines=False)
    for seed in args.seeds:
        for n in args.n_values:
            for arm, init in (("pretrained", export), ("scratch", None)):
                with stages(f"{arm} N={n} seed={seed}"):
                    ckpt = finetune(out, dataset, n, seed, sizes["finetune_steps"], init, args)
                    record = score(ckpt, dataset, out / "eval" / f"{arm}_n{n}_seed{seed}", sizes, args)
                results.add(arm, n, seed, record)
    plot_error_vs_n(
        results,
        out / "error_vs_n.png",
        title=f"GPhyT on held-out {HELD_OUT}: fine-tuned from pretraining vs scratch (zero-shot: no training)",
        yscale="log",
        styles={"zero-shot": ("C2", "--", "^")},
    )
    command = "python benchmarks/foundation/gphyt.py " + " ".join(argv if argv is not None else sys.argv[1:])
    timing = write_summary(out, results, stages, command=command, extra={"sizes": sizes})
    print((out / "table.md").read_text())
    print(f"wall time {timing['total_s']:.0f} s; table, plot and timing in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
