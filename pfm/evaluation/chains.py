"""Evaluation of transfer operators on coarse-grained chains, where long simulations give the truth.

For one test chain (drawn from a seed the training pools never use) :func:`reference_run` simulates
``num_replicas`` long trajectories; the model rolls out trajectories from frames of them. Compared:
histograms of end-to-end distance and radius of gyration; the free-energy surface over the two slowest TICA
components (``deeptime``, fit on the reference) as MAE in kcal/mol over bins both populate; state coverage
(the fraction of reference-populated bins the model visits); and a Chapman-Kolmogorov check over states cut
along the slowest component (two transitions at lag N against one at 2N). ``fes.png`` shows the surfaces
side by side.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from datagen.md import ForceField, centre, end_to_end, langevin_step, make_chains, radius_of_gyration
from datagen.seeding import generator
from pfm.embeddings import residue_ids
from pfm.figures import pyplot, save_png
from pfm.io import atomic_path

__all__ = [
    "chapman_kolmogorov",
    "distance_features",
    "evaluate_chains",
    "free_energy",
    "free_energy_mae",
    "reference_run",
]

KCAL_PER_KJ = 1.0 / 4.184
BOLTZMANN_KCAL = 0.0083144626 * KCAL_PER_KJ  # kcal / (mol K)


def reference_run(
    simulation: dict[str, Any],
    *,
    num_residues: int,
    temperature: float,
    num_replicas: int,
    num_frames: int,
    seed: int = 12345,
    residue_ids: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Long trajectories of one chain: ``traj`` ``(num_frames, num_replicas, L, 3)`` nm, centred.

    ``simulation`` holds the pool settings (``force_field``, ``step_size``, ``substeps``, ``warmup_frames``);
    also returned: ``mask`` ``(L,)``, ``residue_ids`` ``(L,)``, ``native`` ``(L, 3)`` and ``system`` (the chain).
    """
    ff = ForceField.from_dict(simulation.get("force_field"))
    g = generator(seed, "evaluation-chain", device=device)
    lengths = torch.tensor([num_residues], device=device)
    ids = None if residue_ids is None else residue_ids[None].to(device)
    one = make_chains(lengths, num_residues, torch.tensor([float(temperature)]), g, ff, residue_ids=ids)
    rows = torch.zeros(num_replicas, dtype=torch.long, device=device)
    system = one.select(rows)
    step, sub = simulation["step_size"], simulation["substeps"]
    x = langevin_step(
        system.native.clone(), system, ff, step, g, sub * max(1, simulation.get("warmup_frames", 5))
    )
    frames = []
    for _ in range(num_frames):
        x = langevin_step(x, system, ff, step, g, sub)
        frames.append(centre(x, system.mask))
    return {
        "traj": torch.stack(frames),
        "mask": one.mask[0],
        "residue_ids": one.residue_ids[0],
        "native": one.native[0],
        "system": one,
    }


def distance_features(x: torch.Tensor) -> np.ndarray:
    """Pairwise C-alpha distances with |i - j| >= 2 of ``(..., L, 3)``, flattened to ``(N, P)`` float64."""
    num = x.shape[-2]
    i, j = torch.triu_indices(num, num, offset=2)
    d = (x[..., i, :] - x[..., j, :]).norm(dim=-1)
    return d.reshape(-1, d.shape[-1]).double().cpu().numpy()


def free_energy(points: np.ndarray, edges: tuple[np.ndarray, np.ndarray], kt: float) -> np.ndarray:
    """-kT ln p of a 2D histogram of ``points`` ``(N, 2)`` over ``edges`` (inf where empty), kcal/mol."""
    counts, _, _ = np.histogram2d(points[:, 0], points[:, 1], bins=edges)
    p = counts / max(counts.sum(), 1)
    with np.errstate(divide="ignore"):
        return -kt * np.log(p)


def free_energy_mae(f_ref: np.ndarray, f_model: np.ndarray) -> tuple[float, float]:
    """MAE (kcal/mol) of two surfaces over bins both populate, and the coverage of the reference's bins."""
    ref, model = np.isfinite(f_ref), np.isfinite(f_model)
    both = ref & model
    coverage = float(both.sum() / max(ref.sum(), 1))
    if not both.any():
        return math.inf, coverage
    return float(np.abs(f_ref[both] - f_model[both]).mean()), coverage


