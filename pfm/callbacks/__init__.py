"""Lightning callbacks: plots, throughput monitoring and the step progress bar.

Public names: ``LossCurvePlot``, ``ExamplePlot``, ``ThroughputMonitor``, ``StepProgressBar``, ``FitSummary``,
``GlobalLoss``.
"""

from pfm.callbacks.global_loss import GlobalLoss
from pfm.callbacks.plots import ExamplePlot, LossCurvePlot
from pfm.callbacks.progress import FitSummary, StepProgressBar
from pfm.callbacks.throughput import ThroughputMonitor

__all__ = ["ExamplePlot", "FitSummary", "GlobalLoss", "LossCurvePlot", "StepProgressBar", "ThroughputMonitor"]
