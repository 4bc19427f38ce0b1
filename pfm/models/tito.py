"""TITO and PLaTITO: flow-matching implicit transfer operators over C-alpha coordinates.

A plain `nn.Module` reimplementation of PLaTITO (Antoniadis et al., Hugging Face `pantoniadis/platito`): it
models p(x_{t+lag} | x_t, sequence, temperature, lag) with two transformers of the same kind,
- `condition_net` (f_c): the current frame x_t, the sequence (pLM embeddings for PLaTITO, amino-acid identity
  for TITO), lag and temperature -> per-residue features `cond` (B, L, token), once per transition;
- `velocity_net` (f_v): the flow sample z_s, the flow time s and `cond` -> velocity (B, L, 3).
Parameter names and shapes equal the official Lightning checkpoints' `state_dict` (`velocity_net.*`,
`condition_net.*`), so `PLaTITO.from_official(sd)` loads them directly.

Units: coordinates in nm with zero centre of mass over the valid residues; lag in ns; temperature in K;
flow time s in [0, 1] with s = 0 noise and s = 1 data.

The numerics equal the official network's; the work is arranged differently (see `docs/tito.md`):
one-hot pair features are gathered rows of the projection instead of one-hot matmuls, the flow-time pair
modulation is one vector per sample instead of one per pair, the pair LayerNorm + bias projection of every
layer is one matmul on the pair representation normalised once, attention runs through
`F.scaled_dot_product_attention` with the pair bias (plus the key mask) as `attn_mask`, and the
condition's share of the velocity net's adaLN input is computed once per transition.

Public names: `PLaTITO`, `PLATITO_SIZES`, `TitoFeatures`, `mask_and_zero_com`, `time_embedding`,
`index_embedding`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from pfm.models.layers.tito_blocks import (
    PairBuilder,
    SeqFactory,
    SwiGLUTransition,
    TitoLayer,
)

__all__ = [
    "PLATITO_SIZES",
    "PLaTITO",
    "TitoFeatures",
    "index_embedding",
    "mask_and_zero_com",
    "time_embedding",
]

# Widths per size name. 19M is the public repository's default configuration (exact); 36M has 12 layers per
# net (inferred, not checked against the checkpoint). The 3M widths are not public: these give ~3M parameters
# and `from_official` reads the real ones off the checkpoint's shapes anyway.
PLATITO_SIZES: dict[str, dict[str, int]] = {
    "tito_3m": dict(
        token_dim=128, adaln_dim=128, pair_dim=128, num_layers=4, num_heads=4, num_registers=10, plm_dim=0
    ),
    "platito_3m": dict(
        token_dim=128, adaln_dim=128, pair_dim=128, num_layers=4, num_heads=4, num_registers=10, plm_dim=960
    ),
    "platito_19m": dict(
        token_dim=256, adaln_dim=196, pair_dim=196, num_layers=6, num_heads=6, num_registers=10, plm_dim=2560
    ),
    "platito_36m": dict(
        token_dim=256, adaln_dim=196, pair_dim=196, num_layers=12, num_heads=6, num_registers=10, plm_dim=2560
    ),
}

# The official amino-acid vocabulary (20 standard + O, U, X) sizes TITO's residue embedding.
NUM_RESIDUE_TYPES = 23


@dataclass(frozen=True)
class TitoFeatures:
    """Widths and scales of the input features (the official defaults; none are learnable)."""

    index_dim: int = 196  # residue-index sinusoid
    time_dim: int = 196  # flow-time sinusoid (velocity net, tokens and pairs)
    lag_dim: int = 64
    temperature_dim: int = 64
    residue_dim: int = 0  # TITO: width of the learned amino-acid embedding (0 = PLaTITO)
    residue_first: bool = False  # TITO: residue embedding before the index sinusoid in the concatenation
    num_residue_types: int = NUM_RESIDUE_TYPES
    num_seq_sep_bins: int = 127  # relative sequence separation one-hot, i - j clamped to +-63
    num_dist_bins: int = 64  # C-alpha distance one-hot, edges at linspace(dist_min, dist_max, bins - 1)
    dist_min: float = 0.1  # nm
    dist_max: float = 3.0  # nm
    index_max_len: int = 2056
    time_scale: float = 2000.0
    lag_norm: float = 200.0  # ns; the lag sinusoid sees lag / lag_norm
    lag_scale: float = 1000.0
    temperature_min: float = 250.0  # K; the temperature sinusoid sees (T - min) / (max - min)
    temperature_max: float = 500.0
    temperature_scale: float = 100.0


def mask_and_zero_com(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero the padded residues of x (B, L, 3) and move the centre of mass of the valid ones to 0."""
    m = mask[..., None]
    x = x.masked_fill(~m, 0.0)
    count = m.sum(dim=-2, keepdim=True).clamp(min=1)
    return (x - x.sum(dim=-2, keepdim=True) / count) * m


