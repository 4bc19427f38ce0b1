"""Transitions/s of PLaTITO rollouts: pfm's model beside a reference written the official way, same weights.

The reference (`reference_sample`) follows the public PLaTITO code step by step on the same state dict:
one-hot pair features concatenated and projected on every velocity call, the flow-time pair feature as a
(B, L, L, t) tensor, per-layer pair LayerNorm + bias, manual softmax attention with masked pairs set to the
dtype minimum before the bias is added. tests/test_tito.py uses it as the independent numerical reference.

    python benchmarks/tito.py                                  # PLaTITO-3M, 100 trajectories x 35 residues, 50 Euler steps
    python benchmarks/tito.py --trajectories 20 --flow-steps 10 --transitions 1   # quick
    python benchmarks/tito.py --device cuda --size platito_19m                     # on a GPU
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch
import torch.nn.functional as F

from pfm.models.tito import PLaTITO
from pfm.models.tito_network import TitoFeatures, index_embedding, mask_and_zero_com, time_embedding


def _lin(sd: dict, key: str, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, sd[key + ".weight"], sd.get(key + ".bias"))


def _ln(sd: dict, key: str, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[key + ".weight"], sd[key + ".bias"])


def _transition(sd: dict, key: str, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    h, gate = _lin(sd, key + ".swish_linear.0", x).chunk(2, dim=-1)
    return _lin(sd, key + ".linear_out", F.silu(gate) * h) * m


def _adaln(sd: dict, key: str, x: torch.Tensor, c: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    cn = _ln(sd, key + ".norm_cond", c)
    out = F.layer_norm(x, x.shape[-1:]) * torch.sigmoid(_lin(sd, key + ".to_gamma.0", cn))
    return (out + _lin(sd, key + ".to_beta", cn)) * m


def _one_hot_bins(values: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    return F.one_hot(torch.bucketize(values, edges), len(edges) + 1) * 1.0


def reference_net(
    sd: dict,
    f: TitoFeatures,
    x: torch.Tensor,
    mask: torch.Tensor,
    seq: torch.Tensor,
    cond: torch.Tensor,
    t_emb: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One official-style transformer: x (B, L, 3), seq features (B, L, S), cond input (B, L, C) -> (tokens, coords)."""
    b, n, _ = x.shape
    m = mask[..., None].float()
    pm = (mask[:, :, None] & mask[:, None, :]).float()[..., None]
    c = _lin(sd, "cond_factory.linear_out", cond * m) * m
    c = _transition(sd, "transition_c_2", _transition(sd, "transition_c_1", c, m), m)
    tokens = (
        _lin(sd, "linear_3d_embed", x * m) * m + _lin(sd, "init_repr_factory.linear_out", seq * m) * m
    ) * m
    # pair features rebuilt from scratch: one-hot sequence separation and distance bins, concatenated
    idx = torch.arange(1, n + 1, dtype=torch.float32, device=x.device).expand(b, n)
    half = f.num_seq_sep_bins / 2.0 - 1
    sep = _one_hot_bins(
        idx[:, :, None] - idx[:, None, :],
        torch.linspace(-half, half, f.num_seq_sep_bins - 1, device=x.device),
    )
    dist = torch.norm(x[:, :, None, :] - x[:, None, :, :], dim=-1)
    dist = _one_hot_bins(dist, torch.linspace(f.dist_min, f.dist_max, f.num_dist_bins - 1, device=x.device))
    feats = torch.cat([sep, dist], dim=-1) * pm
    pair = (
        _ln(
            sd,
            "pair_repr_builder.init_repr_factory.ln_out",
            _lin(sd, "pair_repr_builder.init_repr_factory.linear_out", feats),
        )
        * pm
    )
    if t_emb is not None:
        tp = t_emb[:, None, None, :].expand(b, n, n, -1) * pm
        pc = (
            _ln(
                sd,
                "pair_repr_builder.cond_factory.ln_out",
                _lin(sd, "pair_repr_builder.cond_factory.linear_out", tp),
            )
            * pm
        )
        pair = _adaln(sd, "pair_repr_builder.adaln", pair, pc, pm)
    r = sd["registers"].shape[0] if "registers" in sd else 0
    if r:
        tokens = torch.cat([sd["registers"][None].expand(b, -1, -1), tokens], dim=1)
        pair = F.pad(pair, (0, 0, r, 0, r, 0))
        c = torch.cat([c.new_zeros(b, r, c.shape[-1]), c], dim=1)
        mask = torch.cat([mask.new_ones(b, r), mask], dim=1)
        m = mask[..., None].float()
    pair_mask = mask[:, :, None] & mask[:, None, :]
    num_layers = len({k.split(".")[1] for k in sd if k.startswith("transformer_layers.")})
    for i in range(num_layers):
        key = f"transformer_layers.{i}"
        x_in = tokens * m
        a = _adaln(sd, key + ".mhba.adaln", x_in, c, m)
        mha = key + ".mhba.mha"
        heads = sd[mha + ".to_bias.weight"].shape[0]
        a = _ln(sd, mha + ".node_norm", a)
        q, k, v = _lin(sd, mha + ".to_qkv", a).chunk(3, dim=-1)
        q, k = _ln(sd, mha + ".q_layer_norm", q), _ln(sd, mha + ".k_layer_norm", k)
        g = _lin(sd, mha + ".to_g", a)
        bias = F.linear(_ln(sd, mha + ".pair_norm", pair), sd[mha + ".to_bias.weight"]).permute(0, 3, 1, 2)
        q, k, v, g = (t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v, g))
        sim = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(q.shape[-1])
        sim = sim.masked_fill(~pair_mask[:, None], torch.finfo(sim.dtype).min)
        att = torch.einsum("bhij,bhjd->bhid", torch.softmax(sim + bias, dim=-1), v)
        att = (torch.sigmoid(g) * att).transpose(1, 2).reshape(b, tokens.shape[1], -1)
        y = _lin(sd, mha + ".to_out_node", att) * m
        y = y * torch.sigmoid(_lin(sd, key + ".mhba.scale_output.to_adaln_zero_gamma.0", c)) * m
        tokens = (y * m + x_in) * m
        y = _adaln(sd, key + ".transition.adaln", tokens, c, m)
        y = _transition(sd, key + ".transition.transition", y, m)
        y = y * torch.sigmoid(_lin(sd, key + ".transition.scale_output.to_adaln_zero_gamma.0", c)) * m
        tokens = (y * m + tokens) * m
    tokens, m = tokens[:, r:], m[:, r:]
    coords = F.linear(_ln(sd, "coors_3d_decoder.0", tokens), sd["coors_3d_decoder.1.weight"]) * m
    return tokens, coords


