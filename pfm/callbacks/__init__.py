"""Lightning callbacks: plots and throughput monitoring.

Public names: ``LossCurvePlot``, ``ExamplePlot``, ``ThroughputMonitor``.
"""

from pfm.callbacks.plots import ExamplePlot, LossCurvePlot
from pfm.callbacks.throughput import ThroughputMonitor

__all__ = ["ExamplePlot", "LossCurvePlot", "ThroughputMonitor"]
