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

The network (features, embeddings, one transformer) is pfm/models/tito_network.py; the official converter
pfm/models/tito_official.py.

Public names: `PLaTITO`, `PLATITO_SIZES`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, replace
from typing import Any

import torch
import torch.nn as nn

from pfm.models.tito_network import (
    TitoFeatures,
    TitoNet,
    index_embedding,
    mask_and_zero_com,
    pair_mask,
    time_embedding,
)
from pfm.models.tito_official import load_official, official_tensors, widths_from_official

__all__ = ["PLATITO_SIZES", "PLaTITO"]

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
        self.condition_net = TitoNet(
            token_dim=cond_token,
            seq_in_dim=seq_in,
            cond_in_dim=feats.lag_dim + feats.temperature_dim,
            pair_time_dim=0,
            residue=residue,
            **common,
        )
        self.velocity_net = TitoNet(
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
        pm = pair_mask(mask)
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
        pm = pair_mask(mask)
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
        progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
    ) -> torch.Tensor:
        """Trajectories (B, num_transitions + 1, L, 3): frame 0 is x_0 centred, each next frame one transition.

        ``progress`` wraps the loop over transitions (``pfm sample`` passes a tqdm bar).
        """
        x = mask_and_zero_com(x_0, mask)
        frames = [x]
        transitions: Iterable[int] = range(num_transitions)
        for _ in transitions if progress is None else progress(transitions):
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
        sd = official_tensors(state_dict)
        model = cls(**widths_from_official(sd))
        model.load_official_state_dict(sd)
        return model

    def load_official_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load an official state dict (keys `velocity_net.*`, `condition_net.*`), strictly, names checked."""
        load_official(self, state_dict)

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
