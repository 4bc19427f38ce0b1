"""PLaTITO foundation recipe: does pretraining on chains of many sequences help on sequences never seen?

One command (from a clone, with the venv's python; docs/foundation.md, "Foundation: PLaTITO"):

    python benchmarks/foundation/platito.py --quick --out outputs/foundation_platito_quick
    python benchmarks/foundation/platito.py --out outputs/foundation_platito     # the full recipe

What it does (experiment=foundation_platito: a 168k-parameter PLaTITO on online coarse-grained chains):

1. Sequences. The 20 amino acids are split in two alphabets by alternating along the force field's
   hydrophobicity scale (the only per-residue parameter of datagen/md): alphabet A for pretraining, alphabet
   B held out. Pretraining chains draw their sequences from 256 random A-sequences; fine-tuning chains from
   32 B-sequences; the test chains have other B-sequences, never seen by any model.
2. Embeddings, three pfm tables per sequence set (pfm.embeddings.write_table): ``forcefield`` (width 2: the
   residue's hydrophobicity h in [0, 1], which sets its attraction in the simulator, and a constant 1),
   ``identity`` (the 20-wide one-hot of the amino acid: pfm's stand-in for a pLM) and ``none`` (width 1,
   constant 1: no sequence information). No protein language model is used: none can be downloaded here.
3. Pretraining: one run per embedding on chains of alphabet A, exported with ``pfm export``; each export is
   scored zero-shot on the test chains (the with/without-embeddings comparison).
4. Fine-tuning (forcefield embeddings): for N in {2, 8, 32} and each seed, ``init_from=<export>`` on N chains
   of held-out sequences (``data.num_chains=N data.refresh_fraction=0``: a fixed set of N simulated chains,
   new native structures per seed), against the same network from random initialisation with the same data,
   steps and optimiser (``scratch``). Pretraining is one run (seed 0) shared by all fine-tuning seeds.
5. Scoring: ``pfm evaluate`` (pfm.evaluate.evaluate_checkpoint, chain metrics) on each test chain (a B
   sequence, its own native structure from ``evaluation.seed``), beside three baselines scored by the same
   pfm.evaluation.evaluate_chains (pfm evaluate has none for chains): the true Langevin dynamics
   (``langevin``: the sampling floor of the metric), a model that never moves (``frozen``), and the true
   dynamics of the same chain with another held-out sequence (``langevin other sequence``: how much the
   sequence moves the metrics at all, i.e. the most an embedding can buy).

Outputs in --out: chains.md (the table: chain metrics side by side), table.md / table.csv / results.* (_common's
long form), scores.json (every test chain's metrics), timing.json, summary.md, error_vs_n.png, and the runs.
Training runs in this process (pfm.train.run on the composed config: no interpreter start per run); pfm export
runs as the command; pfm evaluate through evaluate_checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from datagen.md.chains import AMINO_ACIDS, HYDROPHOBICITY, ForceField, langevin_step  # noqa: E402
from pfm.embeddings import residue_ids, sequence_key, write_table  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    ARMS,
    Results,
    Stages,
    evaluate,
    last_checkpoint,
    make_parser,
    parse_args,
    pfm_export,
    plot_error_vs_n,
    with_flags,
    write_summary,
)

EXPERIMENT = "foundation_platito"
VARIANTS = ("forcefield", "identity", "none")
METRICS = ("fes_mae_kcal", "coverage", "rg_hist_l1", "end_to_end_hist_l1", "transition_2n_tv_vs_reference")
PLOT_STYLES = {
    "langevin": ("C1", "--", None),
    "langevin other sequence": ("C4", "--", None),
    "frozen": ("0.5", ":", None),
    "zero-shot": ("C2", "-.", None),
}
PLOT_METRICS = ("fes_mae_kcal", "rg_hist_l1", "transition_2n_tv_vs_reference")  # lower is better

QUICK = {
    "pretrain_steps": 120,
    "finetune_steps": 40,
    "ns": [2, 8],
    "seeds": [0],
    "num_test": 1,
    "evaluation": ["evaluation.num_frames=120", "evaluation.num_model_trajectories=24"],
}
FULL = {
    "pretrain_steps": 500,
    "finetune_steps": 100,
    "ns": [2, 8, 32],
    "seeds": [0, 1, 2],
    "num_test": 3,
    "evaluation": [],
}


# ------------------------------------------------------------------------------------------ sequences, tables
def alphabets() -> tuple[str, str]:
    """(pretraining alphabet, held-out alphabet): the amino acids alternately by rising hydrophobicity."""
    order = sorted(AMINO_ACIDS, key=lambda a: float(HYDROPHOBICITY[AMINO_ACIDS.index(a)]))
    return "".join(sorted(order[0::2])), "".join(sorted(order[1::2]))


def embed(sequence: str, variant: str) -> torch.Tensor:
    """The ``(L, D)`` per-residue embedding of ``sequence`` in one of VARIANTS."""
    ids = residue_ids(sequence)
    if variant == "forcefield":
        h = HYDROPHOBICITY[ids]
        return torch.stack([h, torch.ones_like(h)], -1)
    if variant == "identity":
        return nn.functional.one_hot(ids, len(AMINO_ACIDS)).float()
    if variant == "none":
        return torch.ones(len(sequence), 1)
    raise ValueError(f"unknown embedding variant {variant!r}; expected one of {VARIANTS}.")


def sequences(alphabet: str, count: int, rng: random.Random, lengths: tuple[int, int]) -> list[str]:
    """``count`` distinct random sequences over ``alphabet`` with lengths in ``lengths`` (inclusive)."""
    out: dict[str, None] = {}
    while len(out) < count:
        out["".join(rng.choice(alphabet) for _ in range(rng.randint(*lengths)))] = None
    return list(out)


def write_tables(folder: Path, num_test: int) -> dict[str, Any]:
    """The sequence sets and one table per (set, variant); test chains get one table each (first = tested)."""
    folder.mkdir(parents=True, exist_ok=True)
    seen, held_out = alphabets()
    rng = random.Random(19)
    sets = {
        "pretrain": sequences(seen, 256, rng, (8, 12)),
        "finetune": sequences(held_out, 32, rng, (8, 12)),
    }
    tests = [s for s in sequences(held_out, num_test + 32, rng, (10, 10)) if s not in sets["finetune"]]
    sets |= {f"test{k}": [s] for k, s in enumerate(tests[:num_test])}
    tables: dict[str, dict[str, str]] = {}
    for name, seqs in sets.items():
        for variant in VARIANTS:
            path = folder / f"{name}_{variant}.safetensors"
            write_table(
                path,
                {sequence_key(s): embed(s, variant) for s in seqs},
                {sequence_key(s): s for s in seqs},
                provider=f"foundation-{variant}",
            )
            tables.setdefault(name, {})[variant] = str(path)
    return {"alphabets": {"pretrain": seen, "held_out": held_out}, "sets": sets, "tables": tables}


# ------------------------------------------------------------------------------------------ training, scoring
def train(overrides: list[str], out: Path) -> dict[str, float]:
    """``pfm-train experiment=foundation_platito OVERRIDES`` in this process (no start-up per run); val metrics."""
    from hydra import compose, initialize_config_dir

    from pfm.paths import CONF_DIR
    from pfm.train import run

    if out.exists():
        shutil.rmtree(out)
    args = [f"experiment={EXPERIMENT}", f"logger.csv.save_dir={out}", *overrides]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=args)
    trainer = run(cfg, out)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}


class _Langevin(nn.Module):
    """Baseline: rollouts by the true dynamics of the test chain (what a perfect model scores)."""

    def __init__(self, system: Any, simulation: dict[str, Any]) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # evaluate_chains reads the device off a parameter
        self.system, self.sim = system, simulation
        self.ff = ForceField.from_dict(simulation.get("force_field"))

    def rollout(
        self,
        x_0: Tensor,
        mask: Tensor,
        lag: Tensor,
        temperature: Tensor,
        num_transitions: int,
        steps: int,
        generator: torch.Generator,
        **_: Any,
    ) -> Tensor:
        """Langevin frames ``lag`` apart from ``x_0``, centred; ``(B, num_transitions + 1, L, 3)``."""
        system = self.system.select(torch.zeros(x_0.shape[0], dtype=torch.long))
        substeps = round(float(lag[0]) / self.sim["frame_ns"]) * self.sim["substeps"]
        frames, x = [x_0], x_0
        for _ in range(num_transitions):
            x = langevin_step(x, system, self.ff, self.sim["step_size"], generator, substeps)
            frames.append(x - x.mean(1, keepdim=True))
        return torch.stack(frames, 1)


class _Frozen(_Langevin):
    """Baseline: a model that never moves."""

    def rollout(
        self,
        x_0: Tensor,
        mask: Tensor,
        lag: Tensor,
        temperature: Tensor,
        num_transitions: int,
        steps: int,
        generator: torch.Generator,
        **_: Any,
    ) -> Tensor:
        """The start frames repeated."""
        return x_0[:, None].expand(-1, num_transitions + 1, -1, -1)


def baselines(table: str, test_seed: int, extra: list[str]) -> dict[str, dict[str, float]]:
    """The baselines on one test chain, through pfm's chain evaluation: the true dynamics (``langevin``), a model
    that never moves (``frozen``) and the true dynamics of the same native structure with another held-out
    sequence (``langevin other sequence``: how far the sequence moves the metrics at all)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from pfm.evaluation import evaluate_chains
    from pfm.evaluation.chains import reference_run
    from pfm.paths import CONF_DIR

    overrides = [f"experiment={EXPERIMENT}", f"data.embeddings={table}"]
    overrides += [f"task.{e}" for e in extra]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    settings = dict(OmegaConf.to_container(cfg.task.evaluation, resolve=True)) | {"seed": test_seed}
    dm = instantiate(cfg.data)
    sequence = dm._library[0]
    ref = reference_run(
        dm.simulation(), num_residues=len(sequence), temperature=settings["temperature"], num_replicas=1,
        num_frames=1, seed=test_seed, residue_ids=residue_ids(sequence),
    )  # fmt: skip
    # the same chain (native structure) with another held-out sequence: what the sequence changes at all
    other = "".join(random.Random(test_seed).choice(alphabets()[1]) for _ in sequence)
    wrong = ref["system"].select(torch.zeros(1, dtype=torch.long))
    wrong.residue_ids = residue_ids(other)[None] * wrong.mask
    models = {
        "langevin": _Langevin(ref["system"], dm.simulation()),
        "frozen": _Frozen(ref["system"], dm.simulation()),
        "langevin other sequence": _Langevin(wrong, dm.simulation()),
    }
    return {name: evaluate_chains(model, dm, **settings) for name, model in models.items()}