def time_embedding(t: torch.Tensor, dim: int, max_positions: float) -> torch.Tensor:
    """Sinusoid of a scalar per sample: t (B,) -> (B, dim), frequencies as in DDPM (t scaled by max_positions)."""
    half = dim // 2
    freqs = torch.exp(
        torch.arange(half, dtype=torch.float32, device=t.device) * -(math.log(max_positions) / (half - 1))
    )
    arg = (t.float() * max_positions)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)
    return F.pad(emb, (0, dim % 2))


def index_embedding(num_residues: int, dim: int, max_len: int, device: torch.device) -> torch.Tensor:
    """Sinusoid of the residue index 1..L -> (L, 2 * (dim // 2))."""
    idx = torch.arange(1, num_residues + 1, dtype=torch.float32, device=device)
    k = torch.arange(dim // 2, device=device)
    arg = idx[:, None] * math.pi / (max_len ** (2 * k / dim))[None, :]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)


class _Net(nn.Module):
    """One transformer of the official kind (condition net or velocity net)."""

    def __init__(
        self,
        *,
        token_dim: int,
        adaln_dim: int,
        pair_dim: int,
        num_layers: int,
        num_heads: int,
        head_dim: int,
        num_registers: int,
        seq_in_dim: int,
        cond_in_dim: int,
        pair_time_dim: int,
        feats: TitoFeatures,
        residue: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        self.num_registers = num_registers
        self.feats = feats
        if num_registers > 0:
            self.registers = nn.Parameter(torch.randn(num_registers, token_dim) / 20.0)
        self.linear_3d_embed = nn.Linear(3, token_dim, bias=False)
        self.init_repr_factory = SeqFactory(seq_in_dim, token_dim, residue)
        self.cond_factory = SeqFactory(cond_in_dim, adaln_dim)
        self.transition_c_1 = SwiGLUTransition(adaln_dim, 2)
        self.transition_c_2 = SwiGLUTransition(adaln_dim, 2)
        pair_in = feats.num_seq_sep_bins + feats.num_dist_bins
        self.pair_repr_builder = PairBuilder(pair_in, pair_dim, pair_time_dim, adaln_dim)
        self.transformer_layers = nn.ModuleList(
            TitoLayer(token_dim, adaln_dim, num_heads, head_dim, pair_dim) for _ in range(num_layers)
        )
        self.coors_3d_decoder = nn.Sequential(nn.LayerNorm(token_dim), nn.Linear(token_dim, 3, bias=False))

    # -- inputs
    def index_tokens(self, num_residues: int, device: torch.device) -> torch.Tensor:
        """Linear(index sinusoid) (L, token) when the index sinusoid is the only sequence feature."""
        emb = index_embedding(num_residues, self.feats.index_dim, self.feats.index_max_len, device)
        return emb @ self.init_repr_factory.linear_out.weight.t()

    def adaln_cond(self, c_in: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """(B, L or 1, cond_in) pre-projection (or its projection if already projected) -> (B, L, adaln)."""
        c = c_in * m
        c = self.transition_c_1(c) * m
        return self.transition_c_2(c) * m

    def pair_repr(self, x: torch.Tensor, pm: torch.Tensor, time_emb: torch.Tensor | None) -> torch.Tensor:
        """Pair representation (B, L, L, pair) from coordinates x (B, L, 3) (padded rows zero)."""
        f = self.feats
        b, n, _ = x.shape
        w = self.pair_repr_builder.init_repr_factory.linear_out.weight  # (pair, sep + dist)
        # One-hot @ W^T is a row gather of W^T: the same numbers without building the (B, L, L, 191) one-hots.
        half = (f.num_seq_sep_bins - 1) // 2
        idx = torch.arange(n, device=x.device)
        sep_bin = ((idx[:, None] - idx[None, :]).clamp(-half, half) + half).reshape(-1)
        sep = w[:, : f.num_seq_sep_bins].t().index_select(0, sep_bin).reshape(1, n, n, -1)
        edges = torch.linspace(f.dist_min, f.dist_max, f.num_dist_bins - 1, device=x.device)
        dist = torch.norm(x[:, :, None, :] - x[:, None, :, :], dim=-1)
        dist_bin = torch.bucketize(dist, edges).reshape(-1)
        d = w[:, f.num_seq_sep_bins :].t().index_select(0, dist_bin).reshape(b, n, n, -1)
        pair = self.pair_repr_builder.init_repr_factory.ln_out(d.add_(sep))
        if time_emb is not None:
            builder = self.pair_repr_builder
            # The time pair feature is the same for every pair: one modulation vector per sample.
            tc = builder.cond_factory.ln_out(builder.cond_factory.linear_out(time_emb))
            gamma, beta = builder.adaln.modulation(tc)
            pair = torch.addcmul(
                beta[:, None, None], F.layer_norm(pair, pair.shape[-1:]), gamma[:, None, None]
            )
        # Pairs touching a padded residue are left unmasked here: attention_biases masks their logits.
        return pair

    def attention_biases(self, pair: torch.Tensor, pm: torch.Tensor) -> list[torch.Tensor]:
        """Per layer (B, heads, R + L, R + L) additive attention masks: pair bias, dtype-min on masked keys."""
        layers = [layer.mhba.mha for layer in self.transformer_layers]
        num_heads = layers[0].num_heads
        r = self.num_registers
        b, n = pair.shape[:2]
        # LayerNorm(p) @ W^T = norm(p) @ (g * W)^T + beta @ W^T, and norm(p) is shared by all layers,
        # so every layer's bias comes out of one matmul.
        w_all = torch.cat([a.to_bias.weight * a.pair_norm.weight for a in layers])  # (layers * heads, pair)
        c_all = torch.cat([a.to_bias.weight @ a.pair_norm.bias for a in layers])  # (layers * heads,)
        biases = F.linear(F.layer_norm(pair, pair.shape[-1:]), w_all, c_all)  # (B, L, L, layers * heads)
        full = pair.new_empty(b, w_all.shape[0], n + r, n + r)  # (B, layers * heads, R + L, R + L)
        if r:
            full[:] = c_all[None, :, None, None]  # register rows/columns hold zero pairs: LN(0) = beta
        full[:, :, r:, r:] = biases.permute(0, 3, 1, 2)
        # Masked pairs get the dtype minimum (official: masked_fill then + bias, which rounds to the same);
        # registers are valid tokens, so only pairs touching a padded residue are masked.
        ext = torch.cat([pm.new_ones(b, r), pm.diagonal(dim1=1, dim2=2)], dim=1)
        full.masked_fill_(~(ext[:, :, None] & ext[:, None, :])[:, None], torch.finfo(full.dtype).min)
        return list(full.split(num_heads, dim=1))

    def trunk(
        self, tokens: torch.Tensor, cond: torch.Tensor, biases: list[torch.Tensor], mask: torch.Tensor
    ) -> torch.Tensor:
        """Registers + layers: tokens (B, L, token), cond (B, L, adaln) -> (B, L, token)."""
        b = tokens.shape[0]
        r = self.num_registers
        if r:
            tokens = torch.cat([self.registers[None].expand(b, -1, -1), tokens], dim=1)
            cond = torch.cat([cond.new_zeros(b, r, cond.shape[-1]), cond], dim=1)
            mask = torch.cat([mask.new_ones(b, r), mask], dim=1)
        m = mask[..., None].to(tokens.dtype)
        x = tokens * m
        for layer, bias in zip(self.transformer_layers, biases, strict=True):
            x = layer(x, cond, bias, m)
        return x[:, r:]


# ------------------------------------------------------------------------------------------------ model


def _pair_mask(mask: torch.Tensor) -> torch.Tensor:
    return mask[:, :, None] & mask[:, None, :]


class PLaTITO(nn.Module):
    """TITO / PLaTITO transfer operator: condition net + velocity net, rectified flow over C-alpha coordinates.

    Shapes: x_t (B, L, 3) nm, mask (B, L) bool, lag (B,) ns, temperature (B,) K, sequence_emb (B, L, plm_dim),
    residue_ids (B, L) long (TITO: `plm_dim` 0 or None). `size` names an entry of `PLATITO_SIZES`; explicit
    widths override it.
    """

    def __init__(
        self,
        size: str | None = None,
        *,
        token_dim: int | None = None,
        adaln_dim: int | None = None,
        pair_dim: int | None = None,
        num_layers: int | None = None,
        num_heads: int | None = None,
        head_dim: int | None = None,
        num_registers: int | None = None,
        plm_dim: int | None = None,
        condition_token_dim: int | None = None,
        features: TitoFeatures | dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        given = dict(
            token_dim=token_dim,
            adaln_dim=adaln_dim,
            pair_dim=pair_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            num_registers=num_registers,
            plm_dim=plm_dim,
        )
        if size is not None:
            if size not in PLATITO_SIZES:
                raise ValueError(
                    f"PLaTITO size {size!r} is unknown; expected one of {sorted(PLATITO_SIZES)}."
                )
            widths = {**PLATITO_SIZES[size], **{k: v for k, v in given.items() if v is not None}}
        else:
            widths = {**given, "plm_dim": plm_dim or 0, "num_registers": num_registers or 0}
            missing = [k for k, v in widths.items() if v is None]
            if missing:
                raise ValueError(f"PLaTITO needs {missing} (or a size name, one of {sorted(PLATITO_SIZES)}).")
        feats = TitoFeatures(**features) if isinstance(features, dict) else (features or TitoFeatures())
        self.plm_dim = int(widths["plm_dim"] or 0)
        if self.plm_dim == 0 and feats.residue_dim == 0:
            feats = replace(feats, residue_dim=widths["token_dim"])  # TITO: learned amino-acid embedding
        if self.plm_dim and feats.residue_dim:
            raise ValueError(
                f"plm_dim={self.plm_dim} and features.residue_dim={feats.residue_dim}: PLaTITO reads "
                "pLM embeddings, TITO residue ids; set one of them to 0."
            )
        token = widths["token_dim"]
        num_heads = widths["num_heads"]
        if head_dim is None:
            head_dim = token // num_heads
        if token <= 0 or num_heads <= 0 or head_dim <= 0:
            raise ValueError(
                f"token_dim={token}, num_heads={num_heads}, head_dim={head_dim} must be positive."
            )
        self.features = feats
        self.widths = {**widths, "head_dim": head_dim}
        cond_token = condition_token_dim or token
        common = dict(
            adaln_dim=widths["adaln_dim"],
            pair_dim=widths["pair_dim"],
            num_layers=widths["num_layers"],
            num_heads=num_heads,
            head_dim=head_dim,
            num_registers=widths["num_registers"],
            feats=feats,
        )
        residue = None
        seq_in = feats.index_dim + self.plm_dim
        if self.is_tito:
            residue = (0 if feats.residue_first else 1, feats.num_residue_types, feats.residue_dim)
            seq_in = feats.index_dim + feats.residue_dim
        self.condition_net = _Net(
            token_dim=cond_token,
            seq_in_dim=seq_in,
            cond_in_dim=feats.lag_dim + feats.temperature_dim,
            pair_time_dim=0,
            residue=residue,
            **common,
        )
        self.velocity_net = _Net(
            token_dim=token,
            seq_in_dim=feats.index_dim,
            cond_in_dim=feats.time_dim + cond_token,
            pair_time_dim=feats.time_dim,
            **common,
        )
        # The condition net's coordinate head is never used (the official code freezes it); kept for loading.
        for p in self.condition_net.coors_3d_decoder.parameters():
            p.requires_grad_(False)

    @property
    def is_tito(self) -> bool:
        """True when the sequence enters as amino-acid identity (`residue_ids`) rather than pLM embeddings."""
        return self.plm_dim == 0

    # ---------------------------------------------------------------------------------------- networks
    def _check(self, x: torch.Tensor, mask: torch.Tensor) -> None:
        if x.ndim != 3 or x.shape[-1] != 3:
            raise ValueError(f"coordinates have shape {tuple(x.shape)}; expected (batch, residues, 3) in nm.")
        if mask.shape != x.shape[:2] or mask.dtype != torch.bool:
            raise ValueError(
                f"mask has shape {tuple(mask.shape)} and dtype {mask.dtype}; expected bool {tuple(x.shape[:2])}."
            )

    @staticmethod
    def _per_sample(v: torch.Tensor | float, x: torch.Tensor, name: str, unit: str) -> torch.Tensor:
        """lag / temperature as (B,) in x's dtype; a scalar applies to every sample."""
        v = torch.as_tensor(v, device=x.device).to(x.dtype)
        if v.ndim == 0:
            v = v.expand(x.shape[0])
        if v.shape != (x.shape[0],) or not torch.isfinite(v).all():
            raise ValueError(
                f"{name} has shape {tuple(v.shape)}; expected ({x.shape[0]},) finite values in {unit}."
            )
        return v

    def condition(
        self,
        x_t: torch.Tensor,
        mask: torch.Tensor,
        lag: torch.Tensor,
        temperature: torch.Tensor,
        sequence_emb: torch.Tensor | None = None,
        residue_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Condition features (B, L, token) of the current frame x_t (B, L, 3), once per transition."""
        self._check(x_t, mask)
        if not torch.isfinite(x_t[mask]).all():
            raise ValueError(
                "x_t has non-finite coordinates at valid residues; expected finite nm coordinates."
            )
        lag = self._per_sample(lag, x_t, "lag", "ns")
        temperature = self._per_sample(temperature, x_t, "temperature", "K")
        net, f = self.condition_net, self.features
        b, n, _ = x_t.shape
        m = mask[..., None].to(x_t.dtype)
        x = x_t.masked_fill(~mask[..., None], 0.0)
        idx = index_embedding(n, f.index_dim, f.index_max_len, x.device).expand(b, -1, -1)
        if self.is_tito:
            if residue_ids is None or residue_ids.shape != mask.shape:
                raise ValueError(
                    f"TITO needs residue_ids (batch, residues) = {tuple(mask.shape)} of amino-acid indices "
                    f"(0..{f.num_residue_types - 1}); got {None if residue_ids is None else tuple(residue_ids.shape)}."
                )
            ids = residue_ids.masked_fill(~mask, 0)
            if int(ids.min()) < 0 or int(ids.max()) >= f.num_residue_types:
                raise ValueError(
                    f"residue_ids span {int(ids.min())}..{int(ids.max())}; expected 0..{f.num_residue_types - 1}."
                )
            res = net.init_repr_factory.feat_creators[0 if f.residue_first else 1].res_id_emb(ids)
            seq = torch.cat([res, idx] if f.residue_first else [idx, res], dim=-1)
        else:
            if sequence_emb is None or sequence_emb.shape != (b, n, self.plm_dim):
                raise ValueError(
                    f"PLaTITO needs sequence_emb of shape {(b, n, self.plm_dim)} (pLM width {self.plm_dim}); got "
                    f"{None if sequence_emb is None else tuple(sequence_emb.shape)}. Pass the table of the pLM "
                    "this model was trained with."
                )
            seq = torch.cat([idx, sequence_emb.to(x.dtype).masked_fill(~mask[..., None], 0.0)], dim=-1)
        tokens = (net.linear_3d_embed(x) + net.init_repr_factory.linear_out(seq)) * m
        lag_emb = time_embedding(lag.to(x.dtype) / f.lag_norm, f.lag_dim, f.lag_scale)
        t_norm = (temperature.to(x.dtype) - f.temperature_min) / (f.temperature_max - f.temperature_min)
        temp_emb = time_embedding(t_norm, f.temperature_dim, f.temperature_scale)
        c_in = net.cond_factory.linear_out(torch.cat([lag_emb, temp_emb], dim=-1))[:, None, :]
        cond = net.adaln_cond(c_in, m)
        pm = _pair_mask(mask)
        biases = net.attention_biases(net.pair_repr(x, pm, None), pm)
        return net.trunk(tokens, cond, biases, mask) * m

    def _condition_share(self, cond: torch.Tensor) -> torch.Tensor:
        """The condition's part of the velocity net's adaLN projection (B, L, adaln); fixed within a transition."""
        w = self.velocity_net.cond_factory.linear_out.weight
        return cond @ w[:, self.features.time_dim :].t()

    def _velocity(
        self, z: torch.Tensor, s: torch.Tensor, cond_share: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        net, f = self.velocity_net, self.features
        m = mask[..., None].to(z.dtype)
        z = z.masked_fill(~mask[..., None], 0.0)
        t_emb = time_embedding(s.to(z.dtype).expand(z.shape[0]), f.time_dim, f.time_scale)
        w = net.cond_factory.linear_out.weight
        c_in = t_emb[:, None, :] @ w[:, : f.time_dim].t() + cond_share
        cond = net.adaln_cond(c_in, m)
        tokens = (net.linear_3d_embed(z) + net.index_tokens(z.shape[1], z.device)) * m
        pm = _pair_mask(mask)
        biases = net.attention_biases(net.pair_repr(z, pm, t_emb), pm)
        out = net.coors_3d_decoder(net.trunk(tokens, cond, biases, mask))
        return mask_and_zero_com(out, mask)

    def velocity(
        self, z: torch.Tensor, s: torch.Tensor | float, cond: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Velocity (B, L, 3) at flow time s (scalar or (B,)) of z (B, L, 3); masked, zero centre of mass."""
        self._check(z, mask)
        width = self.velocity_net.cond_factory.linear_out.in_features - self.features.time_dim
        if cond.shape != (*z.shape[:2], width):
            raise ValueError(
                f"cond has shape {tuple(cond.shape)}; expected {(*z.shape[:2], width)} from PLaTITO.condition."
            )
        s = torch.as_tensor(s, dtype=z.dtype, device=z.device).reshape(-1)
        return self._velocity(z, s, self._condition_share(cond), mask)

    # ---------------------------------------------------------------------------------------- sampling
    def sample(
        self,
        x_t: torch.Tensor,
        mask: torch.Tensor,
        lag: torch.Tensor,
        temperature: torch.Tensor,
        sequence_emb: torch.Tensor | None = None,
        residue_ids: torch.Tensor | None = None,
        steps: int = 50,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One transition x_t -> x_{t+lag} (B, L, 3) by Euler over s in linspace(0, 1, steps + 1).

        `noise` is the start z0 (B, L, 3), used as given; without it z0 ~ N(0, I) is drawn (from `generator`),
        masked and zero-centred.
        """
        if steps < 1:
            raise ValueError(f"steps={steps}; expected at least 1 Euler step per transition.")
        self._check(x_t, mask)
        x_t = mask_and_zero_com(x_t, mask)
        with torch.no_grad():
            cond = self.condition(x_t, mask, lag, temperature, sequence_emb, residue_ids)
            share = self._condition_share(cond)
            if noise is None:
                noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
                noise = mask_and_zero_com(noise, mask)
            elif noise.shape != x_t.shape:
                raise ValueError(
                    f"noise has shape {tuple(noise.shape)}; expected {tuple(x_t.shape)} like x_t."
                )
            grid = torch.linspace(0, 1, steps + 1, device=x_t.device, dtype=x_t.dtype)
            z = noise
            for k in range(steps):
                z = z + (grid[k + 1] - grid[k]) * self._velocity(z, grid[k], share, mask)
            return mask_and_zero_com(z, mask)

    def rollout(
        self,
        x_0: torch.Tensor,
        mask: torch.Tensor,
        lag: torch.Tensor,
        temperature: torch.Tensor,
        sequence_emb: torch.Tensor | None = None,
        residue_ids: torch.Tensor | None = None,
        num_transitions: int = 1,
        steps: int = 50,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Trajectories (B, num_transitions + 1, L, 3): frame 0 is x_0 centred, each next frame one transition."""
        x = mask_and_zero_com(x_0, mask)
        frames = [x]
        for _ in range(num_transitions):
            x = self.sample(
                x, mask, lag, temperature, sequence_emb, residue_ids, steps=steps, generator=generator
            )
            if not torch.isfinite(x).all():
                raise FloatingPointError(
                    f"rollout produced non-finite coordinates at transition {len(frames)}; check the weights, "
                    "the lag/temperature range and the input frame."
                )
            frames.append(x)
        return torch.stack(frames, dim=1)

    # ---------------------------------------------------------------------------------------- weights
    @classmethod
    def from_official(cls, state_dict: dict[str, Any]) -> PLaTITO:
        """A model with every width read off an official state dict (or a full checkpoint dict), weights loaded."""
        sd = _official_tensors(state_dict)
        model = cls(**_widths_from_official(sd))
        model.load_official_state_dict(sd)
        return model

    def load_official_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load an official state dict (keys `velocity_net.*`, `condition_net.*`), strictly, names checked."""
        sd = _official_tensors(state_dict)
        own = self.state_dict()
        missing = sorted(set(own) - set(sd))
        unexpected = sorted(set(sd) - set(own))
        wrong = sorted(k for k in set(own) & set(sd) if own[k].shape != sd[k].shape)
        if missing or unexpected or wrong:
            detail = "; ".join(
                f"{what}: {names[:5]}{' ...' if len(names) > 5 else ''}"
                for what, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                if names
            )
            raise ValueError(
                f"the state dict does not fit this PLaTITO ({self.widths}): {detail}. Build the model with "
                "PLaTITO.from_official(state_dict), which reads the widths off the shapes."
            )
        self.load_state_dict(sd, strict=True)

    def to_official_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under the official names (`velocity_net.*`, `condition_net.*`), detached copies."""
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this model."""
        w = dict(self.widths)
        return {
            **w,
            "condition_token_dim": self.condition_net.linear_3d_embed.out_features,
            "features": asdict(self.features),
        }


def _official_tensors(state_dict: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The `velocity_net.*` / `condition_net.*` tensors of a state dict or of a checkpoint holding one."""
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]
    sd = {k: v for k, v in state_dict.items() if k.startswith(("velocity_net.", "condition_net."))}
    if not sd:
        raise ValueError(
            f"no 'velocity_net.*' or 'condition_net.*' keys among {list(state_dict)[:8]}...: not an official "
            "PLaTITO/TITO state dict (expected the `state_dict` of pantoniadis/platito *.ckpt)."
        )
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"entries {bad[:5]} are not tensors; expected a state dict of tensors.")
    return sd


def _widths_from_official(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Constructor arguments read off the shapes of an official state dict."""

    def shape(key: str) -> tuple[int, ...]:
        if key not in sd:
            raise ValueError(f"official state dict lacks {key!r}; it is not a TITO/PLaTITO checkpoint.")
        return tuple(sd[key].shape)

    v, c = "velocity_net.", "condition_net."
    token = shape(v + "linear_3d_embed.weight")[0]
    cond_token = shape(c + "linear_3d_embed.weight")[0]
    adaln = shape(v + "cond_factory.linear_out.weight")[0]
    pair, pair_in = shape(v + "pair_repr_builder.init_repr_factory.linear_out.weight")
    num_layers = len({k.split(".")[2] for k in sd if k.startswith(v + "transformer_layers.")})
    num_c_layers = len({k.split(".")[2] for k in sd if k.startswith(c + "transformer_layers.")})
    if num_layers != num_c_layers:
        raise ValueError(
            f"velocity net has {num_layers} layers, condition net {num_c_layers}; pfm expects equal depth."
        )
    num_heads = shape(v + "transformer_layers.0.mhba.mha.to_bias.weight")[0]
    inner = shape(v + "transformer_layers.0.mhba.mha.to_g.weight")[0]
    num_registers = shape(v + "registers")[0] if v + "registers" in sd else 0
    index_dim = shape(v + "init_repr_factory.linear_out.weight")[1]
    time_dim = shape(v + "cond_factory.linear_out.weight")[1] - cond_token
    lag_temp = shape(c + "cond_factory.linear_out.weight")[1]
    seq_in = shape(c + "init_repr_factory.linear_out.weight")[1]
    feats: dict[str, Any] = dict(
        index_dim=index_dim,
        time_dim=time_dim,
        lag_dim=lag_temp - lag_temp // 2,  # not readable from shapes: the official split is half and half
        temperature_dim=lag_temp // 2,
        num_dist_bins=pair_in - TitoFeatures.num_seq_sep_bins,
    )
    res_keys = [
        k
        for k in sd
        if k.startswith(c + "init_repr_factory.feat_creators.") and k.endswith("res_id_emb.weight")
    ]
    plm_dim = seq_in - index_dim
    if res_keys:
        num_types, res_dim = shape(res_keys[0])
        feats.update(
            residue_dim=res_dim, num_residue_types=num_types, residue_first=res_keys[0].split(".")[3] == "0"
        )
        if seq_in != index_dim + res_dim:
            raise ValueError(
                f"condition net input width {seq_in} is not index {index_dim} + residue {res_dim}."
            )
        plm_dim = 0
    elif plm_dim <= 0:
        raise ValueError(
            f"condition net input width {seq_in} leaves no room for pLM embeddings (index {index_dim})."
        )
    return dict(
        token_dim=token,
        adaln_dim=adaln,
        pair_dim=pair,
        num_layers=num_layers,
        num_heads=num_heads,
        head_dim=inner // num_heads,
        num_registers=num_registers,
        plm_dim=plm_dim,
        condition_token_dim=cond_token,
        features=feats,
    )