def _states(tic1: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    return np.digitize(tic1, cuts)


def _transition_matrix(start: np.ndarray, end: np.ndarray, num_states: int) -> np.ndarray:
    counts = np.zeros((num_states, num_states))
    np.add.at(counts, (start, end), 1.0)
    return counts / np.clip(counts.sum(1, keepdims=True), 1, None)


def chapman_kolmogorov(
    start: np.ndarray, after_one_2n: np.ndarray, after_two_n: np.ndarray, num_states: int
) -> float:
    """Mean total-variation distance between the state distributions after one 2N and two N transitions."""
    a = _transition_matrix(start, after_one_2n, num_states)
    b = _transition_matrix(start, after_two_n, num_states)
    return float(0.5 * np.abs(a - b).sum(1).mean())


@torch.no_grad()
def _rollout(
    model: nn.Module, x0, mask, lag_ns, temperature, cond, num_transitions, steps, g
) -> torch.Tensor:
    b = x0.shape[0]
    lag = torch.full((b,), float(lag_ns), device=x0.device)
    temp = torch.full((b,), float(temperature), device=x0.device)
    masks = mask[None].expand(b, -1)
    kwargs = {k: v[None].expand(b, *v.shape) for k, v in cond.items()}
    return model.rollout(
        x0, masks, lag, temp, num_transitions=num_transitions, steps=steps, generator=g, **kwargs
    )


def evaluate_chains(
    model: nn.Module,
    datamodule: Any,
    *,
    out_dir: str | Path | None = None,
    num_residues: int = 10,
    temperature: float | None = None,
    num_replicas: int = 32,
    num_frames: int = 300,
    lag_frames: int = 2,
    num_model_trajectories: int = 32,
    num_transitions: int = 20,
    steps: int = 20,
    num_bins: int = 20,
    num_states: int = 3,
    seed: int = 12345,
) -> dict[str, float]:
    """Reference simulation vs model rollouts at lag ``lag_frames``; metrics dict, and fes.png / json in out_dir."""
    from deeptime.decomposition import TICA  # imported when evaluating: deeptime takes seconds to import

    sim = datamodule.simulation()
    temperature = float(temperature if temperature is not None else sim["temperatures"][0])
    device = next(model.parameters()).device
    ids = None
    library = getattr(datamodule, "_library", None)
    if library:
        ids = residue_ids(library[0])
        num_residues = len(library[0])
    ref = reference_run(
        sim,
        num_residues=num_residues,
        temperature=temperature,
        num_replicas=num_replicas,
        num_frames=num_frames,
        seed=seed,
        residue_ids=ids,
        device=device,
    )
    traj, mask = ref["traj"], ref["mask"]
    fake = {"residue_ids": ref["residue_ids"][None], "mask": mask[None], "x_t": traj[0, :1]}
    fake["sequence_index"] = torch.zeros(1, dtype=torch.long, device=device)
    fake["lag"] = torch.ones(1, device=device)
    batch = datamodule.finish(fake)
    cond = {k: batch[k][0] for k in ("sequence_emb",) if k in batch} or {"residue_ids": ref["residue_ids"]}

    # TICA on the reference: one trajectory per replica
    per_replica = [distance_features(traj[:, r]) for r in range(traj.shape[1])]
    tica = TICA(lagtime=lag_frames, dim=2).fit(per_replica).fetch_model()
    ref_tics = np.concatenate([tica.transform(f) for f in per_replica])

    g = generator(seed, "evaluation-rollouts", device=device)
    starts_index = torch.randint(traj.shape[0], (num_model_trajectories,), generator=g, device=device)
    starts_rep = torch.randint(traj.shape[1], (num_model_trajectories,), generator=g, device=device)
    x0 = traj[starts_index, starts_rep]
    lag_ns = lag_frames * sim["frame_ns"]
    rollout = _rollout(model, x0, mask, lag_ns, temperature, cond, num_transitions, steps, g)
    model_frames = rollout[:, 1:]
    model_tics = tica.transform(distance_features(model_frames))
    finite = np.isfinite(model_tics).all(1)

    lo, hi = ref_tics.min(0), ref_tics.max(0)
    pad = 0.05 * (hi - lo)
    edges = (
        np.linspace(lo[0] - pad[0], hi[0] + pad[0], num_bins + 1),
        np.linspace(lo[1] - pad[1], hi[1] + pad[1], num_bins + 1),
    )
    kt = BOLTZMANN_KCAL * temperature
    f_ref = free_energy(ref_tics, edges, kt)
    f_model = free_energy(model_tics[finite], edges, kt)
    mae, coverage = free_energy_mae(f_ref, f_model)

    # Chapman-Kolmogorov: states cut at quantiles of the slowest component of the reference
    cuts = np.quantile(ref_tics[:, 0], np.linspace(0, 1, num_states + 1)[1:-1])
    one_2n = _rollout(model, x0, mask, 2 * lag_ns, temperature, cond, 1, steps, g)[:, 1]
    start_s = _states(tica.transform(distance_features(x0))[:, 0], cuts)
    end_2n_s = _states(tica.transform(distance_features(one_2n))[:, 0], cuts)
    after_two_n_s = _states(model_tics.reshape(num_model_trajectories, num_transitions, 2)[:, 1, 0], cuts)
    ck_model = chapman_kolmogorov(start_s, end_2n_s, after_two_n_s, num_states)
    ref_states = [_states(tica.transform(f)[:, 0], cuts) for f in per_replica]

    def reference_matrix(lag: int) -> np.ndarray:
        start = np.concatenate([s[:-lag] for s in ref_states])
        return _transition_matrix(start, np.concatenate([s[lag:] for s in ref_states]), num_states)

    p_n, p_2n = reference_matrix(lag_frames), reference_matrix(2 * lag_frames)
    ck_ref = float(0.5 * np.abs(p_2n - p_n @ p_n).sum(1).mean())
    model_2n = _transition_matrix(start_s, end_2n_s, num_states)
    seen = np.bincount(start_s, minlength=num_states) > 0  # rows the model's starts visited
    ck_vs_ref = float(0.5 * np.abs(model_2n - p_2n)[seen].sum(1).mean())
    ref_ree, model_ree = end_to_end(traj, mask), end_to_end(model_frames, mask)
    ref_rg, model_rg = radius_of_gyration(traj, mask), radius_of_gyration(model_frames, mask)
    results = {
        "fes_mae_kcal": mae,
        "coverage": coverage,
        "ck_model_tv": ck_model,
        "ck_reference_tv": ck_ref,
        "transition_2n_tv_vs_reference": ck_vs_ref,
        "end_to_end_mean_error_nm": float((model_ree.mean() - ref_ree.mean()).abs()),
        "rg_mean_error_nm": float((model_rg.mean() - ref_rg.mean()).abs()),
        "end_to_end_hist_l1": _hist_l1(ref_ree, model_ree),
        "rg_hist_l1": _hist_l1(ref_rg, model_rg),
        "nonfinite_fraction": float(1 - finite.mean()),
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        plot_fes(out_dir / "fes.png", f_ref, f_model, edges, results, (ref_ree, model_ree, ref_rg, model_rg))
        with atomic_path(out_dir / "evaluation.json") as tmp:
            tmp.write_text(json.dumps({**results, "temperature": temperature, "lag_ns": lag_ns}, indent=2))
    return results


def _hist_l1(ref: torch.Tensor, model: torch.Tensor, num_bins: int = 20) -> float:
    ref = ref.flatten().double().cpu().numpy()
    model = model.flatten().double().cpu().numpy()
    model = model[np.isfinite(model)]
    edges = np.linspace(ref.min(), ref.max(), num_bins + 1)
    a, _ = np.histogram(np.clip(ref, edges[0], edges[-1]), edges)
    b, _ = np.histogram(np.clip(model, edges[0], edges[-1]), edges)
    return float(np.abs(a / max(a.sum(), 1) - b / max(b.sum(), 1)).sum())


def plot_fes(path: Path, f_ref, f_model, edges, results, distributions) -> None:
    """Reference and model free-energy surfaces side by side, and the R_ee / Rg histograms below."""
    plt = pyplot()
    finite = np.concatenate([f_ref[np.isfinite(f_ref)], f_model[np.isfinite(f_model)]])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    fig, axes = plt.subplots(2, 2, figsize=(9, 8))
    extent = (edges[0][0], edges[0][-1], edges[1][0], edges[1][-1])
    for ax, f, title in (
        (axes[0, 0], f_ref, "reference (Langevin)"),
        (axes[0, 1], f_model, "model rollouts"),
    ):
        shown = np.where(np.isfinite(f), f, np.nan).T
        im = ax.imshow(
            shown, origin="lower", extent=extent, aspect="auto", vmin=vmin, vmax=vmax, cmap="viridis"
        )
        ax.set_title(title)
        ax.set_xlabel("TIC 1")
        ax.set_ylabel("TIC 2")
    fig.colorbar(im, ax=axes[0].tolist(), label="free energy (kcal/mol)")
    ref_ree, model_ree, ref_rg, model_rg = (t.flatten().cpu().numpy() for t in distributions)
    for ax, (a, b, name) in zip(
        axes[1], ((ref_ree, model_ree, "end-to-end (nm)"), (ref_rg, model_rg, "Rg (nm)")), strict=True
    ):
        bins = np.linspace(a.min(), a.max(), 25)
        ax.hist(a, bins=bins, density=True, alpha=0.5, label="reference")
        ax.hist(
            np.clip(b[np.isfinite(b)], bins[0], bins[-1]), bins=bins, density=True, alpha=0.5, label="model"
        )
        ax.set_xlabel(name)
        ax.legend()
    fig.suptitle(
        f"free-energy MAE {results['fes_mae_kcal']:.2f} kcal/mol, coverage {results['coverage']:.2f}, "
        f"CK TV {results['ck_model_tv']:.2f}"
    )
    save_png(fig, path, dpi=90)