# ------------------------------------------------------------------------------------------------ the recipe
def _rows(arm: str, n: int, seed: int | None, per_test: list[dict[str, float]]) -> list[dict[str, Any]]:
    """_common.Results rows of one model: one per chain metric ("window"), mean/median over test chains."""
    rows = []
    for m in METRICS:
        values = [r[m] for r in per_test]
        rows.append({
            "arm": arm, "n": n, "seed": seed, "forecaster": arm, "metric": "chains", "window": m,
            "mean": statistics.fmean(values), "median": statistics.median(values),
            "num_failed": sum(r["nonfinite_fraction"] > 0 for r in per_test), "num_trajectories": len(per_test),
        })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the recipe; returns the timing record (tables and plot in --out)."""
    parser = make_parser(
        __doc__.splitlines()[0], seeds=FULL["seeds"], quick_seeds=QUICK["seeds"], n_values=FULL["ns"],
        quick_n_values=QUICK["ns"],
    )  # fmt: skip
    parser.add_argument("--pretrain-steps", type=int, help="pretraining steps per embedding (default 500)")
    parser.add_argument("--finetune-steps", type=int, help="fine-tuning / scratch steps (default 100)")
    parser.add_argument("--num-test", type=int, help="test chains of held-out sequences (default 3)")
    parser.add_argument("--device", default="cpu", help="pfm evaluate's --device (cpu, cuda)")
    parser.add_argument(
        "--set", nargs="+", default=[], metavar="KEY=VALUE",
        help="Hydra overrides for every training run, e.g. model=platito_3m strategy.accelerator=gpu",
    )  # fmt: skip
    args = parse_args(parser, argv)
    plan = with_flags(QUICK if args.quick else FULL, args, ("pretrain_steps", "finetune_steps", "num_test"))
    plan |= {"seeds": args.seeds, "ns": args.n_values, "set": args.set}
    out = args.out
    torch.set_num_threads(args.threads or 1)  # small tensors: one thread is faster on a shared CPU
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    stages = Stages()
    everything, plot = Results(), Results()  # every row; the plot's (no N = 0 on its log axis)
    extra = plan["evaluation"]
    with stages("tables"):
        data = write_tables(out / "tables", plan["num_test"])
    tests = [(f"test{k}", 1000 + k) for k in range(plan["num_test"])]
    scores: dict[str, Any] = {}

    def score(source: Path, name: str, variant: str) -> list[dict[str, float]]:
        per_test = []
        for test, seed in tests:
            folder = out / "eval" / name / test
            folder.parent.mkdir(parents=True, exist_ok=True)
            overrides = [f"data={EXPERIMENT}_chains", f"data.embeddings={data['tables'][test][variant]}",
                         f"evaluation.seed={seed}", *extra]  # fmt: skip
            record = evaluate(source, folder, overrides, device=args.device)
            per_test.append({k: (math.nan if v is None else float(v)) for k, v in record["metrics"].items()})
        scores[name] = per_test
        return per_test

    with stages("baselines"):  # the true dynamics and a frozen model, on each test chain
        per_test: dict[str, list[dict[str, float]]] = {}
        for test, seed in tests:
            for name, result in baselines(data["tables"][test]["forcefield"], seed, extra).items():
                per_test.setdefault(name, []).append(result)
        for name, results in per_test.items():
            scores[name] = results
            everything.rows += _rows(name, 0, None, results)
            for n in plan["ns"]:
                plot.rows += _rows(name, n, None, results)

    exports: dict[str, Path] = {}
    val: dict[str, dict[str, float]] = {}
    for variant in VARIANTS:  # 1. pretrain on alphabet A, export; zero-shot on held-out sequences
        with stages(f"pretrain {variant}"):
            run_dir = out / "pretrain" / variant
            overrides = [f"data.embeddings={data['tables']['pretrain'][variant]}",
                         f"trainer.max_steps={plan['pretrain_steps']}", "seed=0", *plan["set"]]  # fmt: skip
            val[f"pretrain_{variant}"] = train(overrides, run_dir)
            exports[variant] = pfm_export(last_checkpoint(run_dir), out / "export" / variant)
        with stages(f"zero-shot {variant}"):
            results = score(exports[variant], f"zeroshot_{variant}", variant)
        everything.rows += _rows(f"zero-shot {variant}", 0, 0, results)
        if variant == "forcefield":
            for n in plan["ns"]:
                plot.rows += _rows("zero-shot", n, 0, results)

    for n in plan["ns"]:  # 2. fine-tune vs scratch on N chains of held-out sequences
        for seed in plan["seeds"]:
            for arm in ARMS:
                name = f"{arm}_n{n}_s{seed}"
                overrides = [
                    f"data.embeddings={data['tables']['finetune']['forcefield']}",
                    f"data.num_chains={n}", "data.refresh_fraction=0.0",
                    f"trainer.max_steps={plan['finetune_steps']}", "task.scheduler.warmup_steps=10",
                    f"seed={seed}", *plan["set"],
                ]  # fmt: skip
                if arm == "pretrained":
                    overrides.append(f"init_from={exports['forcefield']}")
                with stages(f"{arm} N={n} seed={seed}"):
                    val[name] = train(overrides, out / "finetune" / name)
                    results = score(last_checkpoint(out / "finetune" / name), name, "forcefield")
                everything.rows += _rows(arm, n, seed, results)
                plot.rows += _rows(arm, n, seed, results)

    command = "python benchmarks/foundation/platito.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    timing = write_summary(
        out, everything, stages, command=command,
        extra={"plan": plan, "sequences": data["sets"], "alphabets": data["alphabets"], "val": val},
        metric="value",  # the window column names the chain metric
    )  # fmt: skip
    (out / "scores.json").write_text(json.dumps(scores, indent=1) + "\n")
    (out / "chains.md").write_text(chain_table(everything, val, plan))
    plot_error_vs_n(
        plot, out / "error_vs_n.png", windows=PLOT_METRICS, metric="error", xlabel="fine-tuning chains N",
        panel_title="{window}",
        styles=PLOT_STYLES, title=f"PLaTITO: pretrained vs scratch on held-out sequences ({len(tests)} test "
        f"chains; seeds {plan['seeds']})",
    )  # fmt: skip
    print((out / "chains.md").read_text())
    print(f"wall {timing['total_s']:.0f} s; load at the end {timing['load_end']}")
    return timing


def chain_table(results: Results, val: dict[str, dict[str, float]], plan: dict[str, Any]) -> str:
    """The compact table: one line per (arm, N), the chain metrics side by side (mean over seeds, min-max)."""
    table = results.table()
    cells = {(r["arm"], r["N"], r["window"]): r for r in table}
    keys = list(dict.fromkeys((r["arm"], r["N"]) for r in table))
    order = ["langevin", "langevin other sequence", "frozen", *(f"zero-shot {v}" for v in VARIANTS), *ARMS]
    keys.sort(key=lambda k: (k[1], order.index(k[0]) if k[0] in order else 99))
    head = (
        "| arm | N | seeds | " + " | ".join(METRICS) + " | val/loss |\n|" + "---|" * (len(METRICS) + 4) + "\n"
    )
    lines = []
    for arm, n in keys:
        row = [arm, str(n), str(cells[arm, n, METRICS[0]]["seeds"])]
        for m in METRICS:
            c = cells[arm, n, m]
            row.append(
                f"{c['mean']:.3f}" + (f" ({c['seed_min']:.3f}-{c['seed_max']:.3f})" if c["seeds"] > 1 else "")
            )
        if arm.startswith("zero-shot"):
            losses = [val.get(f"pretrain_{arm.split()[1]}", {}).get("val/loss")]
        else:
            losses = [val.get(f"{arm}_n{n}_s{s}", {}).get("val/loss") for s in plan["seeds"]]
        losses = [v for v in losses if v is not None]
        row.append(f"{statistics.fmean(losses):.3f}" if losses else "-")
        lines.append("| " + " | ".join(row) + " |")
    return head + "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
