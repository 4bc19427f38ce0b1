"""An on-device pool of PDE trajectories that is advanced while training reads samples from it.

The on-device data is split into ``num_pools`` *pools* (a :class:`PDEPool` each). Each pool owns its own
trajectories and random streams, derived from ``(seed, pool_index, step, purpose)``, and contributes a fixed
slice of every global batch. A process holds the pools of its rank, so the union of all ranks' samples at a
step is the same for any number of processes, and no two ranks ever draw the same sample.

Each :meth:`PDEPool.advance` steps every trajectory by one frame (``substeps`` solver steps) and, with
probability ``refresh_fraction``, replaces it with a fresh initial condition and freshly drawn coefficients
(the Tadpole "buffer strategy"). Trajectories that become non-finite or exceed ``max_abs`` are dropped,
replaced and counted in ``num_rejected``; they never reach a sample. The last ``history`` frames of every
trajectory are kept, so that windows of consecutive frames and lagged pairs can be drawn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from datagen.augment import draw_transform, periodic_crop, transform
from datagen.cuda_graphs import CudaGraphStepper
from datagen.ic import make_initial_condition
from datagen.pdes import check_limits, get_pde
from datagen.seeding import generator
from datagen.spectral import Grid, spectral_ops
from datagen.stepper import as_coefficient, build_stepper

__all__ = ["FamilySpec", "PDEPool"]

# Names renamed when "shard" came to mean only a webdataset tar file: an old name fails naming the new one.
RENAMED = {"ShardPool": "PDEPool"}


def __getattr__(name: str) -> object:
    """An old name of :data:`RENAMED` raises an ImportError naming the new one; other names are absent."""
    if name in RENAMED:
        raise ImportError(
            f"datagen.{name} is now datagen.{RENAMED[name]}, and its shard= argument is pool_index= (a shard is "
            f"a webdataset tar file; a pool is one seeded part of the on-device data). "
            f"Fix: from datagen import {RENAMED[name]}."
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class FamilySpec:
    """How one PDE family is sampled: coefficient ranges, initial conditions, dt and weight.

    A coefficient given as ``[low, high]`` is drawn uniformly per trajectory (log-uniformly when
    ``log_uniform`` lists it); a number is used as is; omitted ones take the family default. ``warmup_steps``
    frames are taken after each new initial condition before the trajectory is sampled. A frame is
    ``substeps`` solver steps of ``dt``. ``length`` is the box size (default: the pool's).
    """

    name: str
    dt: float
    coefficients: Mapping[str, float | Sequence[float]] = field(default_factory=dict)
    log_uniform: Sequence[str] = ()
    ic: Mapping[str, object] = field(default_factory=lambda: {"kind": "gaussian_random_field"})
    weight: float = 1.0
    warmup_steps: int = 0
    order: int = 4
    substeps: int = 1
    length: float | None = None

    def __post_init__(self) -> None:
        pde = get_pde(self.name)
        where = f"Fix conf/data/pde/{self.name}.yaml."
        unknown = sorted(set(self.coefficients) - set(pde.coefficients))
        if unknown:
            raise ValueError(
                f"Unknown coefficient(s) {unknown} for PDE {self.name!r}; expected a subset of "
                f"{sorted(pde.coefficients)}. {where}"
            )
        for key, value in self.coefficients.items():
            if isinstance(value, Sequence) and (len(value) != 2 or value[0] > value[1]):
                raise ValueError(
                    f"Coefficient range {key}={list(value)} for PDE {self.name!r}; expected [low, high] "
                    f"with low <= high. {where}"
                )
            if key in self.log_uniform and min(value if isinstance(value, Sequence) else [value]) <= 0:
                raise ValueError(f"log_uniform coefficient {key}={value} must be positive. {where}")
        if not self.dt > 0 or self.substeps < 1 or self.warmup_steps < 0 or not self.weight > 0:
            raise ValueError(
                f"PDE {self.name!r}: dt={self.dt}, substeps={self.substeps}, warmup_steps={self.warmup_steps}, "
                f"weight={self.weight}; expected dt > 0, substeps >= 1, warmup_steps >= 0, weight > 0. {where}"
            )

    def ranges(self) -> dict[str, tuple[float, float]]:
        """``name -> (low, high)`` for every coefficient (defaults as degenerate ranges)."""
        out = {}
        for key, default in get_pde(self.name).coefficients.items():
            value = self.coefficients.get(key, default)
            out[key] = (
                (float(value[0]), float(value[1])) if isinstance(value, Sequence) else (float(value),) * 2
            )
        return out


def _draw(value: float | Sequence[float], log: bool, count: int, g: torch.Generator, device) -> torch.Tensor:
    if not isinstance(value, Sequence):
        return torch.full((count,), float(value), device=device)
    low, high = float(value[0]), float(value[1])
    u = torch.rand(count, generator=g, device=device)
    if log:
        return torch.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    return low + u * (high - low)


class _FamilyState:
    """Frames, coefficients and stepper of the trajectories of one family in one pool.

    ``frames`` is a ring buffer ``(history, num_trajectories, channels, *grid)``; ``frames[head]`` is the
    newest frame. Coefficients that vary per trajectory are stored per row; fixed ones once, so that the
    ETDRK weights (6 complex tensors of the Fourier grid for ETDRK4) are shared when nothing varies.

    New coefficients are written into the existing tensors (``values``, the stepper's weights, the
    nonlinear term's ``buffers``), never into new ones: the nonlinear term reads ``values`` at call time, so
    one term serves the family's whole life, and with ``graphs`` the CUDA graph of :meth:`advance` is
    captured once and replayed with whatever the tensors hold.
    """

    def __init__(
        self,
        spec: FamilySpec,
        grid: Grid,
        num_trajectories: int,
        history: int,
        max_abs: float = 1e4,
        check: bool = True,
        graphs: bool = True,
    ) -> None:
        self.spec = spec
        self.max_abs = max_abs
        self.pde = get_pde(spec.name)
        self.grid = grid
        self.ops = spectral_ops(grid, self.pde.dealias)
        self.num_channels = self.pde.num_channels(grid.num_spatial_dims)
        self.history = history
        self.count = num_trajectories
        if check:
            check_limits(self.pde, grid, spec.dt, spec.order, spec.ranges())
        self.varying = any(isinstance(v, Sequence) for v in spec.coefficients.values())
        rows = num_trajectories if self.varying else 1
        # ETDRK weights (6 Fourier-grid tensors for ETDRK4) are kept per trajectory only when the linear
        # symbol depends on a coefficient that varies; otherwise one shared copy serves all rows.
        corners = [{k: as_coefficient(v[i], grid) for k, v in spec.ranges().items()} for i in (0, 1)]
        self.linear_varying = self.varying and not torch.equal(
            self.pde.linear(self.ops, **corners[0]), self.pde.linear(self.ops, **corners[1])
        )
        self.values = {k: as_coefficient([lo] * rows, grid) for k, (lo, _) in spec.ranges().items()}
        self.stepper = build_stepper(
            self.pde, grid, self.values if self.linear_varying else corners[0], spec.dt, spec.order
        )
        if not self.pde.is_linear:
            # built once, on the pool's own coefficient tensors (the stepper's may be a corner's)
            self.stepper.nonlinear = self.pde.nonlinear(self.ops, **self.values)
        if self.linear_varying:
            self.stepper.expand_rows(num_trajectories)
        # Steps every trajectory in advance(); on CUDA a replayed graph (same kernels, bitwise the same). Its
        # inputs are the coefficient tensors the nonlinear term reads (the dict's own method, not a lambda on
        # self: no reference cycle, so a dropped pool, e.g. a validation pool, frees its graph at once).
        self.step_all = CudaGraphStepper(self.stepper, inputs=self.values.values) if graphs else self.stepper
        shape = (history, num_trajectories, self.num_channels, *grid.spatial_shape)
        self.frames = torch.zeros(shape, device=grid.device)
        self.head = 0
        self.times = torch.zeros(num_trajectories, device=grid.device)

    @property
    def current(self) -> torch.Tensor:
        """The newest frame of every trajectory, ``(num_trajectories, channels, *grid)``."""
        return self.frames[self.head]

    def reset(self, rows: torch.Tensor, g: torch.Generator) -> None:
        """New coefficients and initial conditions for ``rows``; warm up and fill their history."""
        if rows.numel() == 0:
            return
        count, grid = rows.numel(), self.grid
        if self.varying:
            for key, default in self.pde.coefficients.items():
                value = self.spec.coefficients.get(key, default)
                drawn = _draw(value, key in self.spec.log_uniform, count, g, grid.device)
                self.values[key][rows] = drawn.reshape(-1, *([1] * (1 + grid.num_spatial_dims)))
            self._refresh_weights(rows)
        u = make_initial_condition(self.spec.ic, grid, count, self.num_channels, g)
        u = self.pde.admissible(u, self.ops)
        sub = self._stepper_for(rows)
        num_steps = self.spec.substeps
        if self.spec.warmup_steps:
            u = sub(u, self.spec.warmup_steps * num_steps)
        # Oldest first, so that after the loop frames[head] holds the newest.
        for j in range(self.history - 1, -1, -1):
            self.frames[(self.head - j) % self.history, rows] = u
            if j:
                u = sub(u, num_steps)
        self.times[rows] = self.spec.dt * num_steps * (self.spec.warmup_steps + self.history - 1)

    def _refresh_weights(self, rows: torch.Tensor) -> None:
        sub_values = {k: v[rows] for k, v in self.values.items()}
        linear = self.pde.linear(self.ops, **sub_values)
        if self.stepper.num_rows > 1:  # the linear part depends on per-row values
            linear = linear.expand(rows.numel(), *linear.shape[1:])
            self.stepper.set_rows(rows.tolist(), linear)
        # The nonlinear term reads self.values when called; only tensors it derived from them need rows.
        buffers = getattr(self.stepper.nonlinear, "buffers", None) or {}
        for name, target in buffers.items():
            if target.shape[0] != self.count:
                raise RuntimeError(
                    f"PDE {self.spec.name!r}: nonlinear buffer {name!r} has {target.shape[0]} rows; expected "
                    f"one per trajectory ({self.count}), so that new coefficients can be written row by row. "
                    "Fix the family's nonlinear(): derive buffers from the per-row coefficient tensors."
                )
        for row in rows.tolist() if buffers else []:
            # One row at a time, like set_rows: a row's buffers must not depend on which rows were refreshed
            # with it (batched FFTs may round differently), or a resumed pool would differ.
            one = {k: v[row : row + 1] if v.shape[0] > 1 else v for k, v in self.values.items()}
            fresh = self.pde.nonlinear(self.ops, **one)
            for name, target in buffers.items():
                target[row] = fresh.buffers[name][0]

    def _stepper_for(self, rows: torch.Tensor):
        if rows.numel() == self.count and bool((rows == torch.arange(self.count, device=rows.device)).all()):
            return self.stepper
        nonlinear = None
        if not self.pde.is_linear:
            sub_values = {k: v[rows] if v.shape[0] > 1 else v for k, v in self.values.items()}
            nonlinear = self.pde.nonlinear(self.ops, **sub_values)
        return self.stepper.select(rows, nonlinear)

    def advance(self) -> torch.Tensor:
        """Step every trajectory by one frame; returns the mask ``(num_trajectories,)`` of blown-up ones."""
        new = self.step_all(self.current, self.spec.substeps)
        self.head = (self.head + 1) % self.history
        self.frames[self.head] = new
        self.times += self.spec.dt * self.spec.substeps
        dims = tuple(range(1, new.ndim))
        return ~torch.isfinite(new).all(dim=dims) | (new.abs().amax(dim=dims) > self.max_abs)

    def window(self, row: int, length: int) -> torch.Tensor:
        """The last ``length`` frames of trajectory ``row``, oldest first, ``(length, channels, *grid)``."""
        index = [(self.head - j) % self.history for j in range(length - 1, -1, -1)]
        return self.frames[index, row]


class PDEPool:
    """One pool of PDE trajectories: for each family, ``num_trajectories`` fields on ``device``.

    Each family's dt and coefficient ranges are checked against its stability/resolution limits when the
    pool is built (``check=False`` skips that, e.g. to test the rejection of blown-up trajectories). With
    ``graphs`` (default) :meth:`advance` replays one captured CUDA graph per family on a CUDA device
    (:class:`datagen.cuda_graphs.CudaGraphStepper`: the same kernels, so bitwise the same frames, without the
    launch overhead); ``graphs=False`` calls the solver directly. On other devices both are the same call.
    """

    def __init__(
        self,
        families: Sequence[FamilySpec],
        *,
        num_spatial_dims: int = 3,
        n: int = 64,
        length: float = 1.0,
        num_trajectories: int = 8,
        refresh_fraction: float = 0.1,
        history: int = 1,
        max_abs: float = 1e4,
        check: bool = True,
        seed: int = 0,
        pool_index: int = 0,
        device: torch.device | str = "cpu",
        graphs: bool = True,
    ) -> None:
        if not families:
            raise ValueError("No PDE families given; expected at least one FamilySpec.")
        if not 0.0 <= refresh_fraction <= 1.0:
            raise ValueError(f"refresh_fraction={refresh_fraction}; expected a value in [0, 1].")
        if history < 1:
            raise ValueError(f"history={history}; expected >= 1 frames kept per trajectory.")
        device = torch.device(device)
        self.num_spatial_dims = num_spatial_dims
        self.n = n
        self.families = []
        for spec in families:
            grid = Grid(num_spatial_dims, n, spec.length or length, device)
            self.families.append(_FamilyState(spec, grid, num_trajectories, history, max_abs, check, graphs))
        self.device = device
        self.history = history
        self.refresh_fraction = refresh_fraction
        self.max_abs = max_abs
        self.seed = seed
        self.pool_index = pool_index
        self.step = 0
        self.num_draws = 0  # sample_* calls since the last advance: each gets its own random stream
        self.num_rejected = 0
        g = self._generator("init")
        for fam in self.families:
            fam.reset(torch.arange(num_trajectories, device=device), g)

    @property
    def grid(self) -> Grid:
        """The grid of the first family (all families share ``n`` and ``num_spatial_dims``)."""
        return self.families[0].grid

    @property
    def max_channels(self) -> int:
        """Largest channel count over the families (windows and pairs are zero-padded to it)."""
        return max(f.num_channels for f in self.families)

    def _generator(self, purpose: str, step: int | None = None) -> torch.Generator:
        return generator(
            self.seed, self.pool_index, self.step if step is None else step, purpose, device=self.device
        )

    def advance(self) -> None:
        """Step every trajectory once, replace a random ``refresh_fraction`` and any that blew up."""
        g = self._generator("advance")
        for fam in self.families:
            bad = fam.advance()
            refresh = torch.rand(fam.count, generator=g, device=self.device) < self.refresh_fraction
            self.num_rejected += int(bad.sum())
            fam.reset(torch.nonzero(refresh | bad).flatten(), g)
        self.step += 1
        self.num_draws = 0

    def _check_crop(self, crop: int | None) -> None:
        if crop is not None and crop > self.n:
            raise ValueError(
                f"Crop size {crop} is larger than the grid ({self.n} points per axis); "
                f"set data.crop <= {self.n} or data.n >= {crop}."
            )

    def _draw_sources(self, batch: int, purpose: str) -> tuple[torch.Generator, list[tuple[int, int]]]:
        # the first draw after an advance keeps the plain purpose, so one draw per step is the stream it always was
        g = self._generator(purpose if self.num_draws == 0 else f"{purpose}#{self.num_draws}")
        self.num_draws += 1
        weights = torch.tensor([f.spec.weight for f in self.families], device=self.device)
        family_index = torch.multinomial(weights, batch, replacement=True, generator=g).tolist()
        rows = [
            int(torch.randint(self.families[i].count, (1,), generator=g, device=self.device))
            for i in family_index
        ]
        self.last_sources = list(zip(family_index, rows, strict=True))
        return g, self.last_sources

    def provenance(self, family: int, row: int) -> dict[str, object]:
        """JSON-ready description of trajectory ``row`` of ``family``: pde, coefficients, time, dt, grid."""
        fam = self.families[family]
        return {
            "pde": fam.spec.name,
            "coefficients": {k: float(v[row if v.shape[0] > 1 else 0]) for k, v in fam.values.items()},
            "time": float(fam.times[row]),
            "dt": fam.spec.dt,
            "substeps": fam.spec.substeps,
            "grid": {
                "num_spatial_dims": fam.grid.num_spatial_dims,
                "n": fam.grid.n,
                "length": fam.grid.length,
            },
            "seed": self.seed,
            "pool_index": self.pool_index,
            "step": self.step,
        }

    def _view(
        self, fam: _FamilyState, x: torch.Tensor, crop: int | None, augment: bool, g: torch.Generator
    ) -> torch.Tensor:
        """Random periodic crop (or roll) and symmetry transform of ``(..., channels, *grid)``."""
        d = self.num_spatial_dims
        starts = torch.randint(self.n, (d,), generator=g, device=self.device).tolist()
        if not augment and crop is None:
            return x
        x = periodic_crop(x, starts if augment or crop is not None else [0] * d, crop)
        if augment:
            flips, perm = draw_transform(d, g, self.device)
            x = transform(x, flips, perm, fam.pde.is_vector)
        return x

    def sample_crops(
        self, batch: int, crop: int, *, augment: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch`` random single-channel periodic crops of the current frames.

        Returns the crops ``(batch, 1, crop, ..., crop)`` and the index of each crop's family ``(batch,)``.
        """
        self._check_crop(crop)
        g, sources = self._draw_sources(batch, "crops")
        out = []
        for f, row in sources:
            fam = self.families[f]
            channel = int(torch.randint(fam.num_channels, (1,), generator=g, device=self.device))
            x = self._view(fam, fam.current[row], crop, augment, g)
            out.append(x[channel : channel + 1])
        return torch.stack(out).contiguous(), torch.tensor([f for f, _ in sources], device=self.device)

    def sample_windows(
        self, batch: int, length: int, *, crop: int | None = None, augment: bool = True
    ) -> dict[str, torch.Tensor]:
        """``batch`` windows of ``length`` consecutive frames with all fields.

        Returns ``input`` ``(batch, length, max_channels, *grid_or_crop)`` (zero-padded channels),
        ``channel_mask`` ``(batch, max_channels)``, ``pde`` ``(batch,)`` and ``dt`` ``(batch,)`` (frame spacing).
        """
        if not 1 <= length <= self.history:
            raise ValueError(
                f"Window length {length} needs 1 <= length <= history={self.history}; raise data.history."
            )
        self._check_crop(crop)
        g, sources = self._draw_sources(batch, "windows")
        out, masks, dts = [], [], []
        c_max = self.max_channels
        for f, row in sources:
            fam = self.families[f]
            x = self._view(fam, fam.window(row, length), crop, augment, g)
            pad = torch.zeros((length, c_max - fam.num_channels, *x.shape[2:]), device=self.device)
            out.append(torch.cat((x, pad), dim=1))
            masks.append(torch.arange(c_max, device=self.device) < fam.num_channels)
            dts.append(fam.spec.dt * fam.spec.substeps)
        return {
            "input": torch.stack(out).contiguous(),
            "channel_mask": torch.stack(masks),
            "pde": torch.tensor([f for f, _ in sources], device=self.device),
            "dt": torch.tensor(dts, device=self.device),
        }

    def sample_pairs(
        self, batch: int, lag: int, *, crop: int | None = None, augment: bool = True
    ) -> dict[str, torch.Tensor]:
        """``batch`` pairs ``(x_t, x_{t+lag})`` of frames ``lag`` apart, each ``(batch, max_channels, *grid_or_crop)``.

        Also returns ``channel_mask``, ``pde``, ``dt`` (frame spacing) and ``lag`` ``(batch,)``.
        """
        windows = self.sample_windows(batch, lag + 1, crop=crop, augment=augment)
        x = windows.pop("input")
        windows["lag"] = torch.full((batch,), lag, device=self.device)
        return {"input": x[:, 0].contiguous(), "target": x[:, -1].contiguous(), **windows}

    def memory_bytes(self) -> int:
        """Bytes held by frames, coefficients, ETDRK weights and nonlinear buffers of this pool."""
        total = 0
        for fam in self.families:
            buffers = getattr(fam.stepper.nonlinear, "buffers", None) or {}
            tensors = [fam.frames, fam.times, *fam.values.values(), *fam.stepper.tensors(), *buffers.values()]
            total += sum(t.numel() * t.element_size() for t in tensors)
        return total

    def state_dict(self) -> dict[str, object]:
        """Everything needed to continue the stream exactly: frames, coefficients, step and counters.

        ETDRK weights are not saved; they are recomputed from the coefficients on load. Tensors are on the
        CPU; on a CPU pool they share memory with the pool (use :meth:`snapshot` for a copy).
        """
        return self._state(lambda t: t.cpu())

    def snapshot(self) -> dict[str, object]:
        """A copy of :meth:`state_dict` that stays on the pool's device (cheap: no host transfer).

        The pool may advance afterwards without changing the copy; :meth:`load_state_dict` accepts it.
        """
        return self._state(lambda t: t.clone())

    def _state(self, copy) -> dict[str, object]:
        return {
            "step": self.step,
            "num_draws": self.num_draws,
            "num_rejected": self.num_rejected,
            "families": [
                {
                    "name": f.spec.name,
                    "frames": copy(f.frames),
                    "head": f.head,
                    "times": copy(f.times),
                    "values": {k: copy(v) for k, v in f.values.items()},
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
        for fam, saved_fam in zip(self.families, state["families"], strict=True):
            if tuple(saved_fam["frames"].shape) != tuple(fam.frames.shape):
                raise ValueError(
                    f"Pool state for {fam.spec.name!r} has frames {tuple(saved_fam['frames'].shape)}; "
                    f"expected {tuple(fam.frames.shape)}. Use the same grid, history and num_trajectories."
                )
            fam.frames = saved_fam["frames"].to(self.device).clone()
            fam.head = int(saved_fam["head"])
            fam.times = saved_fam["times"].to(self.device).clone()
            for k, v in saved_fam["values"].items():
                fam.values[k].copy_(v.to(self.device))
            if fam.varying:
                fam._refresh_weights(torch.arange(fam.count, device=self.device))
        self.step = int(state["step"])
        self.num_draws = int(state.get("num_draws", 0))  # states saved before draws were counted: 0
        self.num_rejected = int(state["num_rejected"])
