"""GPhyT forward and training-step speed and memory: pfm's `GPhyT` beside the official-style computation.

CPU mode (default): GPhyT-S on the official input (batch, 4, 256, 128, 5), fp32. The reference is written here
the way the official code computes (finite differences by conv3d, Conv3d tokenizer, a bias-free `to_qkv`
Linear feeding `nn.MultiheadAttention` (which projects q, k, v a second time and, with its default
`need_weights=True`, takes the slow path), ConvTranspose3d detokenizer over every frame, Euler on the last
frame). pfm loads the same weights through `GPhyT.from_official` (q/k/v folded into one matrix). Each
(model, phase) runs in a fresh process so that its peak memory is its own:
- forward: `torch.no_grad()` prediction of the next frame;
- train: forward + MSE against a random target + backward (no optimizer step).
Memory is the peak resident set size over all calls minus the RSS just before the first one (weights and
input already allocated). The numerics line compares both outputs for the same weights and input.

GPU mode (`--device cuda --size M --bf16`): first GPhyT-S numerics on the GPU (batch 2; fp32 with TF32 off, sdpa
and xformers when installed, and bf16 autocast, each against the fp32 reference), then GPhyT-M training
throughput in a plain loop (AdamW, bf16 autocast, SDPA attention; not through pfm-train), samples/s and MFU
against the H200's dense bf16 peak of 989 TFLOP/s.
Training FLOPs are counted analytically as 3x the forward matmul FLOPs: per layer 2N(3D^2 + D^2 + 2DM) for
the projections and MLP plus 4N^2 D for attention scores and values (N tokens, D hidden, M MLP width), plus
tokenizer 2N(4C * P)D and detokenizer 2(N/T)D(C * P) (P pixels per patch). Element-wise work is not counted.

Usage:
    python benchmarks/gphyt.py                                  # CPU, S, batch 1
    python benchmarks/gphyt.py --threads 1 --steps 5
    python benchmarks/gphyt.py --device cuda --size M --bf16 --batch 32 --steps 20
    python benchmarks/gphyt.py --throughput --size S --batch 1 --steps 1 --bf16   # the same loop on CPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _timing.py, also when this file is imported
from _timing import peak_rss_mib, rss_mib, run_worker, time_calls

FIELDS, FRAMES, GRID, PATCH = 5, 4, (256, 128), (1, 16, 16)
H200_BF16_PEAK = 989e12


def _reference(size: str):
    """The official-style GPhyT with random weights in the official layout (seed 0)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from pfm.models.gphyt import GPHYT_SIZES

    w = GPHYT_SIZES[size]
    dim, heads = w["hidden_dim"], w["num_heads"]

    class Derivatives(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            stencil = torch.tensor([-1.0, 0.0, 1.0])
            for axis, shape in (("t", (3, 1, 1)), ("h", (1, 3, 1)), ("w", (1, 1, 3))):
                self.register_buffer(f"d{axis}_filter", stencil.view(1, 1, *shape).repeat(FIELDS, 1, 1, 1, 1))

        @torch.no_grad()
        def forward(self, x):
            c = x.permute(0, 4, 1, 2, 3)
            pads = {"t": (0, 0, 0, 0, 1, 1), "h": (0, 0, 1, 1, 0, 0), "w": (1, 1, 0, 0, 0, 0)}
            out = [c] + [
                F.conv3d(F.pad(c, pads[a], mode="replicate"), getattr(self, f"d{a}_filter"), groups=FIELDS)
                for a in "thw"
            ]
            return torch.cat(out, 1).permute(0, 2, 3, 4, 1)

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
            self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)

        def forward(self, x):
            shape = x.shape
            q, k, v = self.to_qkv(x).flatten(1, 3).chunk(3, dim=-1)
            return self.attention(q, k, v)[0].reshape(shape)  # need_weights=True, as the official code

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = Attention()
            self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.mlp = nn.Module()
            self.mlp.mlp = nn.Sequential(
                nn.Linear(dim, w["mlp_dim"]), nn.GELU(), nn.Linear(w["mlp_dim"], dim)
            )

        def forward(self, x):
            x = self.attention(self.norm1(x)) + x
            return self.mlp.mlp(self.norm2(x)) + x

    class Reference(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.derivatives = Derivatives()
            self.tokenizer = nn.Module()
            self.tokenizer.register_buffer("patch_size", torch.tensor(PATCH))
            self.tokenizer.tokenizer = nn.Module()
            self.tokenizer.tokenizer.to_patch_embedding = nn.Sequential(
                nn.Identity(), nn.Conv3d(4 * FIELDS, dim, PATCH, stride=PATCH)
            )
            self.init_pos_encodings = nn.Module()
            self.init_pos_encodings.pe = nn.Parameter(
                0.02 * torch.randn(1, FRAMES, GRID[0] // PATCH[1], GRID[1] // PATCH[2], dim)
            )
            self.attention_blocks = nn.Sequential(*(Block() for _ in range(w["num_layers"])))
            self.detokenizer = nn.Module()
            self.detokenizer.detokenizer = nn.Module()
            self.detokenizer.detokenizer.from_patch_embedding = nn.Sequential(
                nn.Identity(), nn.ConvTranspose3d(dim, FIELDS, PATCH, stride=PATCH)
            )

        def forward(self, x):
            tokens = self.tokenizer.tokenizer.to_patch_embedding(self.derivatives(x).permute(0, 4, 1, 2, 3))
            tokens = self.attention_blocks(tokens.permute(0, 2, 3, 4, 1) + self.init_pos_encodings.pe)
            out = self.detokenizer.detokenizer.from_patch_embedding(tokens.permute(0, 4, 1, 2, 3))
            return (out.permute(0, 2, 3, 4, 1) + x)[:, -1:]

    torch.manual_seed(0)
    return Reference()


def _models(size: str, which: str, backend: str = "sdpa"):
    """`which` = "pfm" (attention `backend`) or "reference": the model with the seed-0 official-layout weights."""
    from pfm.models import GPhyT

    ref = _reference(size)
    if which == "reference":
        return ref
    return GPhyT.from_official(ref.state_dict(), size=size, attention_backend=backend)


def _cpu_worker(
    size: str,
    which: str,
    phase: str,
    batch: int,
    steps: int,
    warmup: int,
    threads: int | None,
    backend: str = "sdpa",
) -> dict:
    """Time `steps` calls of one (model, phase) in this process; return ms per call and peak memory."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    model = _models(size, which, backend)
    torch.manual_seed(1)
    x = torch.randn(batch, FRAMES, *GRID, FIELDS)
    target = torch.randn(batch, 1, *GRID, FIELDS)

    def call() -> None:
        if phase == "forward":
            model.eval()
            with torch.no_grad():
                model(x)
        else:
            model.train()
            model.zero_grad(set_to_none=True)
            torch.nn.functional.mse_loss(model(x), target).backward()

    base = rss_mib()
    times, cpu_times = time_calls(call, steps, warmup)
    peak = peak_rss_mib()
    return {
        "ms": 1e3 * statistics.median(times),
        "cpu_ms": 1e3 * statistics.median(cpu_times),
        "peak_mib": peak - base,
    }


def _numerics(size: str, batch: int, device: str = "cpu", backends: tuple[str, ...] = ("sdpa",)) -> dict:
    """Max abs and relative difference of pfm's outputs from the reference's (same weights and input).

    The reference runs in fp32; pfm in fp32 with each attention backend in `backends`, and in bf16 autocast
    (sdpa) on CUDA. Keys: "<backend>" and "bf16", each {"max_abs", "max_rel"}.
    """
    import torch

    from pfm.models import GPhyT

    ref = _reference(size).eval().to(device)
    torch.manual_seed(1)
    x = torch.randn(batch, FRAMES, *GRID, FIELDS, device=device)
    results = {}
    with torch.no_grad():
        b = ref(x)
        for backend in backends:
            ours = (
                GPhyT.from_official(ref.state_dict(), size=size, attention_backend=backend).eval().to(device)
            )
            results[backend] = ours(x)
        if device == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                results["bf16"] = ours(x).float()
    scale = b.abs().max().item()
    out = {}
    for key, a in results.items():
        diff = (a - b).abs().max().item()
        out[key] = {"max_abs": diff, "max_rel": diff / scale}
    return out


def _cuda_checks(size: str) -> None:
    """Numerics on the GPU: fp32 (sdpa, and xformers when installed) and bf16 against the fp32 reference."""
    import torch

    # fp32 means fp32: TF32 matmuls would add ~1e-3 relative error to both sides
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    backends: tuple[str, ...] = ("sdpa",)
    try:
        import xformers.ops  # noqa: F401

        backends += ("xformers",)
    except ImportError:
        print("  (xformers not installed: attention_backend=xformers not checked)")
    for key, n in _numerics(size, 2, "cuda", backends).items():
        label = f"bf16 autocast ({backends[-1]})" if key == "bf16" else f"fp32 {key}"
        print(
            f"  numerics GPhyT-{size} on CUDA, {label}: max |pfm - fp32 reference| = {n['max_abs']:.2e} ({n['max_rel']:.2e} of max |reference|)"
        )


def _train_flops(size: str, batch: int) -> float:
    """Analytic training FLOPs of one step: 3 x forward matmuls (see the module docstring)."""
    from pfm.models.gphyt import GPHYT_SIZES

    w = GPHYT_SIZES[size]
    d, m = w["hidden_dim"], w["mlp_dim"]
    pixels = PATCH[0] * PATCH[1] * PATCH[2]
    n = FRAMES // PATCH[0] * (GRID[0] // PATCH[1]) * (GRID[1] // PATCH[2])
    per_layer = 2 * n * (3 * d * d + d * d + 2 * d * m) + 4 * n * n * d
    forward = (
        w["num_layers"] * per_layer
        + 2 * n * 4 * FIELDS * pixels * d
        + 2 * (n // FRAMES) * d * FIELDS * pixels
    )
    return 3.0 * forward * batch


def _throughput(
    device_name: str,
    size: str,
    batch: int,
    steps: int,
    warmup: int,
    bf16: bool,
    backend: str,
    threads: int | None,
) -> None:
    """GPhyT training throughput in a plain loop; prints samples/s, TFLOP/s and (CUDA) MFU."""
    import torch

    from pfm.models import GPhyT

    if threads:
        torch.set_num_threads(threads)

    device = torch.device(device_name)
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    torch.manual_seed(0)
    model = GPhyT(size, attention_backend=backend).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
    x = torch.randn(batch, FRAMES, *GRID, FIELDS, device=device)
    target = torch.randn(batch, 1, *GRID, FIELDS, device=device)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.mse_loss(model(x).float(), target)
        loss.backward()
        optimizer.step()
        return loss

    for _ in range(warmup):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync()
    elapsed = (time.perf_counter() - start) / steps
    flops = _train_flops(size, batch)
    params = sum(p.numel() for p in model.parameters())
    where = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"GPhyT-{size} ({params / 1e6:.1f}M params) training on {where}, batch {batch}, "
        f"{'bf16 autocast' if bf16 else 'fp32'}, attention {backend}, AdamW, plain loop (not pfm-train), "
        f"{steps} steps after {warmup} warm-up"
    )
    mfu = f", MFU {flops / elapsed / H200_BF16_PEAK:.1%} of 989 TFLOP/s (H200 dense bf16)" if cuda else ""
    memory = f", peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if cuda else ""
    print(
        f"  {1e3 * elapsed:.1f} ms/step, {batch / elapsed:.2f} samples/s, {flops / elapsed / 1e12:.2f} TFLOP/s "
        f"({flops / batch / 1e9:.1f} GFLOP per sample, analytic){mfu}{memory}, last loss {loss.item():.4f}"
    )


def main() -> None:
    """Parse flags; CPU: run each (model, phase) in a subprocess and print a side-by-side table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size", default=None, choices=["S", "M", "L", "XL"], help="default S on CPU, M on CUDA"
    )
    parser.add_argument("--batch", type=int, default=None, help="default 1 on CPU, 32 on CUDA")
    parser.add_argument("--steps", type=int, default=None, help="timed calls (default 3 on CPU, 20 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 1 / 5)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--bf16", action="store_true", help="CUDA: bf16 autocast")
    parser.add_argument(
        "--attention-backend",
        default="sdpa",
        choices=["sdpa", "math", "xformers"],
        help="pfm's attention (xformers: CUDA)",
    )
    parser.add_argument(
        "--throughput",
        action="store_true",
        help="the training-throughput loop (default on CUDA) on this device",
    )
    parser.add_argument("--threads", type=int, help="CPU threads per run (default: torch's default)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(_cpu_worker(**json.loads(args.worker))))
        return
    cuda = args.device == "cuda"
    size = args.size or ("M" if cuda else "S")
    batch = args.batch or (32 if cuda else 1)
    steps = args.steps or (20 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    if cuda or args.throughput:
        if cuda:
            _cuda_checks("S")
        _throughput(args.device, size, batch, steps, warmup, args.bf16, args.attention_backend, args.threads)
        return

    import torch

    print(
        f"GPhyT-{size}, input ({batch}, {FRAMES}, {GRID[0]}, {GRID[1]}, {FIELDS}), fp32, {steps} timed calls after "
        f"{warmup} warm-up, torch {torch.__version__}, {args.threads or torch.get_num_threads()} threads, pfm "
        f"attention {args.attention_backend}; memory = peak RSS above the pre-call baseline"
    )
    header = f"{'phase':>8} | {'pfm ms':>8} {'ref ms':>8} {'speed-up':>8} | {'pfm CPU ms':>10} {'ref CPU ms':>10} {'ratio':>6} | {'pfm MiB':>8} {'ref MiB':>8}"
    print(header)
    print("-" * len(header))
    for phase in ("forward", "train"):
        results = {}
        for which in ("pfm", "reference"):
            config = dict(
                size=size,
                which=which,
                phase=phase,
                batch=batch,
                steps=steps,
                warmup=warmup,
                threads=args.threads,
                backend=args.attention_backend,
            )
            results[which] = run_worker(__file__, config)
        p, r = results["pfm"], results["reference"]
        print(
            f"{phase:>8} | {p['ms']:>8.0f} {r['ms']:>8.0f} {r['ms'] / p['ms']:>7.2f}x | {p['cpu_ms']:>10.0f} "
            f"{r['cpu_ms']:>10.0f} {r['cpu_ms'] / p['cpu_ms']:>6.2f} | {p['peak_mib']:>8.0f} {r['peak_mib']:>8.0f}",
            flush=True,
        )
    n = _numerics(size, batch)["sdpa"]
    print(
        f"numerics: max |pfm - reference| = {n['max_abs']:.2e} ({n['max_rel']:.2e} of max |reference|), fp32"
    )


if __name__ == "__main__":
    main()
