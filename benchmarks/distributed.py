"""Distributed benchmarks: per-rank memory of DDP vs DeepSpeed ZeRO-1/2/3, and pfm-loop overhead.

    DS_ACCELERATOR=cpu python benchmarks/distributed.py memory   [--width 2048 --depth 24 --steps 3]
    python benchmarks/distributed.py overhead [--model tadpole_s --batch 1 --crop 16 --steps 30 --rounds 5]

**memory**: 2 CPU processes (gloo), a ~100M-parameter MLP, AdamW, fp32. The DeepSpeed configs are the ones
pfm builds (``build_strategy(...).config``) and every row but the "glibc" ones fixes glibc's mmap threshold
as ``build_strategy`` does (:mod:`pfm.distributed.memory`). Extra rows: ZeRO-3 with Lightning's stock
buffer sizes and glibc's default (what pfm did before), ZeRO-3 with pfm's buffers and glibc's default, and
ZeRO-3 with the model built full-size then partitioned (what happens when the model is not built under
``deepspeed.zero.Init``). DDP vs pfm's ddp rows are the reference for the ratios. Per rank, against the RSS
after imports and process-group set-up:
- *peak*: the resident set sampled every millisecond by a thread, set-up and training separately;
- *steady*: the resident set after the last step;
- *tensors*: bytes of all live tensor storages after the last step (found through ``gc``), which is what a
  GPU would hold; on CPU untouched pages of a ``torch.empty`` buffer count here but not in the RSS.
Target: ZeRO-3 peak at most 0.6x DDP.

**overhead**: one process. pfm's training loop (Lightning ``Trainer`` with pfm's single strategy, its
ThroughputMonitor and GlobalLoss callbacks, a CSV logger and gradient clipping) against a bare PyTorch loop
(forward, the task's own loss, backward, ``clip_grad_norm_``, optimizer and scheduler step, ``loss.item()``),
on the same Tadpole model, the same pre-generated batches, the same optimizer and the same initial weights.
Step time is the median interval between consecutive step ends (the first ``--warmup`` steps dropped);
the loops alternate for ``--rounds`` rounds so that load from other processes hits both alike. Target: pfm at
most 5% slower.
"""

from __future__ import annotations

import argparse
import copy
import gc
import itertools
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PAGE = os.sysconf("SC_PAGE_SIZE")


# ----------------------------------------------------------------------------------------------- memory


def _model(width: int, depth: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.GELU()) for _ in range(depth)])


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


class _Sampler(threading.Thread):
    """Samples this process's RSS every millisecond; ``phase()`` returns the peak since the last call."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = _rss_mib()
        self.running = True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, _rss_mib())
            time.sleep(0.001)

    def phase(self) -> float:
        peak, self.peak = max(self.peak, _rss_mib()), _rss_mib()
        return peak


def _live_tensor_mib() -> float:
    """Bytes of every distinct live tensor storage (parameters, gradients, optimizer state, buffers)."""
    gc.collect()
    storages: dict[int, int] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for obj in gc.get_objects():
            try:
                if isinstance(obj, torch.Tensor) and not obj.is_meta:
                    storage = obj.untyped_storage()
                    storages[storage.data_ptr()] = max(storages.get(storage.data_ptr(), 0), storage.nbytes())
            except Exception:  # some lazy tensor subclasses refuse storage access; skip them
                continue
    return sum(storages.values()) / 2**20


def _deepspeed_config(kind: str) -> dict[str, Any]:
    """The DeepSpeed config pfm builds for ``kind`` (or Lightning's stock ZeRO-3 defaults for zero3_stock)."""
    if kind == "zero3_stock":
        from lightning.pytorch.strategies import DeepSpeedStrategy

        config = copy.deepcopy(DeepSpeedStrategy(stage=3).config)
    else:
        from pfm.distributed import build_strategy

        stage = kind.removeprefix("zero")[0]
        strategy = build_strategy(f"deepspeed_zero{stage}", accelerator="cpu").trainer_kwargs["strategy"]
        config = copy.deepcopy(strategy.config)
    config["train_micro_batch_size_per_gpu"] = 8
    config.pop("activation_checkpointing", None)
    config.pop("aio", None)
    return config


def _worker(rank: int, world: int, port: int, kind: str, width: int, depth: int, steps: int, out) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        DS_ACCELERATOR="cpu",
    )
    import deepspeed

    deepspeed.init_distributed("gloo")
    if kind not in LIBC_DEFAULT:
        from pfm.distributed import set_cpu_mmap_threshold

        set_cpu_mmap_threshold(1.0)  # what build_strategy does in every multi-process CPU run
    base = _rss_mib()
    sampler = _Sampler()
    sampler.start()
    x = torch.randn(8, width)
    if kind.startswith("ddp"):
        net = _model(width, depth)
        model = nn.parallel.DistributedDataParallel(net, gradient_as_bucket_view=kind == "ddp_view")
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        setup = sampler.phase()
        for _ in range(steps):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    else:
        config = _deepspeed_config(kind)
        if kind.startswith("zero3") and kind != "zero3_fullbuild":
            with deepspeed.zero.Init(config_dict_or_path=config):
                net = _model(width, depth)
        else:
            net = _model(width, depth)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        engine, *_ = deepspeed.initialize(
            model=net,
            optimizer=opt,
            config=config,
            args=argparse.Namespace(device_rank=rank),
            dist_init_required=False,
        )
        setup = sampler.phase()
        for _ in range(steps):
            loss = engine(x).pow(2).mean()
            engine.backward(loss)
            engine.step()
    train = sampler.phase()
    sampler.running = False
    gc.collect()
    steady = _rss_mib()
    tensors = _live_tensor_mib()
    out.put(
        (rank, {"setup": setup - base, "train": train - base, "steady": steady - base, "tensors": tensors})
    )
    torch.distributed.destroy_process_group()


