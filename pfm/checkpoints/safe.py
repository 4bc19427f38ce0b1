"""Load torch zip checkpoints (.ckpt/.pth/.pt) made by someone else without running any pickled code.

``torch.load(weights_only=False)`` lets a checkpoint call any importable function while it is unpickled (an
object's ``__reduce__`` may name ``os.system``). ``torch.load(weights_only=True)`` is safe but refuses the
whole file when it meets one unknown class, and official Lightning checkpoints keep the authors' own classes
in ``hyper_parameters``. This module unpickles with an allowlist instead: tensors, storages, dtypes and plain
containers are rebuilt; every other global becomes an inert :class:`Placeholder` that records its name and
absorbs arguments and state without calling anything. Only the tensors are then used.

Public names: :func:`safe_load`, :func:`load_state_dict`, :func:`state_dict_from`, :class:`Placeholder`,
:func:`refused_globals`.
"""

from __future__ import annotations

import _compat_pickle
import collections
import pickle
import types
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["Placeholder", "load_state_dict", "refused_globals", "safe_load", "state_dict_from"]


class Placeholder:
    """An inert stand-in for a pickled global that was not allowed; it records the name, calls nothing.

    Instances take any constructor arguments, pickled state, items and list elements, and keep them in
    ``args``, ``state``, ``items`` and ``elements`` for inspection.
    """

    global_name: str = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        """Create an instance; nothing of the original class runs."""
        obj = super().__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.items, obj.elements = args, kwargs, None, {}, []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Accept and ignore constructor arguments (already recorded by ``__new__``)."""

    def __setstate__(self, state: Any) -> None:
        """Record the pickled state instead of applying it."""
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        """Record items of a pickled dict subclass (e.g. Lightning's AttributeDict)."""
        self.items[key] = value

    def append(self, value: Any) -> None:
        """Record elements of a pickled list subclass."""
        self.elements.append(value)

    def extend(self, values: Any) -> None:
        """Record elements of a pickled list subclass."""
        self.elements.extend(values)

    def __call__(self, *args: Any, **kwargs: Any) -> Placeholder:
        """A placeholder called (a REDUCE on it) gives another placeholder; nothing runs."""
        return _placeholder_class(self.global_name + "()")(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<refused global {self.global_name}>"


_PLACEHOLDER_CLASSES: dict[str, type[Placeholder]] = {}


def _placeholder_class(name: str) -> type[Placeholder]:
    if name not in _PLACEHOLDER_CLASSES:
        _PLACEHOLDER_CLASSES[name] = type(
            name.rpartition(".")[2] or name, (Placeholder,), {"global_name": name, "__module__": __name__}
        )
    return _PLACEHOLDER_CLASSES[name]


def _display_name(module: str, name: str) -> str:
    # os.system pickles under the platform module (posix.system); show the name people write
    module = {"posix": "os", "nt": "os"}.get(module, module)
    return f"{module}.{name}"


def _allowed() -> dict[tuple[str, str], Any]:
    """Globals that rebuild tensors or plain containers and cannot run code of the checkpoint's choosing."""
    import torch._utils as tu

    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("collections", "Counter"): collections.Counter,
        ("collections", "defaultdict"): collections.defaultdict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "complex"): complex,
        ("builtins", "slice"): slice,
        ("builtins", "bytearray"): bytearray,
        ("builtins", "range"): range,
        ("torch", "Size"): torch.Size,
        ("torch.storage", "UntypedStorage"): torch.UntypedStorage,
        ("torch.storage", "TypedStorage"): torch.TypedStorage,
        ("torch", "device"): torch.device,
        ("torch", "Tensor"): torch.Tensor,
        ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): torch._tensor._rebuild_from_type_v2,
    }
    import _codecs

    allowed[("_codecs", "encode")] = _codecs.encode  # protocol-2 pickles store bytes through it
    for name in (
        "_rebuild_tensor",
        "_rebuild_tensor_v2",
        "_rebuild_tensor_v3",
        "_rebuild_parameter",
        "_rebuild_parameter_with_state",
        "_rebuild_device_tensor_from_cpu_tensor",
        "_rebuild_device_tensor_from_numpy",
        "_rebuild_meta_tensor_no_storage",
        "_rebuild_qtensor",
        "_rebuild_sparse_tensor",
        "_rebuild_nested_tensor",
    ):
        if hasattr(tu, name):
            allowed[("torch._utils", name)] = getattr(tu, name)
    for name in dir(torch):
        value = getattr(torch, name, None)
        # dtypes, and storage classes (torch.load maps typed storages itself; UntypedStorage reaches us)
        if isinstance(value, torch.dtype) or (name.endswith("Storage") and isinstance(value, type)):
            allowed[("torch", name)] = value
    try:  # numpy arrays and scalars (e.g. in callback state): rebuilt from raw bytes, no code runs
        import importlib

        import numpy as np

        # numpy 2 moved numpy.core to numpy._core (the old name warns); files name either
        multiarray = importlib.import_module(
            "numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray"
        )
        for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            allowed[(module, "_reconstruct")] = multiarray._reconstruct
            allowed[(module, "scalar")] = multiarray.scalar
        allowed[("numpy", "ndarray")] = np.ndarray
        allowed[("numpy", "dtype")] = np.dtype
        for name in ("float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "bool_"):
            allowed[("numpy", name)] = getattr(np, name)
            allowed[("numpy.dtypes", type(np.dtype(name)).__name__)] = type(np.dtype(name))
    except ImportError:
        pass
    return allowed


_ALLOWED: dict[tuple[str, str], Any] | None = None


class SafeUnpickler(pickle.Unpickler):
    """An Unpickler whose ``find_class`` returns allowlisted tensor/container globals, else placeholders."""

    def find_class(self, module: str, name: str) -> Any:
        """The allowed object for ``module.name``, or an inert placeholder class recording the name."""
        global _ALLOWED
        if _ALLOWED is None:
            _ALLOWED = _allowed()
        # torch.save writes protocol 2, which names Python 2 modules (__builtin__, copy_reg); map them as
        # pickle's own find_class would, so that the allowlist and the error messages see today's names
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        found = _ALLOWED.get((module, name))
        if found is not None:
            return found
        return _placeholder_class(_display_name(module, name))


def _load(file: Any, **kwargs: Any) -> Any:
    return SafeUnpickler(file, **kwargs).load()


# torch.load takes a module-like object: it subclasses ``.Unpickler`` and calls ``.load`` for legacy files
_PICKLE_MODULE = types.SimpleNamespace(__name__="pfm_safe_pickle", Unpickler=SafeUnpickler, load=_load)


def safe_load(path: str | Path, map_location: Any = "cpu") -> Any:
    """Unpickle a torch checkpoint without running its code; unknown globals become :class:`Placeholder`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist; give the path of a .ckpt/.pth/.pt file.")
    try:
        # zip checkpoints are memory-mapped: a multi-GB official file is not read into memory twice
        return torch.load(
            path,
            map_location=map_location,
            pickle_module=_PICKLE_MODULE,
            weights_only=False,
            mmap=zipfile.is_zipfile(path),
        )
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise ValueError(
            f"{path} could not be read as a torch checkpoint without executing code ({type(err).__name__}: "
            f"{err}); check that the file is complete (compare its sha256) and is a torch.save file."
        ) from err


def refused_globals(obj: Any, limit: int = 10_000) -> list[str]:
    """Names of the placeholders (refused globals) found in ``obj``, walking containers, sorted."""
    found: set[str] = set()
    stack, seen = [obj], 0
    while stack and seen < limit:
        item, seen = stack.pop(), seen + 1
        if isinstance(item, Placeholder):
            found.add(item.global_name)
            stack.extend([*item.args, item.state, *item.items.values(), *item.elements])
        elif isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
    return sorted(found)


def load_state_dict(path: str | Path, key: str = "state_dict") -> dict[str, torch.Tensor]:
    """The tensors of ``checkpoint[key]``, or of the top level when it is a flat name->tensor dict.

    Nothing is stripped from the names. Raises ValueError naming the file and the refused global when the
    tensors cannot be had without executing pickled code (e.g. the state dict itself is an ``os.system`` call).
    """
    return state_dict_from(safe_load(path), path, key)


def state_dict_from(obj: Any, path: str | Path, key: str = "state_dict") -> dict[str, torch.Tensor]:
    """:func:`load_state_dict` for an already loaded checkpoint ``obj`` (``path`` names it in errors)."""
    path = Path(path)
    if isinstance(obj, Mapping) and key in obj:
        state, where = obj[key], f"{path}[{key!r}]"
    else:
        state, where = obj, str(path)
    if isinstance(obj, Mapping) and key not in obj and not _is_tensor_dict(obj):
        refused = refused_globals(obj)
        raise ValueError(
            f"{path} has no {key!r} entry and its top level is not a name->tensor dict (keys: "
            f"{sorted(map(str, obj))[:8]})"
            + (f"; it refers to globals that were not executed: {', '.join(refused[:5])}" if refused else "")
            + f". Pass key=<one of those keys> or a checkpoint that holds {key!r}."
        )
    if not isinstance(state, Mapping):
        refused = refused_globals(state)
        raise ValueError(
            f"{where} is {state!r}, not a dict of tensors: getting it would need executing "
            f"{', '.join(refused) or type(state).__name__}, which was refused. Only load checkpoints from "
            "sources you trust, or ask the author for a safetensors file."
        )
    bad = {str(k): v for k, v in state.items() if not torch.is_tensor(v)}
    if bad:
        name, value = next(iter(bad.items()))
        refused = refused_globals(list(bad.values()))
        raise ValueError(
            f"{where} holds non-tensor values ({len(bad)} of {len(state)}, e.g. {name!r} = {value!r})"
            + (
                f"; building them would need executing {', '.join(refused[:5])}, which was refused"
                if refused
                else ""
            )
            + ". Only tensors can be loaded from a foreign checkpoint; ask the author for a safetensors file."
        )
    return {str(k): v for k, v in state.items()}


def _is_tensor_dict(obj: Mapping[Any, Any]) -> bool:
    return bool(obj) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())