def _sub(sd: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def reference_condition(model: PLaTITO, x, mask, lag, temperature, sequence_emb=None, residue_ids=None):
    """Official-style condition net output (B, L, token) from `model`'s weights."""
    sd, f = _sub(model.state_dict(), "condition_net."), model.features
    b, n, _ = x.shape
    idx = index_embedding(n, f.index_dim, f.index_max_len, x.device).expand(b, -1, -1)
    if model.is_tito:
        pos = 0 if f.residue_first else 1
        res = F.embedding(residue_ids, sd[f"init_repr_factory.feat_creators.{pos}.res_id_emb.weight"])
        seq = torch.cat([res, idx] if f.residue_first else [idx, res], dim=-1)
    else:
        seq = torch.cat([idx, sequence_emb], dim=-1)
    lag_emb = time_embedding(lag.float() / f.lag_norm, f.lag_dim, f.lag_scale)
    temp_emb = time_embedding(
        (temperature.float() - f.temperature_min) / (f.temperature_max - f.temperature_min),
        f.temperature_dim,
        f.temperature_scale,
    )
    cond = torch.cat([lag_emb, temp_emb], dim=-1)[:, None].expand(b, n, -1)
    return reference_net(sd, f, x, mask, seq, cond, None)[0]


def reference_velocity(model: PLaTITO, z, s, cond, mask):
    """Official-style velocity (B, L, 3), masked and zero-centred, at flow time s (B,)."""
    sd, f = _sub(model.state_dict(), "velocity_net."), model.features
    b, n, _ = z.shape
    t_emb = time_embedding(s, f.time_dim, f.time_scale)
    idx = index_embedding(n, f.index_dim, f.index_max_len, z.device).expand(b, -1, -1)
    c_in = torch.cat([t_emb[:, None].expand(b, n, -1), cond], dim=-1)
    return mask_and_zero_com(reference_net(sd, f, z, mask, idx, c_in, t_emb)[1], mask)


def reference_sample(
    model: PLaTITO, x, mask, lag, temperature, sequence_emb=None, residue_ids=None, steps=50, noise=None
):
    """One official-style transition: condition once, Euler over linspace(0, 1, steps + 1)."""
    x = mask_and_zero_com(x, mask)
    with torch.no_grad():
        cond = reference_condition(model, x, mask, lag, temperature, sequence_emb, residue_ids)
        z = noise if noise is not None else mask_and_zero_com(torch.randn_like(x), mask)
        grid = torch.linspace(0, 1, steps + 1, device=x.device)
        for k in range(steps):
            z = z + (grid[k + 1] - grid[k]) * reference_velocity(
                model, z, grid[k].expand(x.shape[0]), cond, mask
            )
        return mask_and_zero_com(z, mask)


def main() -> None:
    """Print transitions/s of pfm and the official-style reference for the same weights and noise."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="platito_3m")
    p.add_argument("--trajectories", type=int, default=100)
    p.add_argument("--residues", type=int, default=35)
    p.add_argument("--flow-steps", type=int, default=50)
    p.add_argument("--transitions", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.manual_seed(0)
    model = PLaTITO(a.size).to(dev).eval()
    with torch.no_grad():  # random, non-trivial weights (the adaLN-Zero gates start almost closed)
        for q in model.parameters():
            q.add_(torch.randn_like(q) * 0.02)
    b, n = a.trajectories, a.residues
    mask = torch.ones(b, n, dtype=torch.bool, device=dev)
    x = mask_and_zero_com(torch.randn(b, n, 3, device=dev).cumsum(1) * 0.22, mask)
    lag = torch.full((b,), 1.0, device=dev)
    temp = torch.full((b,), 320.0, device=dev)
    kw = (
        {"residue_ids": torch.randint(0, 20, (b, n), device=dev)}
        if model.is_tito
        else {"sequence_emb": torch.randn(b, n, model.plm_dim, device=dev)}
    )
    noises = [mask_and_zero_com(torch.randn(b, n, 3, device=dev), mask) for _ in range(a.transitions)]

    def run(fn) -> tuple[float, torch.Tensor]:
        xs = x
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for z0 in noises:
            xs = fn(model, xs, mask, lag, temp, steps=a.flow_steps, noise=z0, **kw)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return b * a.transitions / (time.perf_counter() - t0), xs

    pfm_sample = lambda m, *args, **kws: m.sample(*args, **kws)  # noqa: E731
    run(pfm_sample)  # warm-up (allocator, kernels)
    ref_rate, ref_x = run(reference_sample)
    pfm_rate, pfm_x = run(pfm_sample)
    err = ((pfm_x - ref_x).norm() / ref_x.norm()).item()
    print(
        f"PLaTITO {a.size} ({sum(q.numel() for q in model.parameters()) / 1e6:.2f}M params), {b} trajectories x "
        f"{n} residues, {a.flow_steps} Euler steps, {a.transitions} transitions, {a.device}, "
        f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}"
    )
    print(f"reference (official-style): {ref_rate:8.2f} transitions/s")
    print(f"pfm                       : {pfm_rate:8.2f} transitions/s  ({pfm_rate / ref_rate:.2f}x)")
    print(f"final frames, pfm vs reference: relative difference {err:.1e}")


if __name__ == "__main__":
    main()
