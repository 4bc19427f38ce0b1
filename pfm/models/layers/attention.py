"""Attention kernels shared by the models: one function, three interchangeable backends.

Public names:
- `ATTENTION_BACKENDS`: the accepted backend names.
- `attention`: `softmax(q k^T * scale + bias) v` through the chosen backend.
- `check_attention_backend`: validate a backend name early (in a constructor), with a helpful error.

Backends:
- ``"sdpa"``: `torch.nn.functional.scaled_dot_product_attention`; PyTorch picks a fused kernel where one
  supports the inputs (flash / memory-efficient on GPU, a fused kernel on CPU) and falls back to math.
- ``"math"``: the plain matmul-softmax-matmul formulation. It is the reference the others are tested against,
  and the baseline of `benchmarks/tadpole.py`.
- ``"xformers"``: `xformers.ops.memory_efficient_attention`; opt-in, CUDA only.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

AttentionBackend = Literal["sdpa", "math", "xformers"]
ATTENTION_BACKENDS: tuple[str, ...] = ("sdpa", "math", "xformers")

__all__ = ["ATTENTION_BACKENDS", "AttentionBackend", "attention", "check_attention_backend"]


def check_attention_backend(backend: str) -> str:
    """Return `backend` if it is a known name; raise a ValueError that lists the valid names otherwise."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(
            f"attention_backend={backend!r} is not supported; expected one of {list(ATTENTION_BACKENDS)} "
            "('sdpa' is the default and fastest portable choice)."
        )
    return backend


def _xformers_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """xformers memory-efficient attention on (batch, heads, tokens, head_dim) inputs."""
    if q.device.type != "cuda":
        raise RuntimeError(
            f"attention_backend='xformers' needs CUDA tensors, got tensors on {q.device.type!r}; "
            "use attention_backend='sdpa' on this device."
        )
    try:  # xformers: the optional gpu extra
        import xformers.ops as xops
    except ImportError as error:
        raise RuntimeError(
            "attention_backend='xformers' needs the xformers package, which is not installed; "
            "install it with `pip install pfm[gpu]` (or `pip install xformers`), "
            "or use attention_backend='sdpa'."
        ) from error
    batch, heads, tokens, _ = q.shape
    if bias is not None:
        # xformers wants a dense (batch, heads, q_tokens, k_tokens) bias in the input dtype.
        bias = bias.to(q.dtype).expand(batch, heads, tokens, k.shape[-2])
    # xformers uses the (batch, tokens, heads, head_dim) layout.
    out = xops.memory_efficient_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias, scale=scale
    )
    return out.transpose(1, 2)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str = "sdpa",
) -> torch.Tensor:
    """Scaled dot-product attention `softmax(q k^T * scale + bias) v`.

    Args:
        q, k, v: (batch, heads, tokens, head_dim).
        bias: additive float bias broadcastable to (batch, heads, tokens_q, tokens_k), or None.
        scale: factor on the scores; None means 1/sqrt(head_dim).
        backend: one of `ATTENTION_BACKENDS`.

    Returns:
        (batch, heads, tokens_q, head_dim).
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    if backend == "math":
        scores = (q @ k.transpose(-2, -1)) * scale
        if bias is not None:
            scores = scores + bias
        return scores.softmax(dim=-1) @ v
    if backend == "xformers":
        return _xformers_attention(q, k, v, bias, scale)
    check_attention_backend(backend)
    raise AssertionError("unreachable")
