"""Evaluation of trained models against reference simulations.

Public names: ``evaluate_chains`` (TITO/PLaTITO rollouts vs long Langevin runs of coarse-grained chains:
R_ee and Rg histograms, TICA free-energy MAE, coverage, Chapman-Kolmogorov), ``reference_run``,
``free_energy``, ``free_energy_mae``, ``chapman_kolmogorov``, ``distance_features``.
"""

from pfm.evaluation.chains import *  # noqa: F403 - the package's names are chains' public names
from pfm.evaluation.chains import __all__  # noqa: F401 - one list of them, kept in pfm.evaluation.chains
