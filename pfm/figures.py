"""Figures as PNG files: matplotlib with the Agg backend (draws without a display), written atomically.

Every picture pfm writes (a run's plots, ``pfm evaluate``'s, the chain evaluation's) is drawn with
:func:`pyplot` and written with :func:`save_png`. matplotlib is imported when a figure is drawn, never when this
module is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pfm.io import atomic_path

__all__ = ["pyplot", "save_png"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` with the Agg backend, which draws into files on a machine without a display."""
    # imported when drawing: matplotlib takes seconds to import, and needs the Agg backend chosen before pyplot
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # matplotlib's pyplot, only once the backend above is chosen

    return plt


def save_png(fig: Any, path: str | Path, dpi: int = 100) -> None:
    """Write ``fig`` to ``path`` as PNG, atomically (a reader never sees half a picture), then close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    pyplot().close(fig)
