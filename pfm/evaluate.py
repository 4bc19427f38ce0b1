"""`pfm evaluate`: score a checkpoint the way papers report results (docs/evaluate.md).

    pfm evaluate CHECKPOINT [data=well data.path=DIR | data.KEY=VALUE ...] --out DIR [--split test]
        [--context T] [--start K] [--steps S] [--windows 1,2-5,6-12,13-30] [--num-trajectories N]

CHECKPOINT is a pfm-train ``.ckpt``, a ``pfm export`` folder or a registry name (``pfm list``); it is loaded by
:func:`pfm.build.load_pretrained` (PLaTITO's official files by :func:`pfm.build.load_tito`). The data are
the checkpoint's own training data config unless overrides say otherwise (``data=<choice>`` replaces it with
``conf/data/<choice>.yaml``; ``data.KEY=VALUE`` changes one key):

- a dataset in The Well's layout (a data config with ``path``): every trajectory of ``data/<split>`` from frame
  ``start``, in physical units (the model sees them normalised as in training: ``data.normalization``);
- online data: held-out trajectories from pools seeded with ``derive_seed(seed, "evaluation")`` (never a
  training or validation seed), ``--num-trajectories`` of them.

Field models (GPhyT, NextFrameTask) and Tadpole dynamics (DynamicsTask) roll out autoregressively from the first
``context`` frames by pfm's one rule (:mod:`pfm.models.rollout`); the rollout, the persistence baseline
and the per-trajectory mean baseline are scored per field, step and window (:mod:`pfm.evaluation.scores`).
Writes ``metrics.json``, ``metrics.md`` (printed too), ``error_vs_step.png`` and ``rollout.png`` into ``--out``.
PLaTITO/TITO checkpoints run :func:`pfm.evaluation.evaluate_chains` (free-energy MAE, coverage,
Chapman-Kolmogorov) on the checkpoint's online chains instead (settings: ``evaluation.KEY=VALUE``).

Public names: ``run`` (the command; its arguments are in :mod:`pfm.commands`), ``evaluate``,
``evaluate_checkpoint`` (the command from Python: issue 19's recipes), ``load_for_evaluation``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from datagen.fields import field_names
from datagen.seeding import derive_seed
from pfm.build import load_pretrained, load_tito
from pfm.checkpoints import read_run_info
from pfm.commands import add_parser
from pfm.config_check import moved_override_problems
from pfm.data.well_dataset import WellDataset
from pfm.evaluation import evaluate_chains
from pfm.evaluation.metrics import parse_windows
from pfm.evaluation.scores import (
    RolloutScores,
    markdown_table,
    persistence,
    plot_error_vs_step,
    plot_rollout,
    summarise,
    trajectory_mean,
    write_json,
)
from pfm.io import atomic_path
from pfm.models import PLaTITO
from pfm.models.rollout import rollout
from pfm.paths import CONF_DIR
from pfm.tasks import DynamicsTask, NextFrameTask

__all__ = ["evaluate", "evaluate_checkpoint", "load_for_evaluation", "run"]

_MODELS = ("model", "persistence", "mean")


# ---------------------------------------------------------------------------------------------- the checkpoint
def load_for_evaluation(source: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model (eval mode) of ``source`` and the run config it records (``{}`` when it records none).

    A pfm-train checkpoint records its whole config; an export folder its model, head and data shapes; a
    registry name and an official PLaTITO file nothing.
    """
    path = Path(source).expanduser()
    if path.is_dir() and (path / "config.yaml").is_file():
        return load_pretrained(path), dict(OmegaConf.to_container(OmegaConf.load(path / "config.yaml")))
    if path.exists():
        _, info = read_run_info(path)  # runs no pickled code; an older run's keys under today's names
        if not isinstance(info, Mapping) or not isinstance(info.get("model"), Mapping):
            return load_tito(path)[0], {}  # an official (P)LaTITO file: its widths are read off the shapes
        return load_pretrained(path), dict(info.get("config") or {})
    return load_pretrained(str(source)), {}