MEMORY_KINDS = {
    "ddp_libc": "DDP, glibc default threshold",
    "ddp": "DDP (as pfm's ddp)",
    "ddp_view": "DDP, gradient_as_bucket_view",
    "zero1": "ZeRO-1 (pfm)",
    "zero2": "ZeRO-2 (pfm)",
    "zero3_stock": "ZeRO-3, Lightning defaults, glibc",
    "zero3_libc": "ZeRO-3, pfm buffers, glibc",
    "zero3_fullbuild": "ZeRO-3 (pfm), model built full",
    "zero3": "ZeRO-3 (pfm), zero.Init",
}
# rows that keep glibc's dynamic mmap threshold (what pfm did before set_cpu_mmap_threshold)
LIBC_DEFAULT = ("ddp_libc", "zero3_stock", "zero3_libc")


def memory(args: argparse.Namespace) -> None:
    """Run each strategy with 2 processes and print per-rank memory against DDP."""
    num_params = sum(p.numel() for p in _model(args.width, args.depth).parameters())
    print(
        f"model: {num_params / 1e6:.1f}M parameters, 2 CPU processes (gloo), AdamW, fp32, {args.steps} steps"
    )
    print(f"load average before: {os.getloadavg()}")
    ctx = mp.get_context("spawn")
    results: dict[str, dict[str, float]] = {}
    header = f"{'strategy':34s} {'peak setup':>11s} {'peak train':>11s} {'peak':>7s} {'vs DDP':>7s}"
    print(
        header + f" {'steady':>7s} {'vs DDP':>7s} {'tensors':>8s} {'vs DDP':>7s}   (MiB per rank, worst rank)"
    )
    for kind in args.kinds:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        queue = ctx.Queue()
        procs = [
            ctx.Process(target=_worker, args=(r, 2, port, kind, args.width, args.depth, args.steps, queue))
            for r in range(2)
        ]
        for p in procs:
            p.start()
        ranks = [queue.get(timeout=1800)[1] for _ in procs]
        for p in procs:
            p.join()
        row = {key: max(r[key] for r in ranks) for key in ranks[0]}
        row["peak"] = max(row["setup"], row["train"])
        results[kind] = row
        ref = results.get("ddp", results.get("ddp_libc", row))
        print(
            f"{MEMORY_KINDS[kind]:34s} {row['setup']:11.0f} {row['train']:11.0f} {row['peak']:7.0f} "
            f"{row['peak'] / ref['peak']:6.2f}x {row['steady']:7.0f} {row['steady'] / ref['steady']:6.2f}x "
            f"{row['tensors']:8.0f} {row['tensors'] / ref['tensors']:6.2f}x",
            flush=True,
        )
    print(f"load average after: {os.getloadavg()}")


# --------------------------------------------------------------------------------------------- overhead


class _StepClock:
    """Wall and process-CPU time stamps at the end of every step."""

    def __init__(self) -> None:
        self.stamps: list[tuple[float, float]] = []

    def tick(self) -> None:
        self.stamps.append((time.perf_counter(), time.process_time()))

    def per_step(self, warmup: int) -> tuple[float, float]:
        stamps = self.stamps[warmup:]
        wall = [b[0] - a[0] for a, b in itertools.pairwise(stamps)]
        cpu = [b[1] - a[1] for a, b in itertools.pairwise(stamps)]
        return statistics.median(wall), statistics.median(cpu)


