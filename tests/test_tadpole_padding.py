"""Tadpole at crops below 64 pads its latent window with zeros; the padding keys must not blow up gradients.

A padding token's key is ``qkv(norm1.bias)``: exactly zero at initialisation, where cosine attention's
normalisation has a Jacobian of 1/|k|. Before the fix the gradient norm of Tadpole-S at 32^3 crops was about
1e10 on the second step, and gradient clipping then left every other weight without an update.
"""

from __future__ import annotations

import torch
from conftest import rounding_tolerance

from pfm.models import TadpoleAutoencoder
from pfm.models.layers.p3d import WindowAttention, WindowStage


def test_padding_keys_keep_values_and_pass_no_gradient() -> None:
    torch.manual_seed(0)
    attn = WindowAttention(dim=16, num_heads=2, window_size=2)
    x = torch.randn(3, 8, 16)
    x[:, 4:] = 0.0  # padding tokens: zero input, so zero keys (qkv has no bias)
    padded = torch.zeros(3, 8, dtype=torch.bool)
    padded[:, 4:] = True
    assert torch.equal(attn(x), attn(x, padded)), "marking padding changed the forward values"
    x.requires_grad_(True)
    attn(x, padded)[:, :4].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[:, 4:].abs().max() < 1e3


def test_window_stage_with_padding_matches_per_sample_results() -> None:
    torch.manual_seed(0)
    # float64: a batch of 3 and a batch of 1 may sum in other orders (other GEMM blockings); only rounding may
    # differ, per block the channel sums (8 dims, 4x MLP) and the 4^3-token window attention
    stage = WindowStage(8, depth=2, num_heads=2, window_size=4).double()
    x = torch.randn(3, 8, 2, 2, 2, dtype=torch.float64)  # 2^3 grid, padded to one 4^3 window per sample
    whole = stage(x)
    tolerance = rounding_tolerance(whole, terms=2 * (8 * 8 + 4**3))
    for i in range(3):
        torch.testing.assert_close(stage(x[i : i + 1]), whole[i : i + 1], **tolerance)


def test_tadpole_s_gradient_stays_bounded_at_32_cubed() -> None:
    torch.manual_seed(0)
    model = TadpoleAutoencoder(size="S", crop_size=32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(2, 1, 32, 32, 32)
    norms = []
    for _ in range(2):  # the second step is the first whose gradient reaches the encoder
        mean, _ = model.encode_distribution(x)
        loss = (model.decode(mean) - x).pow(2).mean()
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))))
        optimizer.step()
        optimizer.zero_grad()
    assert max(norms) < 1e3, f"gradient norms {norms}; padding keys blow up the gradient again"
