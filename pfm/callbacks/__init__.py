"""Lightning callbacks: plots and throughput monitoring.

Public names: ``LossCurvePlot``, ``ReconstructionPlot``, ``ThroughputMonitor``.
"""

from pfm.callbacks.plots import LossCurvePlot, ReconstructionPlot
from pfm.callbacks.throughput import ThroughputMonitor

__all__ = ["LossCurvePlot", "ReconstructionPlot", "ThroughputMonitor"]
