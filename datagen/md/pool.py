"""An on-device pool of coarse-grained chains simulated while training reads (x_t, x_{t+lag}) pairs from it.

Like the PDE pool (:mod:`datagen.pool`), a :class:`ChainPool` is one *pool*: its chains and random streams
are derived from ``(seed, pool_index, step, purpose)``, so a run draws the same samples on any number of
processes and a resumed run continues the stream exactly (:meth:`state_dict` / :meth:`load_state_dict`).

Each :meth:`ChainPool.advance` moves every chain by one frame (``substeps`` Langevin steps) and replaces a
random ``refresh_fraction`` of them by new chains (new native structure, sequence, length and temperature).
Chains that blow up (non-finite coordinates or a bond longer than ``max_bond`` nm) are dropped, replaced and
counted in ``num_rejected``; they never reach a sample. The last ``max_lag + 1`` frames of every chain are
kept, so pairs at any configured lag can be drawn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from datagen.md.chains import ChainSystem, ForceField, langevin_step, make_chains
from datagen.seeding import generator

__all__ = ["ChainPool", "centre", "random_rotations"]


def random_rotations(num: int, g: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
    """Uniformly random rotation matrices ``(num, 3, 3)`` (QR of Gaussian matrices, sign-fixed, det +1)."""
    q, r = torch.linalg.qr(torch.randn(num, 3, 3, generator=g, device=device))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    flip = torch.det(q) < 0
    q[flip, :, 0] = -q[flip, :, 0]
    return q


def centre(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` ``(..., L, 3)`` minus its centre of mass over valid residues; padded residues set to zero."""
    m = mask[..., None].to(x.dtype)
    com = (x * m).sum(-2, keepdim=True) / m.sum(-2, keepdim=True).clamp_min(1)
    return (x - com) * m


