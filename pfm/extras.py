"""Optional dependencies: what only one feature needs is a pip extra, and a missing one names the line to run.

Extras (pyproject.toml): ``esm2`` (transformers, for ``pfm embed --provider esm2``), ``deepspeed`` (the
``strategy=deepspeed_*`` files and exporting their checkpoint folders), ``esmc``, ``gpu`` (xformers) and
``slurm`` (hydra-submitit-launcher). ``dev`` installs all of them but ``gpu``.
"""

from __future__ import annotations

import importlib.util

__all__ = ["extra_problem", "require_extra"]


def extra_problem(module: str, extra: str, purpose: str) -> str | None:
    """Why ``purpose`` cannot run (``module`` of extra ``extra`` is not installed), or None if it can."""
    try:
        if importlib.util.find_spec(module) is not None:
            return None
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        pass
    return f"{purpose} needs `{module}`, which is not installed; install it with: pip install 'pfm[{extra}]'"


def require_extra(module: str, extra: str, purpose: str) -> None:
    """Raise an ImportError naming ``pip install 'pfm[extra]'`` when ``module`` is not installed."""
    problem = extra_problem(module, extra, purpose)
    if problem is not None:
        raise ImportError(problem)
