"""An on-device pool of PDE trajectories that is advanced while training reads samples from it.

The pool is split into ``num_shards`` *data shards*. Each shard owns its own trajectories and random
streams, derived from ``(seed, shard, step, purpose)``, and contributes a fixed slice of every global batch.
A process holds the shards of its rank, so the union of all ranks' samples at a step is the same for any
number of processes, and no two ranks ever draw the same sample.

Each :meth:`ShardPool.advance` either steps a trajectory forward or, with probability ``refresh_fraction``,
replaces it with a fresh initial condition and freshly drawn coefficients (the Tadpole "buffer strategy").
Trajectories that become non-finite or exceed ``max_abs`` are dropped, replaced and counted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from datagen import ic as ic_module
from datagen.pdes import get_pde
from datagen.seeding import generator
from datagen.spectral import ETDRKStepper, Grid, etdrk_coefficients
from datagen.stepper import as_coefficient

__all__ = ["FamilySpec", "ShardPool", "random_crops"]


@dataclass
class FamilySpec:
    """How one PDE family is sampled: coefficient ranges, initial conditions, dt and weight.

    A coefficient given as ``[low, high]`` is drawn uniformly per trajectory (log-uniformly when
    ``log_uniform`` lists it); a number is used as is. ``warmup_steps`` steps are taken after each new
    initial condition before the trajectory is sampled.
    """

    name: str
    dt: float
    coefficients: Mapping[str, float | Sequence[float]] = field(default_factory=dict)
    log_uniform: Sequence[str] = ()
    ic: Mapping[str, object] = field(default_factory=lambda: {"kind": "gaussian_random_field"})
    weight: float = 1.0
    warmup_steps: int = 0
    order: int = 4

    def __post_init__(self) -> None:
        pde = get_pde(self.name)
        unknown = sorted(set(self.coefficients) - set(pde.coefficients))
        if unknown:
            raise ValueError(
                f"Unknown coefficient(s) {unknown} for PDE {self.name!r}; expected a subset of "
                f"{sorted(pde.coefficients)}. Fix conf/data/pde/{self.name}.yaml."
            )
        for key, value in self.coefficients.items():
            if isinstance(value, Sequence) and (len(value) != 2 or value[0] > value[1]):
                raise ValueError(
                    f"Coefficient range {key}={list(value)} for PDE {self.name!r}; expected [low, high] "
                    "with low <= high."
                )


def _draw(value: float | Sequence[float], log: bool, count: int, g: torch.Generator, device) -> torch.Tensor:
    if not isinstance(value, Sequence):
        return torch.full((count,), float(value), device=device)
    low, high = float(value[0]), float(value[1])
    u = torch.rand(count, generator=g, device=device)
    if log:
        return torch.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    return low + u * (high - low)


class _FamilyState:
    """Fields, coefficients and ETDRK coefficients of the trajectories of one family in one shard."""

    def __init__(self, spec: FamilySpec, grid: Grid, num_trajectories: int) -> None:
        self.spec = spec
        self.pde = get_pde(spec.name)
        self.grid = grid
        self.num_channels = self.pde.num_channels(grid.num_spatial_dims)
        shape = (num_trajectories, self.num_channels, *grid.spatial_shape)
        self.fields = torch.zeros(shape, device=grid.device)
        defaults = self.pde.coefficients
        # Coefficient tensors are updated in place so that the nonlinear closure always sees current rows.
        self.values = {k: as_coefficient([v] * num_trajectories, grid) for k, v in defaults.items()}
        self.stepper = ETDRKStepper(
            grid,
            self.pde.linear(grid, **self.values).expand(
                num_trajectories, *([-1] * (grid.num_spatial_dims + 1))
            ),
            None if self.pde.is_linear else self.pde.nonlinear(grid, **self.values),
            dt=spec.dt,
            order=spec.order,
        )
        self.times = torch.zeros(num_trajectories, device=grid.device)

    def reset(self, rows: torch.Tensor, g: torch.Generator) -> None:
        """New coefficients and initial conditions for the trajectories ``rows``."""
        if rows.numel() == 0:
            return
        count = rows.numel()
        grid = self.grid
        for key, default in self.pde.coefficients.items():
            value = self.spec.coefficients.get(key, default)
            drawn = _draw(value, key in self.spec.log_uniform, count, g, grid.device)
            self.values[key][rows] = drawn.reshape(-1, *([1] * (1 + grid.num_spatial_dims)))
        linear = self.pde.linear(grid, **{k: v[rows] for k, v in self.values.items()})
        linear = linear.expand(count, *linear.shape[1:])
        fresh = etdrk_coefficients(linear, self.spec.dt, self.stepper.order)
        for name, value in fresh.items():
            target = self.stepper.coefficients[name]
            if target.shape[0] != self.fields.shape[0]:
                target = target.expand(self.fields.shape[0], *target.shape[1:]).clone()
                self.stepper.coefficients[name] = target
            target[rows] = value
        self.fields[rows] = make_initial_condition(self.spec.ic, grid, count, self.num_channels, g)
        self.times[rows] = 0.0
        for _ in range(self.spec.warmup_steps):
            self.fields[rows] = self._step_rows(rows)

    def _step_rows(self, rows: torch.Tensor) -> torch.Tensor:
        if rows.numel() == self.fields.shape[0]:
            return self.stepper(self.fields)
        # Stepping a subset needs the matching rows of every per-sample coefficient.
        sub = ETDRKStepper.__new__(ETDRKStepper)
        sub.grid, sub.dt, sub.order = self.grid, self.stepper.dt, self.stepper.order
        sub.coefficients = {k: v[rows] if v.shape[0] > 1 else v for k, v in self.stepper.coefficients.items()}
        if self.pde.is_linear:
            sub.nonlinear = None
        else:
            sub.nonlinear = self.pde.nonlinear(self.grid, **{k: v[rows] for k, v in self.values.items()})
        return sub(self.fields[rows])


def make_initial_condition(
    spec: Mapping[str, object], grid: Grid, batch: int, channels: int, g: torch.Generator
) -> torch.Tensor:
    """Draw ``batch`` initial conditions as configured by ``spec`` (``kind`` plus its options)."""
    options = dict(spec)
    kind = options.pop("kind", "gaussian_random_field")
    if kind == "gaussian_random_field":
        exponent = options.pop("powerlaw_exponent", 3.0)
        if isinstance(exponent, Sequence):
            exponent = _draw(exponent, False, batch, g, grid.device)
        if options:
            raise ValueError(f"Unknown option(s) {sorted(options)} for initial condition {kind!r}.")
        return ic_module.gaussian_random_field(grid, batch, channels, powerlaw_exponent=exponent, generator=g)
    raise ValueError(f"Unknown initial condition kind {kind!r}; expected one of ['gaussian_random_field'].")


class ShardPool:
    """The trajectories of one data shard: for each family, ``num_trajectories`` fields on ``device``."""

    def __init__(
        self,
        families: Sequence[FamilySpec],
        *,
        num_spatial_dims: int = 3,
        n: int = 64,
        length: float = 1.0,
        num_trajectories: int = 8,
        refresh_fraction: float = 0.1,
        max_abs: float = 1e4,
        seed: int = 0,
        shard: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        if not families:
            raise ValueError("No PDE families given; expected at least one FamilySpec.")
        if not 0.0 <= refresh_fraction <= 1.0:
            raise ValueError(f"refresh_fraction={refresh_fraction}; expected a value in [0, 1].")
        self.grid = Grid(num_spatial_dims=num_spatial_dims, n=n, length=length, device=torch.device(device))
        self.families = [_FamilyState(spec, self.grid, num_trajectories) for spec in families]
        self.refresh_fraction = refresh_fraction
        self.max_abs = max_abs
        self.seed = seed
        self.shard = shard
        self.step = 0
        self.num_rejected = 0
        g = self._generator("init")
        for fam in self.families:
            fam.reset(torch.arange(num_trajectories, device=self.grid.device), g)

    def _generator(self, purpose: str, step: int | None = None) -> torch.Generator:
        return generator(
            self.seed, self.shard, self.step if step is None else step, purpose, device=self.grid.device
        )

    def advance(self) -> None:
        """Step every trajectory once, replace a random ``refresh_fraction`` and any that blew up."""
        g = self._generator("advance")
        for fam in self.families:
            count = fam.fields.shape[0]
            fam.fields = fam.stepper(fam.fields)
            fam.times += fam.spec.dt
            refresh = torch.rand(count, generator=g, device=self.grid.device) < self.refresh_fraction
            dims = tuple(range(1, fam.fields.ndim))
            bad = ~torch.isfinite(fam.fields).all(dim=dims) | (fam.fields.abs().amax(dim=dims) > self.max_abs)
            self.num_rejected += int(bad.sum())
            fam.reset(torch.nonzero(refresh | bad).flatten(), g)
        self.step += 1

    def sample_crops(
        self, batch: int, crop: int, *, augment: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch`` random single-channel periodic crops at the current step.

        Returns the crops ``(batch, 1, crop, ..., crop)`` and the index of each crop's family ``(batch,)``.
        """
        if crop > self.grid.n:
            raise ValueError(
                f"Crop size {crop} is larger than the grid ({self.grid.n} points per axis); "
                f"set data.crop <= {self.grid.n} or data.n >= {crop}."
            )
        g = self._generator("crops")
        device = self.grid.device
        weights = torch.tensor([f.spec.weight for f in self.families], device=device)
        family_index = torch.multinomial(weights, batch, replacement=True, generator=g)
        out = []
        for i in range(batch):
            fam = self.families[int(family_index[i])]
            row = int(torch.randint(fam.fields.shape[0], (1,), generator=g, device=device))
            channel = int(torch.randint(fam.num_channels, (1,), generator=g, device=device))
            out.append(random_crops(fam.fields[row, channel][None], crop, g, augment=augment))
        return torch.stack(out), family_index

    def state_dict(self) -> dict[str, object]:
        """Everything needed to continue the stream exactly: fields, coefficients, step and counters."""
        return {
            "step": self.step,
            "num_rejected": self.num_rejected,
            "families": [
                {
                    "name": f.spec.name,
                    "fields": f.fields.cpu(),
                    "times": f.times.cpu(),
                    "values": {k: v.cpu() for k, v in f.values.items()},
                    "coefficients": {k: v.cpu() for k, v in f.stepper.coefficients.items()},
                }
                for f in self.families
            ],
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore a state produced by :meth:`state_dict` of a pool with the same configuration."""
        saved = [f["name"] for f in state["families"]]
        mine = [f.spec.name for f in self.families]
        if saved != mine:
            raise ValueError(
                f"Pool state holds families {saved}; this pool has {mine}. Use the same data config."
            )
        device = self.grid.device
        for fam, saved_fam in zip(self.families, state["families"], strict=True):
            if tuple(saved_fam["fields"].shape) != tuple(fam.fields.shape):
                raise ValueError(
                    f"Pool state for {fam.spec.name!r} has fields {tuple(saved_fam['fields'].shape)}; "
                    f"expected {tuple(fam.fields.shape)}. Use the same grid and num_trajectories."
                )
            fam.fields = saved_fam["fields"].to(device)
            fam.times = saved_fam["times"].to(device)
            for k, v in saved_fam["values"].items():
                fam.values[k].copy_(v.to(device))
            fam.stepper.coefficients = {k: v.to(device) for k, v in saved_fam["coefficients"].items()}
        self.step = int(state["step"])
        self.num_rejected = int(state["num_rejected"])


def random_crops(field: torch.Tensor, crop: int, g: torch.Generator, *, augment: bool = True) -> torch.Tensor:
    """A random periodic crop of a single-channel ``(1, *grid)`` field, with random flips and axis order."""
    num_spatial_dims = field.ndim - 1
    device = field.device
    index = []
    for axis in range(num_spatial_dims):
        n = field.shape[1 + axis]
        start = int(torch.randint(n, (1,), generator=g, device=device))
        index.append((start + torch.arange(crop, device=device)) % n)
    grids = torch.meshgrid(*index, indexing="ij")
    out = field[(slice(None), *grids)]
    if augment:
        flips = torch.rand(num_spatial_dims, generator=g, device=device) < 0.5
        dims = [1 + a for a in range(num_spatial_dims) if bool(flips[a])]
        if dims:
            out = out.flip(dims)
        perm = torch.randperm(num_spatial_dims, generator=g, device=device).tolist()
        out = out.permute(0, *[1 + p for p in perm])
    return out.contiguous()