def _kind(model: torch.nn.Module, config: Mapping[str, Any]) -> str:
    """``fields`` (NextFrameTask), ``windows`` (DynamicsTask) or ``chains`` (TITO/PLaTITO)."""

    if isinstance(model, PLaTITO):
        return "chains"
    target = str((config.get("task") or {}).get("_target_", ""))
    if target.endswith("NextFrameTask") or (not target and hasattr(model, "extend_fields")):
        return "fields"
    if target.endswith("DynamicsTask") or (not target and type(model).__name__ == "TadpoleDynamics"):
        return "windows"
    raise ValueError(
        f"pfm evaluate scores rollouts of field models (GPhyT, task NextFrameTask), Tadpole dynamics "
        f"(head=tadpole_dynamics, task DynamicsTask) and TITO/PLaTITO chains; this checkpoint holds a "
        f"{type(model).__name__}{f' trained by {target}' if target else ''}. A Tadpole autoencoder is scored by "
        "its validation reconstruction nRMSE; fine-tune a dynamics head first (experiment=tadpole_finetune)."
    )


def _task(model: torch.nn.Module, config: Mapping[str, Any], kind: str, fields: Sequence[str], context: int):
    """The training task around ``model`` (its rollout and normalisation), from the recorded config if any."""

    task_cfg = dict(config.get("task") or {})
    if kind == "fields":
        options = {k: task_cfg[k] for k in ("normalize", "integrator", "dt") if task_cfg.get(k) is not None}
        task = NextFrameTask(
            model, optimizer=None, fields=fields, num_frames=context, error_curve=False, **options
        )
    else:
        task = DynamicsTask(model, optimizer=None)
    return task.eval()


# ---------------------------------------------------------------------------------------------------- the data
def _split_overrides(overrides: Sequence[str]) -> tuple[str | None, list[str], list[str]]:
    """``(data choice, data.* overrides, evaluation.* overrides)``; anything else, or a renamed key, is refused."""
    if moved := moved_override_problems(overrides):  # Hydra or the DataModule would not name the new key
        raise ValueError(" ".join(moved))
    choice, data, evaluation = None, [], []
    for item in overrides:
        key, eq, _ = item.lstrip("+").partition("=")
        if not eq:
            raise ValueError(f"override {item!r} is not KEY=VALUE; write e.g. data.path=/data/my_flow.")
        if key == "data":
            choice = item.split("=", 1)[1]
        elif key.startswith("data."):
            data.append(item.lstrip("+"))
        elif key.startswith("evaluation."):
            evaluation.append(item.lstrip("+").removeprefix("evaluation."))
        else:
            raise ValueError(
                f"override {item!r}: pfm evaluate takes data=<choice>, data.KEY=VALUE (e.g. data.path=/data/my_flow) "
                "and (for TITO/PLaTITO) "
                "evaluation.KEY=VALUE; the model comes from the checkpoint."
            )
    return choice, data, evaluation


def data_config(config: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """The data config to evaluate on: the checkpoint's, or ``conf/data/<choice>``, with ``data.*`` overrides."""
    choice, data, _ = _split_overrides(overrides)
    seed = int(config.get("seed", 0) or 0)
    if choice is not None:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=[f"data={choice}", f"seed={seed}", *data])
        return dict(OmegaConf.to_container(cfg.data, resolve=True))
    if not config.get("data"):
        raise ValueError(
            "this checkpoint records no training data (an export folder, a registry name or an official file); "
            "name the data to evaluate on, e.g. `data=well data.path=/data/my_flow` or `data=online_fields`."
        )
    base = OmegaConf.create(dict(config["data"]))
    if data:
        base = OmegaConf.merge(base, OmegaConf.from_dotlist([d.removeprefix("data.") for d in data]))
    return dict(OmegaConf.to_container(base, resolve=True))


