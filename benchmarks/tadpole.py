"""Tadpole autoencoder training-step throughput and peak memory: attention_backend "sdpa" vs "math".

Each (crop, backend) runs in a fresh process, so that peak memory is its own:
- CPU: peak resident set size (`resource.getrusage(RUSAGE_SELF).ru_maxrss`) over all steps, minus the RSS just
  before the first step (weights and input already allocated): the activation and gradient memory of a step.
- CUDA: `torch.cuda.max_memory_allocated()` over all steps, minus the memory allocated before the first step.
A step is forward + MSE loss + backward on random (batch, 1, crop, crop, crop) crops; float32, no optimizer.
Throughput is batch / median wall time of a step; on a shared machine also read the CPU time per step
(process time over all threads, median), which other processes' load disturbs much less.

Usage:
    python benchmarks/tadpole.py                       # S, crops 64 and 32, batch 2
    python benchmarks/tadpole.py --size B --crops 32 --batch 4 --steps 5 --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _timing.py, also when this file is imported
from _timing import peak_rss_mib, rss_mib, run_worker, time_calls


def _worker(
    size: str, crop: int, backend: str, batch: int, steps: int, warmup: int, device: str, threads: int | None
) -> dict:
    """Time `steps` training steps of one configuration in this process; return the figures."""
    import torch

    from pfm.models.tadpole import TadpoleAutoencoder

    if threads:
        torch.set_num_threads(threads)

    torch.manual_seed(0)
    model = TadpoleAutoencoder(size, crop_size=crop, attention_backend=backend).to(device).train()
    x = torch.randn(batch, 1, crop, crop, crop, device=device)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(x), x).backward()

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    sync()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = rss_mib()
    times, cpu_times = time_calls(step, steps, warmup, sync)
    step_s = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else peak_rss_mib()
    return {
        "crops_per_s": batch / step_s,
        "step_s": step_s,
        "cpu_s": statistics.median(cpu_times),
        "peak_mib": peak - base,
    }


def main() -> None:
    """Parse flags, run every configuration in a subprocess, print a side-by-side table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="S", choices=["S", "B", "L"])
    parser.add_argument("--crops", type=int, nargs="+", default=[64, 32], help="crop edges (multiples of 16)")
    parser.add_argument("--batch", type=int, default=2, help="crops per step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, help="CPU threads per run (default: torch's default)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(_worker(**json.loads(args.worker))))
        return

    import torch

    memory = "peak RSS above the pre-step baseline" if args.device == "cpu" else "peak CUDA allocated"
    print(
        f"Tadpole-{args.size} forward+backward, batch {args.batch}, {args.steps} timed steps after "
        f"{args.warmup} warm-up, device {args.device}, torch {torch.__version__}, "
        f"{args.threads or torch.get_num_threads()} threads; memory = {memory}"
    )
    header = (
        f"{'crop':>5} | {'sdpa crops/s':>12} {'math crops/s':>12} {'speed-up':>8} | "
        f"{'sdpa CPU s':>10} {'math CPU s':>10} {'ratio':>6} | "
        f"{'sdpa MiB':>9} {'math MiB':>9} {'mem ratio':>9}"
    )
    print(header)
    print("-" * len(header))
    for crop in args.crops:
        results = {}
        for backend in ("sdpa", "math"):
            config = dict(
                size=args.size,
                crop=crop,
                backend=backend,
                batch=args.batch,
                steps=args.steps,
                warmup=args.warmup,
                device=args.device,
                threads=args.threads,
            )
            results[backend] = run_worker(__file__, config)
        s, m = results["sdpa"], results["math"]
        print(
            f"{crop:>5} | {s['crops_per_s']:>12.3f} {m['crops_per_s']:>12.3f} "
            f"{s['crops_per_s'] / m['crops_per_s']:>7.2f}x | "
            f"{s['cpu_s']:>10.2f} {m['cpu_s']:>10.2f} {s['cpu_s'] / m['cpu_s']:>6.2f} | "
            f"{s['peak_mib']:>9.0f} {m['peak_mib']:>9.0f} {s['peak_mib'] / m['peak_mib']:>9.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
