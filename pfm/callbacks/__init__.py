"""Lightning callbacks: plots, throughput monitoring and the step progress bar.

Public names: ``LossCurvePlot``, ``ExamplePlot``, ``ThroughputMonitor``, ``StepProgressBar``.
"""

from pfm.callbacks.plots import ExamplePlot, LossCurvePlot
from pfm.callbacks.progress import StepProgressBar
from pfm.callbacks.throughput import ThroughputMonitor

__all__ = ["ExamplePlot", "LossCurvePlot", "StepProgressBar", "ThroughputMonitor"]
