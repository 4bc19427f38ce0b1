"""A package's public names imported on first use (PEP 562), for ``datagen``, ``pfm.checkpoints`` and
``pfm.embeddings``; a command's code named as ``"module:function"`` and imported when the command runs.

Importing one light submodule runs its package's ``__init__`` first; an ``__init__`` that imported its public
names eagerly would load torch for ``datagen.argtypes`` (``pfm sample --help``) or for the registry
(``pfm list``). Such a package names each public name's module instead and sets
``__getattr__ = lazy_names(__name__, homes)``. Likewise a command line whose code loads torch (``pfm sample``,
``pfm embed``, ``pfm-datagen write``) names that code as a ``"module:function"`` string, which
:func:`import_function` imports only when the command runs, so that its ``--help`` stays cheap.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["import_function", "lazy_names"]


def lazy_names(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``name`` imported from module ``homes[name]``, then kept."""

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(homes[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__


def import_function(func: Callable[..., Any] | str) -> Callable[..., Any]:
    """``func`` itself, or the function that a ``"module:function"`` string names, imported now."""
    if not isinstance(func, str):
        return func
    module, name = func.split(":")
    return getattr(importlib.import_module(module), name)