def _build(args: argparse.Namespace) -> tuple[Any, list[dict[str, torch.Tensor]], dict[str, Any], Any]:
    from hydra import compose, initialize_config_dir

    from pfm.build import CONF_DIR, build_task

    overrides = [
        f"model={args.model}",
        f"data.n={args.n}",
        f"data.crop={args.crop}",
        f"data.batch_size={args.batch}",
        "data.num_trajectories=2",
        "task.sample_latent=false",  # no noise, so both loops compute the same numbers
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    torch.manual_seed(0)
    datamodule, task = build_task(cfg)
    datamodule.setup("fit")
    batches = [datamodule.next_batch() for _ in range(args.steps)]
    return task, batches, copy.deepcopy(task.state_dict()), cfg


def _bare_loop(task: Any, batches: list[dict[str, torch.Tensor]], clip: float) -> tuple[_StepClock, float]:
    """The plain PyTorch loop: the task's loss, backward, clipping, optimizer and scheduler step."""
    config = task.configure_optimizers()
    optimizer = config["optimizer"] if isinstance(config, dict) else config
    scheduler = config["lr_scheduler"]["scheduler"] if isinstance(config, dict) else None
    params = [p for p in task.parameters() if p.requires_grad]
    task.train()
    clock = _StepClock()
    value = float("nan")
    for batch in batches:
        loss = task._losses(batch["input"], task.sample_latent)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        value = loss.item()  # any loop that reports its loss syncs here; pfm's finite check does too
        clock.tick()
    return clock, value


def _pfm_loop(
    task: Any, batches: list[dict[str, torch.Tensor]], cfg: Any, out: Path
) -> tuple[_StepClock, float]:
    """pfm's loop: Lightning Trainer, pfm's single strategy, pfm's per-step callbacks, CSV logging."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from pfm.callbacks import GlobalLoss, ThroughputMonitor
    from pfm.distributed import build_strategy

    clock = _StepClock()

    class Clock(L.Callback):
        def on_train_batch_end(self, *args: Any) -> None:
            clock.tick()

    losses: list[float] = []

    class LastLoss(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, *args: Any) -> None:
            losses.append(float(outputs["loss"]) if isinstance(outputs, dict) else float(outputs))

    setup = build_strategy("single", accelerator="cpu")
    trainer = L.Trainer(
        max_steps=len(batches),
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=CSVLogger(out, name="csv", version=""),
        callbacks=[ThroughputMonitor(), GlobalLoss(), Clock(), LastLoss()],
        enable_progress_bar=False,
        enable_checkpointing=False,  # checkpoints cost per N steps, not per step; measured apart
        enable_model_summary=False,
        **setup.trainer_kwargs,
    )
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
    trainer.fit(task, train_dataloaders=loader)
    return clock, losses[-1]


def overhead(args: argparse.Namespace) -> None:
    """Alternate the bare loop and pfm's loop on identical inputs and print time per step side by side."""
    import logging

    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    task, batches, initial, cfg = _build(args)
    num_params = sum(p.numel() for p in task.parameters())
    print(
        f"model={args.model} ({num_params / 1e6:.1f}M parameters), batch {args.batch} x {args.crop}^3 crops, "
        f"{args.steps} steps ({args.warmup} warm-up dropped), {torch.get_num_threads()} threads, fp32, CPU"
    )
    print(f"load average before: {os.getloadavg()}")
    print(
        f"{'round':>5s} {'bare s/step':>12s} {'pfm s/step':>11s} {'ratio':>6s} {'bare cpu-s':>11s} {'pfm cpu-s':>10s} {'ratio':>6s}"
    )
    walls, cpus = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            task.load_state_dict(initial)
            bare, bare_loss = _bare_loop(task, batches, cfg.trainer.gradient_clip_val)
            task.load_state_dict(initial)
            pfm, pfm_loss = _pfm_loop(task, batches, cfg, Path(tmp) / f"r{r}")
            (bw, bc), (pw, pc) = bare.per_step(args.warmup), pfm.per_step(args.warmup)
            walls.append(pw / bw)
            cpus.append(pc / bc)
            print(
                f"{r:5d} {bw:12.4f} {pw:11.4f} {pw / bw:6.3f} {bc:11.4f} {pc:10.4f} {pc / bc:6.3f}",
                flush=True,
            )
            if not abs(pfm_loss - bare_loss) <= 1e-4 * abs(bare_loss) + 1e-6:
                print(f"  warning: final losses differ: pfm {pfm_loss:.6g} vs bare {bare_loss:.6g}")
    print(
        f"median pfm/bare: wall {statistics.median(walls):.3f}x, CPU time {statistics.median(cpus):.3f}x "
        f"(target <= 1.05x)"
    )
    print(f"load average after: {os.getloadavg()}")


def main() -> None:
    """Parse the sub-benchmark and its options and run it."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="bench", required=True)
    mem = sub.add_parser("memory", help="per-rank memory, DDP vs ZeRO-1/2/3, 2 CPU processes")
    mem.add_argument("--width", type=int, default=2048)
    mem.add_argument("--depth", type=int, default=24)
    mem.add_argument("--steps", type=int, default=3)
    mem.add_argument("--kinds", nargs="+", default=list(MEMORY_KINDS), choices=list(MEMORY_KINDS))
    over = sub.add_parser("overhead", help="pfm loop vs bare PyTorch loop, time per step, 1 process")
    over.add_argument("--model", default="tadpole_s")
    over.add_argument("--n", type=int, default=32, help="simulation grid size")
    over.add_argument("--crop", type=int, default=16)
    over.add_argument("--batch", type=int, default=1)
    over.add_argument("--steps", type=int, default=30)
    over.add_argument("--warmup", type=int, default=5)
    over.add_argument("--rounds", type=int, default=5)
    over.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)"
    )
    args = parser.parse_args()
    memory(args) if args.bench == "memory" else overhead(args)


if __name__ == "__main__":
    main()
