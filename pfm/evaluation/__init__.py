"""Evaluation of trained models against reference simulations.

Public names: ``evaluate_chains`` (TITO/PLaTITO rollouts vs long Langevin runs of coarse-grained chains:
R_ee and Rg histograms, TICA free-energy MAE, coverage, Chapman-Kolmogorov), ``reference_run``,
``free_energy``, ``free_energy_mae``, ``chapman_kolmogorov``, ``distance_features``.
"""

from pfm.evaluation.chains import (
    chapman_kolmogorov,
    distance_features,
    evaluate_chains,
    free_energy,
    free_energy_mae,
    reference_run,
)

__all__ = [
    "chapman_kolmogorov",
    "distance_features",
    "evaluate_chains",
    "free_energy",
    "free_energy_mae",
    "reference_run",
]
