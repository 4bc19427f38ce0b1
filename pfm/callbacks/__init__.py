"""Lightning callbacks: plots, throughput monitoring and the step progress bar.

Public names: ``LossCurvePlot``, ``ExamplePlot``, ``RolloutErrorPlot``, ``ChainEvaluation`` (every picture of a run
is drawn in :mod:`pfm.callbacks.plots`), ``ThroughputMonitor``, ``StepProgressBar``, ``FitSummary``,
``GlobalLoss``.
"""

from pfm.callbacks.global_loss import GlobalLoss
from pfm.callbacks.plots import ChainEvaluation, ExamplePlot, LossCurvePlot, RolloutErrorPlot
from pfm.callbacks.progress import FitSummary, StepProgressBar
from pfm.callbacks.throughput import ThroughputMonitor

__all__ = [
    "ChainEvaluation",
    "ExamplePlot",
    "FitSummary",
    "GlobalLoss",
    "LossCurvePlot",
    "RolloutErrorPlot",
    "StepProgressBar",
    "ThroughputMonitor",
]