class Trajectories:
    """Batches of test trajectories, channels last and in physical units, with how the model sees them.

    Each batch: ``frames`` ``(B, context + steps, *spatial, F)``, ``mask`` ``(B, F)``, ``source`` ``(B,)``,
    and ``shift``/``scale`` ``(B, F)``: the model's input is ``(frames - shift) / scale`` and its output is mapped
    back with the same (the training data's normalisation).
    """

    fields: tuple[str, ...]
    source_names: list[str]
    num_steps: int
    description: dict[str, Any]

    def batches(self) -> Iterator[dict[str, torch.Tensor]]:  # pragma: no cover - interface
        raise NotImplementedError

    def __len__(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError


class WellTrajectories(Trajectories):
    """Every trajectory of one split of a dataset in The Well's layout, from frame ``start``."""

    def __init__(
        self,
        cfg: Mapping[str, Any],
        split: str,
        context: int,
        start: int,
        steps: int | None,
        batch_size: int,
        max_trajectories: int | None,
    ) -> None:

        root = Path(str(cfg["path"])).expanduser()
        folder = root / "data" / split
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{root} has no data/{split} folder; The Well's layout has data/train, data/valid and data/test "
                "(choose another with --split)."
            )
        stride = int(cfg.get("min_stride", 1) or 1)
        self.normalization = str(cfg.get("normalization", "stats"))
        stats_path = root / "stats.yaml"
        stats = yaml.safe_load(stats_path.read_text()) if stats_path.is_file() else None
        common = {"min_stride": stride, "max_stride": stride, "normalization": "none", "num_context": context,
                  "rename": cfg.get("rename")}  # fmt: skip
        probe = WellDataset(folder, length=1, **common)
        room = min((lay.num_steps - 1 - start) // stride + 1 for lay in probe.layouts) - context
        if start < 0 or room < 1:
            raise ValueError(
                f"{folder}: trajectories of {min(lay.num_steps for lay in probe.layouts)} steps at stride {stride} "
                f"leave no step to predict after --start {start} and --context {context}; lower them."
            )
        self.num_steps = room if steps is None else min(steps, room)
        self.dataset = WellDataset(folder, length=context + self.num_steps, **common)
        self.items = [i for i, (_, _, s) in enumerate(self.dataset.index) if s == start][:max_trajectories]
        self.fields = tuple(self.dataset.channels)
        name = str(cfg.get("name") or probe.layouts[0].dataset_name)
        self.source_names = [name]
        self.context, self.batch_size = context, batch_size
        self.shift = self.scale = None
        if self.normalization == "stats":
            self.shift, self.scale = WellDataset._stats(stats, probe.layouts[0])
        elif self.normalization not in ("sample", "none"):
            raise ValueError(f"data.normalization={self.normalization!r}; expected stats, sample or none.")
        self.description = {"kind": "well", "path": str(root), "split": split, "start": start, "stride": stride,
                            "normalization": self.normalization}  # fmt: skip

    def __len__(self) -> int:
        return len(self.items)

    def batches(self) -> Iterator[dict[str, torch.Tensor]]:
        for i in range(0, len(self.items), self.batch_size):
            items = [self.dataset[j] for j in self.items[i : i + self.batch_size]]
            frames = torch.stack([it["input"] for it in items])
            b, f = frames.shape[0], frames.shape[-1]
            if self.normalization == "stats":
                shift, scale = self.shift.expand(b, f), self.scale.expand(b, f)
            elif (
                self.normalization == "sample"
            ):  # as WellDataset: the context frames' mean and std per channel
                ctx = frames[:, : self.context].reshape(b, -1, f)
                shift, scale = ctx.mean(1), ctx.std(1).clamp_min(1e-6)
            else:
                shift, scale = torch.zeros(b, f), torch.ones(b, f)
            yield {
                "frames": frames,
                "mask": torch.stack([it["field_mask"] for it in items]),
                "source": torch.zeros(b, dtype=torch.long),
                "shift": shift,
                "scale": scale,
            }


class OnlineTrajectories(Trajectories):
    """Held-out trajectories from the online pools of a data config, seeded apart from training and validation."""

    def __init__(
        self,
        cfg: Mapping[str, Any],
        kind: str,
        context: int,
        steps: int,
        num_trajectories: int,
        seed: int | None,
    ) -> None:

        train_seed = int(cfg.get("seed", 0) or 0)
        held_out = derive_seed(train_seed, "evaluation") if seed is None else seed
        if held_out in (train_seed, train_seed + 1_000_003):
            raise ValueError(f"--seed {held_out} is the training or validation seed; choose another.")
        cfg = dict(cfg)
        batch = int(cfg.get("batch_size", 8))
        cfg |= {"seed": held_out, "num_val_batches": math.ceil(num_trajectories / batch)}
        if kind == "fields":
            cfg |= {"num_frames": context, "num_val_future": steps, "min_stride": 1,
                    "max_stride": max(1, int(cfg.get("max_stride", 1)))}  # fmt: skip
        else:
            cfg |= {"window": context + steps, "history": context + steps, "standardize": False}
        cfg["prefetch"] = False
        self.module = instantiate(OmegaConf.create(cfg))
        self.kind, self.context, self.num_steps, self.num_trajectories = (
            kind,
            context,
            steps,
            num_trajectories,
        )
        self.source_names = list(self.module.pde_names)
        if kind == "fields":
            self.fields = tuple(self.module.fields)
        else:  # windows: the families' channel names when they agree, else channel_<i>
            d = self.module.spec["num_spatial_dims"]
            names = {tuple(field_names(f.name, d)) for f in self.module.families}
            count = self.module.spec["num_channels"]
            only = next(iter(names)) if len(names) == 1 else ()
            self.fields = only if len(only) == count else tuple(f"channel_{i}" for i in range(count))
        self.description = {"kind": "online", "target": cfg.get("_target_"), "seed": held_out,
                            "families": self.source_names}  # fmt: skip

    def __len__(self) -> int:
        return self.num_trajectories

    def batches(self) -> Iterator[dict[str, torch.Tensor]]:
        left = self.num_trajectories
        for batch in self.module.val_dataloader():
            if left <= 0:
                break
            if self.kind == "fields":
                frames, mask, source = batch["input"], batch["field_mask"], batch["source"]
            else:  # (B, T, C, *spatial) -> channels last
                frames = batch["input"].movedim(2, -1)
                mask = batch.get(
                    "channel_mask", torch.ones(frames.shape[0], frames.shape[-1], dtype=torch.bool)
                )
                source = batch["pde"]
            frames, mask, source = frames[:left], mask[:left], source[:left]
            left -= frames.shape[0]
            b, f = frames.shape[0], frames.shape[-1]
            yield {"frames": frames.cpu(), "mask": mask.cpu().bool(), "source": source.cpu(),
                   "shift": torch.zeros(b, f), "scale": torch.ones(b, f)}  # fmt: skip


# -------------------------------------------------------------------------------------------------- evaluation
def _forecast(task: Any, kind: str, window: torch.Tensor, mask: torch.Tensor, steps: int):
    """Rollout ``(B, steps, *spatial, F)`` and finite steps ``(B,)`` from a window in the model's units."""
    if kind == "fields":
        return task.rollout(window, mask, steps, stop_non_finite=True)

    def step(w: torch.Tensor) -> torch.Tensor:  # Tadpole: one frame (B, C, X, Y, Z) -> the next
        return task(w[:, -1].movedim(-1, 1)).movedim(1, -1)[:, None]

    return rollout(step, window[:, -1:], steps, num_frames=1)


def _progress(total: int):
    return tqdm(total=total, desc="rollouts", unit="trajectory")


@torch.no_grad()
def score_rollouts(
    task: Any, kind: str, data: Trajectories, context: int, device: torch.device
) -> tuple[dict[str, RolloutScores], dict[str, torch.Tensor]]:
    """Scores of the model and both baselines on every trajectory; and one example rollout for the picture."""
    scores = {name: RolloutScores() for name in _MODELS}
    example: dict[str, torch.Tensor] = {}
    bar = _progress(len(data))
    for batch in data.batches():
        frames = batch["frames"].double()
        mask, source = batch["mask"], batch["source"]
        shape = (frames.shape[0], *([1] * (frames.ndim - 2)), frames.shape[-1])
        shift, scale = batch["shift"].double().reshape(shape), batch["scale"].double().reshape(shape)
        ctx, truth = frames[:, :context], frames[:, context:]
        window = ((ctx - shift) / scale).float().to(device)
        predicted, finite = _forecast(task, kind, window, mask.to(device), truth.shape[1])
        predicted = predicted.double().cpu() * scale + shift
        scores["model"].add(predicted, truth, mask, source, finite.cpu())
        scores["persistence"].add(persistence(ctx, truth.shape[1]), truth, mask, source)
        scores["mean"].add(trajectory_mean(truth), truth, mask, source)
        if not example:
            example = {"truth": truth[0], "prediction": predicted[0], "mask": mask[0]}
        if bar is not None:
            bar.update(frames.shape[0])
    if bar is not None:
        bar.close()
    if not example:
        raise ValueError("the data gave no trajectory to evaluate; check data.path, --split and --start.")
    return scores, example


def _context(args: argparse.Namespace, kind: str, data_cfg: Mapping[str, Any], model: Any) -> int:
    if kind == "windows":
        if args.context not in (None, 1):
            raise ValueError(
                f"--context {args.context}: Tadpole dynamics steps from one frame; drop --context."
            )
        return 1
    context = args.context or data_cfg.get("num_frames") or getattr(model, "num_frames", None)
    if not context or int(context) < 1:
        raise ValueError(f"--context {context}: give the number of context frames (>= 1), e.g. --context 4.")
    return int(context)


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``pfm evaluate`` with parsed ``args``; returns the metrics.json record."""
    out = Path(args.out)
    _split_overrides(args.overrides)  # a bad override fails before the checkpoint is loaded
    model, config = load_for_evaluation(args.checkpoint)
    kind = _kind(model, config)
    device = torch.device(args.device)
    model = model.to(device).eval()
    if kind == "chains":
        return _evaluate_chains(model, config, args, out)
    windows = parse_windows(args.windows)
    data_cfg = data_config(config, args.overrides)
    context = _context(args, kind, data_cfg, model)
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps {args.steps}; expected >= 1 rollout steps.")
    if "path" in data_cfg:
        data: Trajectories = WellTrajectories(
            data_cfg, args.split, context, args.start, args.steps or max(hi for _, hi in windows),
            args.batch_size, args.num_trajectories,
        )  # fmt: skip
    else:
        if args.start:
            raise ValueError(
                "--start applies to datasets in files; online trajectories start at their first frame."
            )
        data = OnlineTrajectories(
            data_cfg, kind, context, args.steps or max(hi for _, hi in windows), args.num_trajectories or 16,
            args.seed,
        )  # fmt: skip
    vocabulary = getattr(model, "fields", None)
    unknown = [f for f in data.fields if vocabulary is not None and f not in vocabulary]
    if unknown:
        raise ValueError(
            f"the data's fields {unknown} are not in the model's vocabulary {list(vocabulary)}: it cannot predict "
            "them. Fine-tune it on this data first (head=gphyt_fields adds fields), or map names with "
            "data.rename={the_well_name: model_name}."
        )
    task = _task(model, config, kind, data.fields, context).to(device)
    scores, example = score_rollouts(task, kind, data, context, device)
    results = summarise(scores, data.fields, data.source_names, windows)
    record = {
        "checkpoint": str(args.checkpoint),
        "model_class": type(model).__name__,
        "kind": kind,
        "data": data.description,
        "context": context,
        "num_steps": data.num_steps,
        "num_trajectories": int(scores["model"].finite.numel()),
        "windows": sorted({r["window"] for r in results["rows"]}, key=lambda w: int(w.split("-")[0])),
        "fields": list(data.fields),
        "sources": data.source_names,
        "units": "physical",
        **results,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", record)
    table = markdown_table(results, _MODELS, data.fields)
    header = (
        f"# pfm evaluate {args.checkpoint}\n\n{record['num_trajectories']} trajectories, context {context}, "
        f"{data.num_steps} rollout steps; cells: mean / median over trajectories.\n\n"
    )

    with atomic_path(out / "metrics.md") as tmp:
        tmp.write_text(header + table)
    print(table, end="")
    plot_error_vs_step(results, out / "error_vs_step.png")
    c = int(torch.nonzero(example["mask"]).flatten()[0])
    plot_rollout(example["truth"][..., c], example["prediction"][..., c], data.fields[c], out / "rollout.png")
    print(f"wrote {out / 'metrics.json'}, metrics.md, error_vs_step.png, rollout.png")
    return record


def _evaluate_chains(
    model: Any, config: Mapping[str, Any], args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    """TITO/PLaTITO: rollouts against a long simulation of an unseen chain (pfm.evaluation.chains)."""

    _, _, evaluation = _split_overrides(args.overrides)
    data_cfg = data_config(config, args.overrides)
    if "simulation" not in dir(get_target(data_cfg)):
        raise ValueError(
            f"TITO/PLaTITO are evaluated against long simulations of online chains; data {data_cfg.get('_target_')} "
            "has none. Use data=online_chains."
        )
    settings = dict((config.get("task") or {}).get("evaluation") or {})
    settings |= OmegaConf.to_container(OmegaConf.from_dotlist(evaluation))
    datamodule = instantiate(OmegaConf.create(data_cfg))
    out.mkdir(parents=True, exist_ok=True)
    results = evaluate_chains(model, datamodule, out_dir=out, **settings)
    record = {"checkpoint": str(args.checkpoint), "model_class": type(model).__name__, "kind": "chains",
              "settings": settings, "metrics": results}  # fmt: skip
    write_json(out / "metrics.json", _json_safe(record))
    lines = ["| metric | value |", "|---|---|", *(f"| {k} | {v:.4g} |" for k, v in results.items())]

    with atomic_path(out / "metrics.md") as tmp:
        tmp.write_text(f"# pfm evaluate {args.checkpoint}\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out / 'metrics.json'}, metrics.md, fes.png")
    return record


def get_target(cfg: Mapping[str, Any]) -> Any:
    """The class a config's ``_target_`` names."""

    return get_class(str(cfg["_target_"]))


def _json_safe(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, Mapping | DictConfig):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    return x


def evaluate_checkpoint(
    checkpoint: str | Path, out: str | Path, overrides: Sequence[str] = (), **options: Any
) -> dict[str, Any]:
    """``pfm evaluate`` from Python (recipes, sweeps): returns the metrics.json record.

    ``options`` are the command's flags with underscores, e.g. ``steps=10, windows="1,2-5", num_trajectories=8``.
    """
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["evaluate", str(checkpoint), *overrides, "--out", str(out)])
    unknown = sorted(set(options) - set(vars(args)))
    if unknown:
        raise TypeError(f"evaluate_checkpoint got unknown options {unknown}; known: {sorted(vars(args))}.")
    for key, value in options.items():
        setattr(args, key, value)
    return evaluate(args)


def run(args: argparse.Namespace) -> int:
    """Run `pfm evaluate` with the arguments :mod:`pfm.commands` parsed."""
    evaluate(args)
    return 0
