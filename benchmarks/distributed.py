"""Per-rank peak memory of DDP against DeepSpeed ZeRO-1/2/3, 2 CPU processes (gloo), ~100M-parameter model.

    DS_ACCELERATOR=cpu python benchmarks/distributed.py [--width 2048 --depth 12 --steps 3]

Peak memory is the growth of each rank's peak resident set over its baseline after imports and process-group
set-up, so library code is not counted. Target: ZeRO-3 at most 0.6x DDP.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket

import torch
import torch.multiprocessing as mp
from torch import nn


def _model(width: int, depth: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.GELU()) for _ in range(depth)])


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


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
    base = _peak_mib()
    x = torch.randn(8, width)
    if kind == "ddp":
        model = nn.parallel.DistributedDataParallel(_model(width, depth))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for _ in range(steps):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    else:
        stage = int(kind[-1])
        config = {
            "train_micro_batch_size_per_gpu": 8,
            "zero_optimization": {"stage": stage},
            "zero_allow_untested_optimizer": True,
        }
        if stage == 3:
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
        for _ in range(steps):
            loss = engine(x).pow(2).mean()
            engine.backward(loss)
            engine.step()
    out.put((kind, rank, _peak_mib() - base))
    torch.distributed.destroy_process_group()


def main() -> None:
    """Run each strategy with 2 processes and print per-rank peak memory against DDP."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--depth", type=int, default=24)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    num_params = sum(p.numel() for p in _model(args.width, args.depth).parameters())
    print(f"model: {num_params / 1e6:.1f}M parameters, 2 CPU processes (gloo), AdamW, fp32")
    ctx = mp.get_context("spawn")
    results: dict[str, float] = {}
    for kind in ("ddp", "zero1", "zero2", "zero3"):
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
        peaks = [queue.get(timeout=900)[2] for _ in procs]
        for p in procs:
            p.join()
        results[kind] = max(peaks)
        print(
            f"{kind:6s} peak per rank: {results[kind]:8.0f} MiB  ({results[kind] / results['ddp']:.2f}x DDP)"
        )


if __name__ == "__main__":
    main()