class ChainPool:
    """``num_chains`` coarse-grained chains of one pool, advanced by overdamped Langevin dynamics.

    Lengths are drawn uniformly from ``[min_residues, max_residues]`` (or taken from ``sequences``, a
    library of residue-id lists to draw from instead of random sequences), temperatures from
    ``temperatures`` (K), lags (in frames) from ``lags`` or uniformly from ``lag_range = [low, high]``.
    """

    def __init__(
        self,
        *,
        num_chains: int = 16,
        min_residues: int = 8,
        max_residues: int = 16,
        temperatures: Sequence[float] = (300.0, 350.0, 400.0),
        lags: Sequence[int] | None = (1,),
        lag_range: Sequence[int] | None = None,
        substeps: int = 50,
        step_size: float = 2.0e-4,
        warmup_frames: int = 5,
        refresh_fraction: float = 0.05,
        max_bond: float = 1.0,
        force_field: Mapping[str, float] | ForceField | None = None,
        sequences: Sequence[Sequence[int]] | None = None,
        seed: int = 0,
        pool_index: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        self.lags, self.lag_range = _check_lags(lags, lag_range)
        if not 2 <= min_residues <= max_residues:
            raise ValueError(
                f"min_residues={min_residues}, max_residues={max_residues}; expected 2 <= min <= max."
            )
        if not temperatures or min(temperatures) <= 0:
            raise ValueError(f"temperatures={list(temperatures)}; expected a non-empty list of values > 0 K.")
        if not 0.0 <= refresh_fraction <= 1.0:
            raise ValueError(f"refresh_fraction={refresh_fraction}; expected a value in [0, 1].")
        if substeps < 1 or not step_size > 0 or num_chains < 1 or warmup_frames < 0:
            raise ValueError(
                f"num_chains={num_chains}, substeps={substeps}, step_size={step_size}, "
                f"warmup_frames={warmup_frames}; expected >= 1, >= 1, > 0 and >= 0."
            )
        self.sequences = [list(map(int, s)) for s in sequences] if sequences is not None else None
        if self.sequences is not None:
            usable = [s for s in self.sequences if min_residues <= len(s) <= max_residues]
            if not usable:
                lengths = sorted({len(s) for s in self.sequences})
                raise ValueError(
                    f"No sequence in the library has {min_residues}..{max_residues} residues (lengths: "
                    f"{lengths[:10]}); widen data.min_residues/max_residues or use other sequences."
                )
            self._usable = [i for i, s in enumerate(self.sequences) if min_residues <= len(s) <= max_residues]
        self.force_field = (
            force_field if isinstance(force_field, ForceField) else ForceField.from_dict(force_field)
        )
        self.device = torch.device(device)
        self.num_chains = num_chains
        self.min_residues, self.max_residues = min_residues, max_residues
        self.temperatures = [float(t) for t in temperatures]
        self.substeps, self.step_size = substeps, step_size
        self.warmup_frames = warmup_frames
        self.refresh_fraction = refresh_fraction
        self.max_bond = max_bond
        self.seed, self.pool_index = seed, pool_index
        self.history = self.max_lag + 1
        self.step = 0
        self.num_rejected = 0
        self.head = 0
        self.frames = torch.zeros(self.history, num_chains, max_residues, 3, device=self.device)
        self.sequence_index = torch.full((num_chains,), -1, dtype=torch.long, device=self.device)
        self.system = self._new_chains(num_chains, self._generator("init"))
        self._fill(torch.arange(num_chains, device=self.device), self._generator("init-frames"))

    @property
    def max_lag(self) -> int:
        """The largest lag (frames) this pool can serve."""
        return max(self.lags) if self.lags is not None else self.lag_range[1]

    def _generator(self, purpose: str) -> torch.Generator:
        return generator(self.seed, self.pool_index, self.step, purpose, device=self.device)

    def _new_chains(self, count: int, g: torch.Generator, rows: torch.Tensor | None = None) -> ChainSystem:
        dev = self.device
        temps = torch.tensor(self.temperatures, device=dev)
        temperature = temps[torch.randint(len(temps), (count,), generator=g, device=dev)]
        ids = None
        if self.sequences is not None:
            pick = torch.randint(len(self._usable), (count,), generator=g, device=dev).tolist()
            chosen = [self._usable[i] for i in pick]
            lengths = torch.tensor([len(self.sequences[i]) for i in chosen], device=dev)
            ids = torch.zeros(count, self.max_residues, dtype=torch.long, device=dev)
            for k, i in enumerate(chosen):
                ids[k, : len(self.sequences[i])] = torch.tensor(self.sequences[i], device=dev)
            index = torch.tensor(chosen, device=dev)
        else:
            lengths = torch.randint(
                self.min_residues, self.max_residues + 1, (count,), generator=g, device=dev
            )
            index = torch.full((count,), -1, dtype=torch.long, device=dev)
        if rows is None:
            self.sequence_index = index
        else:
            self.sequence_index[rows] = index
        return make_chains(lengths, self.max_residues, temperature, g, self.force_field, residue_ids=ids)

    def _simulate(
        self, x: torch.Tensor, system: ChainSystem, g: torch.Generator, frames: int
    ) -> torch.Tensor:
        return langevin_step(x, system, self.force_field, self.step_size, g, frames * self.substeps)

    def _fill(self, rows: torch.Tensor, g: torch.Generator) -> None:
        """Start ``rows`` at their native structure, warm up, and fill their history oldest first."""
        system = self.system.select(rows)
        x = self._simulate(system.native.clone(), system, g, self.warmup_frames)
        for j in range(self.history - 1, -1, -1):
            self.frames[(self.head - j) % self.history, rows] = x
            if j:
                x = self._simulate(x, system, g, 1)

    def _blown_up(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Chains of ``x`` ``(N, L, 3)`` that are non-finite or have a bond longer than ``max_bond``."""
        mask = self.system.mask if mask is None else mask
        bond = (x[:, 1:] - x[:, :-1]).norm(dim=-1) * (mask[:, 1:] & mask[:, :-1])
        finite = torch.isfinite(x).flatten(1).all(1)
        return ~finite | ~(torch.nan_to_num(bond, nan=math.inf).amax(1) <= self.max_bond)

    def reset(self, rows: torch.Tensor, g: torch.Generator) -> None:
        """Replace chains ``rows`` by new ones and fill their history."""
        if rows.numel() == 0:
            return
        self.system.assign(rows, self._new_chains(rows.numel(), g, rows))
        self._fill(rows, g)

    def advance(self) -> None:
        """Move every chain by one frame; replace a random ``refresh_fraction`` and any that blew up."""
        g = self._generator("advance")
        new = self._simulate(self.frames[self.head], self.system, g, 1)
        self.head = (self.head + 1) % self.history
        self.frames[self.head] = new
        bad = self._blown_up(new)
        self.num_rejected += int(bad.sum())
        refresh = torch.rand(self.num_chains, generator=g, device=self.device) < self.refresh_fraction
        rows = torch.nonzero(bad | refresh).flatten()
        for _ in range(3):  # new chains that blow up while their history fills are redrawn too
            self.reset(rows, g)
            mask = self.system.mask[rows].repeat(self.history, 1)
            again = self._blown_up(self.frames[:, rows].flatten(0, 1), mask).view(self.history, -1).any(0)
            self.num_rejected += int(again.sum())
            rows = rows[again]
            if rows.numel() == 0:
                break
        else:
            raise FloatingPointError(
                f"{rows.numel()} new chains blew up three times in a row at step_size={self.step_size}, "
                f"substeps={self.substeps}; lower data.step_size (2e-4 is stable for the default force field)."
            )
        self.step += 1

    def draw_lags(self, count: int, g: torch.Generator) -> torch.Tensor:
        """``count`` lags (frames) from the configured set or range, ``(count,)`` long."""
        if self.lags is not None:
            choices = torch.tensor(self.lags, device=self.device)
            return choices[torch.randint(len(choices), (count,), generator=g, device=self.device)]
        low, high = self.lag_range
        return torch.randint(low, high + 1, (count,), generator=g, device=self.device)

    def sample_pairs(self, batch: int, *, augment: bool = True) -> dict[str, torch.Tensor]:
        """``batch`` pairs of frames ``lag`` apart, centred, padded to the longest chain drawn.

        Returns ``x_t``, ``x_next`` ``(batch, L, 3)`` nm, ``mask`` ``(batch, L)`` bool, ``lag`` ``(batch,)``
        frames (float), ``temperature`` ``(batch,)`` K, ``residue_ids`` ``(batch, L)`` long and
        ``sequence_index`` ``(batch,)`` (index into ``sequences``, -1 for random sequences). With ``augment``,
        both frames of a pair get the same random rotation.
        """
        g = self._generator("pairs")
        rows = torch.randint(self.num_chains, (batch,), generator=g, device=self.device)
        lag = self.draw_lags(batch, g)
        mask = self.system.mask[rows]
        length = int(mask.sum(1).max())
        x_t = self.frames[(self.head - lag) % self.history, rows][:, :length]
        x_next = self.frames[self.head, rows][:, :length]
        mask = mask[:, :length]
        x_t, x_next = centre(x_t, mask), centre(x_next, mask)
        if augment:
            rot = random_rotations(batch, g, self.device)
            x_t, x_next = x_t @ rot.transpose(1, 2), x_next @ rot.transpose(1, 2)
        return {
            "x_t": x_t.contiguous(),
            "x_next": x_next.contiguous(),
            "mask": mask,
            "lag": lag.float(),
            "temperature": self.system.temperature[rows],
            "residue_ids": self.system.residue_ids[rows][:, :length],
            "sequence_index": self.sequence_index[rows],
        }

    def snapshot(self) -> dict[str, object]:
        """Like :meth:`state_dict`, but device copies (no host transfer): taken before every batch."""
        return {
            "step": self.step,
            "num_rejected": self.num_rejected,
            "head": self.head,
            "frames": self.frames.clone(),
            "sequence_index": self.sequence_index.clone(),
            "system": {k: v.clone() for k, v in self.system.tensors().items()},
        }

    def state_dict(self) -> dict[str, object]:
        """Everything needed to continue the stream exactly: frames, chains, step and counters.

        Tensors are copies (``.cpu()`` alone would alias the live buffers on a CPU run, which keep changing).
        """
        return {
            "step": self.step,
            "num_rejected": self.num_rejected,
            "head": self.head,
            "frames": self.frames.detach().cpu().clone(),
            "sequence_index": self.sequence_index.cpu().clone(),
            "system": {k: v.cpu().clone() for k, v in self.system.tensors().items()},
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore a state from :meth:`state_dict` of a pool with the same configuration."""
        frames = state["frames"]
        if tuple(frames.shape) != tuple(self.frames.shape):
            raise ValueError(
                f"Chain pool state has frames {tuple(frames.shape)}; expected {tuple(self.frames.shape)} "
                "(history = max lag + 1, num_chains, max_residues, 3). Use the same data config."
            )
        self.frames = frames.to(self.device).clone()
        self.sequence_index = state["sequence_index"].to(self.device).clone()
        self.system = ChainSystem(**{k: v.to(self.device).clone() for k, v in state["system"].items()})
        self.head = int(state["head"])
        self.step = int(state["step"])
        self.num_rejected = int(state["num_rejected"])


def _check_lags(
    lags: Sequence[int] | None, lag_range: Sequence[int] | None
) -> tuple[list[int] | None, tuple[int, int] | None]:
    if (lags is None) == (lag_range is None):
        raise ValueError(
            f"lags={lags}, lag_range={lag_range}; give exactly one: a set of lags (e.g. data.lags=[1,2,5]) "
            "or a range (data.lags=null data.lag_range=[1,10])."
        )
    if lags is not None:
        lags = [int(v) for v in lags]
        if not lags or min(lags) < 1:
            raise ValueError(f"lags={lags}; expected a non-empty list of integers >= 1 (frames).")
        return lags, None
    if len(lag_range) != 2 or not 1 <= int(lag_range[0]) <= int(lag_range[1]):
        raise ValueError(f"lag_range={list(lag_range)}; expected [low, high] with 1 <= low <= high (frames).")
    return None, (int(lag_range[0]), int(lag_range[1]))
