"""``stats.yaml`` of a dataset in The Well's layout, computed from its train split in pieces (streamed).

The keys are The Well's: ``mean``, ``std``, ``rms`` of every field, and ``mean_delta``, ``std_delta``,
``rms_delta`` of the differences between consecutive steps of every time-varying field; each maps a field to
a number (t0), a list of ``D`` numbers (t1) or a ``D x D`` nested list (t2), one per component, taken over
trajectories, steps and grid points (population std; ``rms = sqrt(mean^2 + std^2)``).

The train split is read one piece at a time (at most about ``max_bytes`` of one field; pieces follow each
trajectory's steps, and the last frame of a piece is kept to difference the next one), and pieces are merged
with Chan et al.'s pairwise update of count, mean and sum of squared deviations in float64, so a dataset larger
than memory works and the result equals the all-at-once computation to rounding.

Public names: ``compute_stats``, ``write_stats``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml

from pfm.io import atomic_path
from pfm.wellfmt.layout import FieldInfo, WellFile, split_files

__all__ = ["compute_stats", "write_stats"]


class _Moments:
    """Count, mean and sum of squared deviations per component, merged piece by piece (Chan et al. 1979)."""

    def __init__(self, num_components: int) -> None:
        self.count = 0
        self.mean = np.zeros(num_components)
        self.m2 = np.zeros(num_components)

    def add(self, values: np.ndarray) -> None:
        """Merge ``(samples, components)`` float64 values."""
        n = values.shape[0]
        if n == 0:
            return
        mean = values.mean(axis=0)
        m2 = ((values - mean) ** 2).sum(axis=0)
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(mean, std, rms)`` per component."""
        var = self.m2 / max(self.count, 1)
        return self.mean, np.sqrt(var), np.sqrt(var + self.mean**2)


def _components(data: np.ndarray, info: FieldInfo) -> np.ndarray:
    return np.asarray(data, dtype=np.float64).reshape(-1, len(info.channels))


def _refuse_non_finite(
    data: np.ndarray, layout: WellFile, info: FieldInfo, trajectory: Any, step: int
) -> None:
    if not np.isfinite(data).all():
        raise ValueError(
            f"{layout.path}: {info.path} holds NaN/Inf (trajectory {trajectory}, steps from {step}); stats.yaml "
            "would be NaN. Fix or drop that trajectory; `pfm data check` lists every such place."
        )


def compute_stats(path: str | Path, *, max_bytes: int = 256 << 20) -> dict[str, dict[str, Any]]:
    """The stats of ``<path>/data/train`` (see the module docstring), reading about ``max_bytes`` at a time."""
    folder = Path(path) / "data" / "train"
    files = split_files(folder) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(
            f"{folder} holds no *.hdf5/*.h5 file; stats come from the train split of a dataset in The Well's "
            "layout (`pfm data check` says what is missing)."
        )
    values: dict[str, tuple[FieldInfo, _Moments]] = {}
    deltas: dict[str, tuple[FieldInfo, _Moments]] = {}
    for file in files:
        layout = WellFile(file)
        with h5py.File(file, "r") as f:
            for info in [*layout.fields, *layout.constant_fields]:
                size = len(info.channels)
                moments = values.setdefault(info.name, (info, _Moments(size)))[1]
                delta = deltas.setdefault(info.name, (info, _Moments(size)))[1] if info.time_varying else None
                last: tuple[Any, np.ndarray] | None = None  # (trajectory, its last frame so far)
                for trajectory, step, data in layout.chunks(f, info, max_bytes):
                    _refuse_non_finite(data, layout, info, trajectory, step)
                    moments.add(_components(data, info))
                    if delta is None:
                        continue
                    frames = np.asarray(data, dtype=np.float64)
                    if last is not None and last[0] == trajectory and step > 0:
                        frames = np.concatenate([last[1][None], frames])
                    delta.add(_components(np.diff(frames, axis=0), info))
                    last = (trajectory, frames[-1])
    stats: dict[str, dict[str, Any]] = {k: {} for k in ("mean", "std", "rms")}
    stats |= {k: {} for k in ("mean_delta", "std_delta", "rms_delta")}
    for suffix, table in (("", values), ("_delta", deltas)):
        for name, (info, moments) in table.items():
            for key, value in zip(("mean", "std", "rms"), moments.result(), strict=True):
                stats[key + suffix][name] = _nested(value, info)
    return stats


def _nested(value: np.ndarray, info: FieldInfo) -> Any:
    """A number (t0), a list (t1) or a nested list (t2), as The Well writes them."""
    if info.order == 0:
        return float(value.reshape(-1)[0])
    side = round(len(info.channels) ** (1 / info.order))
    return value.reshape((side,) * info.order).tolist()


def write_stats(path: str | Path, *, max_bytes: int = 256 << 20) -> dict[str, dict[str, Any]]:
    """Compute the stats and write ``<path>/stats.yaml`` atomically (readers never see half a file)."""
    stats = compute_stats(path, max_bytes=max_bytes)
    with atomic_path(Path(path) / "stats.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(stats, sort_keys=False))
    return stats
