"""GPhyT: official layout and numerics, grids, 3D, context lengths, named fields, integrators, rollouts.

The official code is not a dependency. `OfficialStyle` below is an independent reference written the
official way (finite differences by conv3d, Conv3d tokenizer, a bias-free `to_qkv` Linear feeding
`nn.MultiheadAttention`, ConvTranspose3d detokenizer, Euler on the last frame) with the official parameter
names, so the same state dict loads into both with `strict=True`. Names and shapes are checked against
`tests/assets/gphyt_state_dicts.json`, a copy of the anchors read off the official code.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import rounding_tolerance

from pfm.distributed.parallelize import find_blocks, prepare_model
from pfm.models import GPhyT
from pfm.models.gphyt import GPHYT_SIZES, OFFICIAL_FIELDS
from pfm.models.gphyt_tokens import FieldTokenizer, derivative_features
from pfm.models.layers.vit import TransformerBlock, axial_rope

ANCHORS = json.loads((Path(__file__).parent / "assets" / "gphyt_state_dicts.json").read_text())
PUBLISHED_PARAMS = {"S": 8.0, "M": 112, "L": 385, "XL": 796}  # millions, anchors README
SMALL = {"size": None, "hidden_dim": 48, "mlp_dim": 96, "num_heads": 2, "num_layers": 2}


def _terms(model: GPhyT, num_tokens: int) -> int:
    """Terms summed along one forward pass: the tokenizer's patch, per block its sums, the detokenizer's."""
    width = model.blocks[0].attn.qkv.in_features
    tokenizer = model.tokenizer.weight[0].numel()
    block = 4 * width + num_tokens + 2 * model.blocks[0].mlp.fc2.in_features
    return tokenizer + len(model.blocks) * block + width


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


# ------------------------------------------------------------------------------- the official-style reference
class _Derivatives(nn.Module):
    def __init__(self, fields: int) -> None:
        super().__init__()
        stencil = torch.tensor([-1.0, 0.0, 1.0])
        self.register_buffer("dt_filter", stencil.view(1, 1, 3, 1, 1).repeat(fields, 1, 1, 1, 1))
        self.register_buffer("dh_filter", stencil.view(1, 1, 1, 3, 1).repeat(fields, 1, 1, 1, 1))
        self.register_buffer("dw_filter", stencil.view(1, 1, 1, 1, 3).repeat(fields, 1, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, H, W, C) -> (B, T, H, W, 4C)
        c = x.permute(0, 4, 1, 2, 3)
        out = [c]
        for name, pad in (
            ("dt_filter", (0, 0, 0, 0, 1, 1)),
            ("dh_filter", (0, 0, 1, 1, 0, 0)),
            ("dw_filter", (1, 1, 0, 0, 0, 0)),
        ):
            out.append(F.conv3d(F.pad(c, pad, mode="replicate"), getattr(self, name), groups=c.shape[1]))
        return torch.cat(out, dim=1).permute(0, 2, 3, 4, 1)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        q, k, v = self.to_qkv(x).flatten(1, 3).chunk(3, dim=-1)
        return self.attention(q, k, v)[0].reshape(shape)


class _Block(nn.Module):
    def __init__(self, dim: int, mlp: int, heads: int) -> None:
        super().__init__()
        self.attention = _Attention(dim, heads)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mlp = nn.Module()
        self.mlp.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention(self.norm1(x)) + x
        return self.mlp.mlp(self.norm2(x)) + x


class OfficialStyle(nn.Module):
    """The official GPhyT computation, written independently, with the official parameter names."""

    def __init__(
        self, dim: int, mlp: int, heads: int, layers: int, frames: int, grid: tuple[int, int]
    ) -> None:
        super().__init__()
        fields, patch = 5, (1, 16, 16)
        self.derivatives = _Derivatives(fields)
        self.tokenizer = nn.Module()
        self.tokenizer.register_buffer("patch_size", torch.tensor(patch))
        self.tokenizer.tokenizer = nn.Module()
        self.tokenizer.tokenizer.to_patch_embedding = nn.Sequential(
            nn.Identity(), nn.Conv3d(4 * fields, dim, patch, stride=patch)
        )
        self.init_pos_encodings = nn.Module()
        self.init_pos_encodings.pe = nn.Parameter(torch.randn(1, frames, grid[0] // 16, grid[1] // 16, dim))
        self.attention_blocks = nn.Sequential(*(_Block(dim, mlp, heads) for _ in range(layers)))
        self.detokenizer = nn.Module()
        self.detokenizer.detokenizer = nn.Module()
        self.detokenizer.detokenizer.from_patch_embedding = nn.Sequential(
            nn.Identity(), nn.ConvTranspose3d(dim, fields, patch, stride=patch)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.derivatives(x).permute(0, 4, 1, 2, 3)
        tokens = self.tokenizer.tokenizer.to_patch_embedding(features).permute(0, 2, 3, 4, 1)
        tokens = self.attention_blocks(tokens + self.init_pos_encodings.pe)
        out = self.detokenizer.detokenizer.from_patch_embedding(tokens.permute(0, 4, 1, 2, 3))
        return (out.permute(0, 2, 3, 4, 1) + x)[:, -1:]


def _official_state(size: str | None = None, frames: int = 4, grid=(256, 128), seed: int = 0, **widths):
    """A random state dict in the official layout (every parameter perturbed), and its reference model."""
    w = GPHYT_SIZES[size] if size else {k: SMALL[k] for k in GPHYT_SIZES["S"]}
    w = {**w, **widths}
    torch.manual_seed(seed)
    ref = OfficialStyle(w["hidden_dim"], w["mlp_dim"], w["num_heads"], w["num_layers"], frames, grid).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return ref.state_dict(), ref


@pytest.fixture(scope="module")
def small() -> tuple[GPhyT, OfficialStyle]:
    """A small-width official-layout model on a 64x32 grid, loaded into pfm, and its reference."""
    state, ref = _official_state(grid=(64, 32))
    model = GPhyT(**SMALL, grid=(64, 32)).eval()
    model.load_official_state_dict(state)
    return model, ref


# -------------------------------------------------------------------------------------------- layout
@pytest.mark.parametrize("size", sorted(GPHYT_SIZES))
def test_export_has_the_official_names_and_shapes(size: str) -> None:
    with torch.device("meta"):
        model = GPhyT(size)
    exported = {k: list(v.shape) for k, v in model.to_official_state_dict().items()}
    assert exported == ANCHORS[f"gphyt_{size.lower()}"]
    official = sum(
        math.prod(s) for k, s in exported.items() if not k.startswith(("derivatives", "tokenizer.patch"))
    )
    assert round(official / 1e6, 1 if size == "S" else 0) == PUBLISHED_PARAMS[size]
    ours = sum(p.numel() for p in model.parameters())
    dim = GPHYT_SIZES[size]["hidden_dim"]
    # folding drops one (3 dim x dim) projection per layer; the absent-field embedding adds 5 x dim
    assert ours == official - GPHYT_SIZES[size]["num_layers"] * 3 * dim * dim + 5 * dim
    assert len(find_blocks(model)) == GPHYT_SIZES[size]["num_layers"]
    assert all(isinstance(b, TransformerBlock) for b in find_blocks(model))


def test_official_s_matches_reference_on_the_official_input() -> None:
    state, ref = _official_state("S")
    # a DDP + compile checkpoint nested under a key, beside a non-tensor entry
    wrapped = {"model_state_dict": {f"module._orig_mod.{k}": v for k, v in state.items()}, "epoch": 7}
    model = GPhyT.from_official(wrapped, size="S").eval()
    x = torch.randn(1, 4, 256, 128, 5)
    with torch.no_grad():
        expected, got = ref(x), model(x)
    assert got.shape == (1, 1, 256, 128, 5)
    assert _rel(got, expected) < 1e-4


def test_export_round_trip(small) -> None:
    model, ref = small
    exported = model.to_official_state_dict()
    again = copy.deepcopy(ref)
    again.load_state_dict(exported, strict=True)  # the official layout takes the export as it is
    x = torch.randn(2, 4, 64, 32, 5)
    with torch.no_grad():
        expected = ref(x)
        assert _rel(again(x), expected) < 1e-5
        # the derivative is the network output: the official prediction minus the last frame
        torch.testing.assert_close(model.derivative(x), (expected - x[:, -1:])[:, 0], rtol=1e-4, atol=1e-4)
    reloaded = GPhyT(**SMALL, grid=(64, 32)).eval()
    reloaded.load_official_state_dict(exported)
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


def test_mismatched_checkpoints_are_named() -> None:
    state, _ = _official_state()
    with pytest.raises(ValueError, match=r"missing .*attention_blocks\.2"):
        GPhyT(**{**SMALL, "num_layers": 3}, grid=(64, 32)).load_official_state_dict(state)
    with pytest.raises(ValueError, match=r"to_patch_embedding.1.weight has shape \[48, 20, 1, 16, 16\]"):
        GPhyT(**{**SMALL, "hidden_dim": 64}, grid=(64, 32)).load_official_state_dict(state)
    with pytest.raises(ValueError, match="no tensors"):
        GPhyT(**SMALL).load_official_state_dict({"config": {"lr": 1}})
    with pytest.raises(ValueError, match="num_spatial_dims=2, position='absolute'"):
        GPhyT(**SMALL, position="rope").load_official_state_dict(state)
    with torch.device("meta"):
        s_state = {k: torch.empty(v) for k, v in ANCHORS["gphyt_s"].items()}
        with pytest.raises(ValueError, match="GPhyT-S, use size='S'"):
            GPhyT("M").load_official_state_dict(s_state)


# ------------------------------------------------------------------------ beyond the official model
def test_any_grid_interpolates_the_position_embedding(small) -> None:
    model = copy.deepcopy(small[0])
    # a position embedding constant in space interpolates to itself: compare with the reference on 96x48
    with torch.no_grad():
        model.pos_embedding.copy_(model.pos_embedding[:, :, :1, :1].expand_as(model.pos_embedding))
    state = model.to_official_state_dict()
    ref96 = OfficialStyle(48, 96, 2, 2, 4, (96, 48)).eval()
    state["init_pos_encodings.pe"] = state["init_pos_encodings.pe"][:, :, :1, :1].expand(1, 4, 6, 3, 48)
    ref96.load_state_dict(state)
    x = torch.randn(1, 4, 96, 48, 5)
    with torch.no_grad():
        assert model(x).shape == (1, 1, 96, 48, 5)
        assert _rel(model(x), ref96(x)) < 1e-4
        assert torch.isfinite(model(torch.randn(1, 4, 16, 128, 5))).all()
    with pytest.raises(ValueError, match=r"not multiples of the patch \[16, 16\].*\[48, 32\]"):
        model(torch.randn(1, 4, 50, 32, 5))


@pytest.mark.parametrize("frames", [1, 2, 3, 4])
def test_context_lengths_use_the_last_time_positions(small, frames: int) -> None:
    model = small[0]
    state = model.to_official_state_dict()
    state["init_pos_encodings.pe"] = state["init_pos_encodings.pe"][:, 4 - frames :]
    short = OfficialStyle(48, 96, 2, 2, frames, (64, 32)).eval()
    short.load_state_dict(state)
    x = torch.randn(2, frames, 64, 32, 5)
    with torch.no_grad():
        assert _rel(model(x), short(x)) < 1e-4
    with pytest.raises(ValueError, match=r"1\.\.4"):
        model(torch.randn(1, 5, 64, 32, 5))


def test_fields_are_addressed_by_name_and_absent_ones_masked(small) -> None:
    model, ref = small
    x = torch.randn(2, 4, 64, 32, 5)
    # float64 for the comparisons of one model with itself: another field order or an unused embedding
    # changes only the order of the tokenizer's sums
    model64, x64 = copy.deepcopy(model).double(), x.double()
    with torch.no_grad():
        full64 = model64(x64)
        tolerance = rounding_tolerance(full64, terms=_terms(model64, 4 * 4 * 2))
        order = [4, 0, 3, 1, 2]
        reordered = model64(x64[..., order], fields=[OFFICIAL_FIELDS[i] for i in order])
        torch.testing.assert_close(reordered, full64[..., order], **tolerance)
        # official weights: absent fields behave as zero-filled ones (the official convention)
        subset = ["vel_y", "pressure"]
        zero_filled = x.clone()
        zero_filled[..., 1:4] = 0
        got = model(x[..., [4, 0]], fields=subset)
        torch.testing.assert_close(got, ref(zero_filled)[..., [4, 0]], rtol=1e-4, atol=1e-4)
        # a learned absent embedding makes "absent" differ from "present and zero"
        masked = copy.deepcopy(model)
        masked.absent_embedding.normal_(0, 0.5)
        assert _rel(masked(x[..., [4, 0]], fields=subset), got) > 1e-2
        masked64 = copy.deepcopy(masked).double()
        torch.testing.assert_close(masked64(x64), full64, **tolerance)  # unused with every field present
    with pytest.raises(ValueError, match=r"\['vorticity'\] are not in the model's vocabulary.*extend_fields"):
        model(x[..., :1], fields=["vorticity"])
    with pytest.raises(ValueError, match="5 channels but 2 field names"):
        model(x, fields=subset)
    with pytest.raises(ValueError, match="unique"):
        model(x[..., :2], fields=["pressure", "pressure"])


def test_extend_fields_keeps_old_outputs(small) -> None:
    model = copy.deepcopy(small[0])
    x = torch.randn(1, 4, 64, 32, 5)
    with torch.no_grad():
        before = model(x)
        before_subset = model(x[..., :2], fields=OFFICIAL_FIELDS[:2])
    model.extend_fields(["vorticity", "tracer"])
    assert model.fields == (*OFFICIAL_FIELDS, "vorticity", "tracer")
    new = torch.randn(1, 4, 64, 32, 2)
    with torch.no_grad():
        # a batch of the old fields now names them (the default is the whole, grown vocabulary)
        torch.testing.assert_close(model(x, fields=OFFICIAL_FIELDS), before, rtol=0, atol=0)
        torch.testing.assert_close(
            model(x[..., :2], fields=OFFICIAL_FIELDS[:2]), before_subset, rtol=0, atol=0
        )
        both = model(torch.cat((x, new), -1), fields=model.fields)
        # new outputs start at a zero derivative: the prediction is the last frame
        torch.testing.assert_close(both[..., 5:], new[:, -1:], rtol=0, atol=0)
        assert _rel(both[..., :5], before) > 1e-4  # the new inputs do reach the network
    both = model(torch.cat((x, new), -1), fields=model.fields)
    both.square().mean().backward()
    assert model.detokenizer.weight.grad[:, 5:].abs().sum() > 0
    with pytest.raises(ValueError, match=r"\['tracer'\] are already in the vocabulary"):
        model.extend_fields(["tracer"])


def test_3d_fields() -> None:
    torch.manual_seed(0)
    model = GPhyT(**SMALL, fields=("u", "v", "w"), num_spatial_dims=3, grid=(16, 16, 16), num_frames=2).eval()
    assert model.patch_size == (1, 8, 8, 8)
    assert model.tokenizer.weight.shape == (48, 5, 3, 1, 8, 8, 8)  # fields, d/dt, d/dx, d/dy, d/dz
    x = torch.randn(2, 2, 16, 16, 16, 3)
    with torch.no_grad():
        y = model(x)
        assert y.shape == (2, 1, 16, 16, 16, 3)
        assert model(torch.randn(1, 1, 32, 16, 8, 3)).shape == (1, 1, 32, 16, 8, 3)  # interpolated grid
        # a change in one voxel of the last frame reaches the prediction beyond that voxel's patch
        x2 = x.clone()
        x2[0, -1, 3, 3, 3, 0] += 1.0
        diff = (model(x2) - y)[0, 0].abs().sum(-1)
        assert diff[8:, 8:, 8:].max() > 0  # attention spreads it to every patch
        torch.testing.assert_close(model(x2)[1], y[1])
    with pytest.raises(ValueError, match=r"\(B, T, D, H, W, C\)"):
        model(torch.randn(1, 2, 16, 16, 3))


def test_derivative_features_are_replicate_padded_central_differences() -> None:
    x = torch.randn(2, 3, 5, 6, 4, 2)
    features = derivative_features(x)
    assert features.shape == (2, 3, 5, 6, 4, 5, 2)
    torch.testing.assert_close(features[..., 0, :], x)
    for k, axis in enumerate((1, 2, 3, 4)):
        # torch.gradient: (x[i+1]-x[i-1])/2 inside, one-sided x[1]-x[0] at the edges (= replicate central)
        grad = torch.gradient(x, dim=axis)[0]
        scale = torch.full((x.shape[axis],), 2.0)
        scale[0] = scale[-1] = 1.0
        shape = [1] * x.ndim
        shape[axis] = -1
        torch.testing.assert_close(features[..., k + 1, :], grad * scale.view(shape))


@pytest.mark.parametrize(
    ("patch", "sides", "frames"),
    [
        ((1, 16, 16), (32, 48), 4),  # the official patch: time by token shift, space by halo slabs
        ((2, 4, 2), (8, 6), 4),  # a time patch > 1 (halo slabs in time too)
        ((1, 1, 4), (5, 8), 2),  # a spatial patch of 1 (token shift in space)
        ((1, 4, 4, 4), (8, 8, 4), 2),  # 3D
        ((1, 8), (24,), 1),  # 1D, one frame (d/dt is zero)
        ((1, 4, 4), (4, 4), 1),  # one token
    ],
)
def test_tokenizer_embed_equals_the_features_path(patch, sides, frames) -> None:
    """`embed(x)` (stencil folded into the weights) = `forward(derivative_features(x))`, values and gradients."""
    torch.manual_seed(0)
    tokenizer = FieldTokenizer(16, 1 + len(patch), 6, patch).double()
    x = torch.randn(2, frames, *sides, 4, dtype=torch.float64, requires_grad=True)
    for index in (torch.tensor([4, 0, 2, 5]), None):
        window = x if index is not None else torch.cat((x, x[..., :2]), -1)  # None: the whole vocabulary
        chosen = torch.arange(6) if index is None else index
        want = tokenizer(derivative_features(window), chosen)
        got = tokenizer.embed(window, index)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        grad = torch.randn_like(want)
        params = [x, tokenizer.weight, tokenizer.bias]
        for a, b in zip(
            torch.autograd.grad(got, params, grad), torch.autograd.grad(want, params, grad), strict=True
        ):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_finiteness_check_is_exact() -> None:
    """The one-reduction check rejects any NaN/Inf and does not mistake an overflowing sum for one."""
    from pfm.models.rollout import finite_rows  # the rollout rule's per-sample check, which GPhyT uses

    x = torch.full((2, 4, 8, 8, 5), 3e38)  # finite, but the sum overflows to inf
    assert finite_rows(x).all()
    for bad in (float("nan"), float("inf"), -float("inf")):
        y = torch.randn(2, 4, 8, 8, 5)
        y[1, 2, 3, 4, 0] = bad
        assert not finite_rows(y).all() and finite_rows(y).tolist() == [True, False]


def test_integrators_follow_the_documented_schemes(small) -> None:
    model = small[0]
    x = torch.randn(1, 3, 32, 32, 5)
    f = model.derivative

    def advance(window: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
        return torch.cat((window, frame.unsqueeze(1)), 1)[:, -4:]

    h, u = 0.5, x[:, -1]
    with torch.no_grad():
        k1 = f(x)
        torch.testing.assert_close(model.step(x, integrator="euler", dt=h)[:, 0], u + h * k1)
        k2 = f(advance(x, u + h * k1))
        torch.testing.assert_close(model.step(x, integrator="heun", dt=h)[:, 0], u + h / 2 * (k1 + k2))
        r2 = f(advance(x, u + h / 2 * k1))
        r3 = f(advance(x, u + h / 2 * r2))
        r4 = f(advance(x, u + h * r3))
        rk4 = u + h / 6 * (k1 + 2 * r2 + 2 * r3 + r4)
        torch.testing.assert_close(model.step(x, integrator="rk4", dt=h)[:, 0], rk4)
    with pytest.raises(ValueError, match="integrator='leapfrog'"):
        GPhyT(**SMALL, integrator="leapfrog")


def test_rollout_slides_and_stops_at_the_first_non_finite_step(small) -> None:
    model = copy.deepcopy(small[0])
    x = torch.randn(1, 2, 64, 32, 5)
    with torch.no_grad():
        out = model.rollout(x, 4)
        assert out.shape == (1, 4, 64, 32, 5) and model.num_finite_steps == 4
        window = x
        for i in range(4):  # the context grows to num_frames, then slides
            frame = model(window)
            torch.testing.assert_close(out[:, i : i + 1], frame)
            window = torch.cat((window, frame), 1)[:, -4:]
        # a derivative near the float32 limit: step 1 is finite, step 2 overflows
        model.detokenizer.bias.fill_(3e38)
        model.detokenizer.weight.zero_()
        blown = model.rollout(x, 5)
    assert model.num_finite_steps == 1 and blown.shape == (1, 1, 64, 32, 5)
    assert torch.isfinite(blown).all()
    with pytest.raises(ValueError, match="NaN or Inf"):
        model(torch.full((1, 1, 64, 32, 5), float("nan")))


def test_rope_model_on_any_grid() -> None:
    torch.manual_seed(0)
    # float64: the query-only last block sums in another order than the full one; only rounding may differ
    model = GPhyT(**SMALL, position="rope", grid=(32, 32)).eval().double()
    assert model.pos_embedding is None
    x = torch.randn(1, 3, 64, 48, 5, dtype=torch.float64)
    with torch.no_grad():
        assert model(x).shape == (1, 1, 64, 48, 5)
        # the last block computes only the last frame's tokens: equal to computing all and keeping those
        index = torch.arange(5)
        tokens = model.tokenizer(derivative_features(x), index)
        grid = tuple(tokens.shape[1:-1])
        rope = axial_rope(grid, 24, x.device)
        h = tokens.flatten(1, -2)
        for block in model.blocks:
            h = block(h, rope)
        full = model.detokenizer(h.unflatten(1, grid)[:, -1:], index)[:, -1]
        torch.testing.assert_close(
            model.derivative(x), full, **rounding_tolerance(full, terms=_terms(model, h.shape[1]))
        )
    with pytest.raises(ValueError, match="too small"):
        GPhyT(size=None, hidden_dim=8, mlp_dim=8, num_heads=4, num_layers=1, position="rope")


def test_blocks_checkpoint_and_train_in_bf16(small) -> None:
    # float64: recomputed activations may sum their gradients in another order; only rounding may differ
    plain = copy.deepcopy(small[0]).train().double()
    wrapped = prepare_model(copy.deepcopy(plain), activation_checkpointing=True)
    x = torch.randn(2, 4, 64, 32, 5, dtype=torch.float64)
    for net in (plain, wrapped):
        net(x).square().mean().backward()
    # forward and backward through every layer, then a weight's gradient sums over the batch's tokens
    num_tokens = 4 * (64 // 16) * (32 // 16)
    terms = 2 * _terms(plain, num_tokens) + x.shape[0] * num_tokens
    # a gradient that cancels to zero sums terms of the network's gradient size
    scale = max(float(p.grad.abs().max()) for p in plain.parameters() if p.grad is not None)
    for (name, p), q in zip(plain.named_parameters(), wrapped.parameters(), strict=True):
        if p.grad is None:  # an unused parameter (the absent-field embedding with every field present)
            assert q.grad is None, name
            continue
        tolerance = rounding_tolerance(p.grad, terms=terms, scale=scale)
        torch.testing.assert_close(q.grad, p.grad, **tolerance, msg=name)
    plain, x = plain.float(), x.float()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = plain(x)
    with torch.no_grad():
        assert _rel(low.float(), plain(x)) < 5e-2


def test_export_warns_when_the_absent_embedding_cannot_be_kept(small) -> None:
    model = copy.deepcopy(small[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.to_official_state_dict()
    with torch.no_grad():
        model.absent_embedding.fill_(0.1)
    with pytest.warns(UserWarning, match="zero-fills absent fields"):
        model.to_official_state_dict()


def test_lora_on_the_last_block_reaches_the_output(small) -> None:
    from pfm.heads.lora import add_lora

    model = copy.deepcopy(small[0])
    x = torch.randn(1, 4, 64, 32, 5)
    with torch.no_grad():
        before = model(x)
    names = add_lora(model.blocks, rank=2)
    assert "1.attn.qkv" in names and "1.mlp.fc2" in names
    with torch.no_grad():
        torch.testing.assert_close(model(x), before)  # LoRA starts as the identity update
        model.blocks[-1].attn.qkv.lora_B.normal_(0, 0.5)  # the last block takes the query-only path
        assert _rel(model(x), before) > 1e-3


def test_constructor_errors_say_what_to_change() -> None:
    with pytest.raises(
        ValueError, match=r"size='XS' is not a GPhyT size; expected one of \['S', 'M', 'L', 'XL'\]"
    ):
        GPhyT("XS")
    with pytest.raises(ValueError, match=r"size=None needs explicit \['num_layers'\]"):
        GPhyT(size=None, hidden_dim=48, mlp_dim=96, num_heads=2)
    with pytest.raises(ValueError, match=r"expected 3 grid sides and 4 patch entries"):
        GPhyT(**SMALL, num_spatial_dims=3, grid=(16, 16))
    with pytest.raises(ValueError, match=r"grid=\[40, 32\] must be positive multiples of patch_size"):
        GPhyT(**SMALL, grid=(40, 32))
    with pytest.raises(ValueError, match="positive sizes"):
        GPhyT(**SMALL, patch_size=(1, 0, 16))
    with pytest.raises(ValueError, match="not divisible by num_heads=5"):
        GPhyT(**{**SMALL, "num_heads": 5})
    with pytest.raises(ValueError, match="one string"):
        GPhyT(**SMALL, fields="pressure")
    with pytest.raises(ValueError, match="attention_backend='flash'"):
        GPhyT(**SMALL, attention_backend="flash")


def test_3d_model_on_depth_constant_fields_equals_the_2d_model(small) -> None:
    """A 3D model whose weights spread the 2D ones evenly over one depth patch gives the 2D answer."""
    m2 = small[0]
    m3 = GPhyT(**SMALL, num_spatial_dims=3, grid=(16, 64, 32), patch_size=(1, 16, 16, 16)).eval()
    depth = 16
    with torch.no_grad():
        w2 = m2.tokenizer.weight  # (hidden, [x, dt, dh, dw], fields, 1, 16, 16)
        # (hidden, [x, dt, dd, dh, dw], fields, 1, 16, 16, 16); d/dd at the model's own weight scale: the
        # tokenizer folds the stencil into the weights, so d/dd's zero features cancel only to rounding
        # that grows with those weights (std 1, 70x the trained scale, would leave 1e-4 of the output)
        w3 = torch.randn_like(m3.tokenizer.weight) * w2.std()
        for k3, k2 in ((0, 0), (1, 1), (3, 2), (4, 3)):  # d/dd stays random: it sees zeros
            w3[:, k3] = w2[:, k2].unsqueeze(3).expand_as(w3[:, k3]) / depth
        m3.tokenizer.weight.copy_(w3)
        m3.tokenizer.bias.copy_(m2.tokenizer.bias)
        m3.absent_embedding.copy_(m2.absent_embedding)
        m3.pos_embedding.copy_(m2.pos_embedding.unsqueeze(2))
        m3.blocks.load_state_dict(m2.blocks.state_dict())
        m3.detokenizer.weight.copy_(m2.detokenizer.weight.unsqueeze(3).expand_as(m3.detokenizer.weight))
        m3.detokenizer.bias.copy_(m2.detokenizer.bias)
        x2 = torch.randn(2, 3, 64, 32, 5)
        x3 = x2.unsqueeze(2).expand(2, 3, depth, 64, 32, 5)
        y3, y2 = m3(x3), m2(x2)
    assert y3.shape == (2, 1, depth, 64, 32, 5)
    torch.testing.assert_close(y3, y2.unsqueeze(2).expand_as(y3), rtol=1e-4, atol=1e-5)
