"""Read every pickled file pfm is given (checkpoints, state dicts, tables, DeepSpeed/DCP folders) without running code.

``torch.load(weights_only=False)`` lets a file call any importable function while it is unpickled (an object's
``__reduce__`` may name ``os.system``); a "run's own" checkpoint is only a path, so no path is trusted. This
module unpickles with ONE allowlist (:func:`allowed_globals`, names as pickled): tensors, storages, dtypes,
plain containers and numpy arrays are rebuilt; the few other types pfm-train's checkpoints and DeepSpeed's files
name are accepted by name and kept inert; every other global becomes an inert :class:`Placeholder` that records
its name and absorbs arguments and state without calling anything. No module a file names is imported.

Two ways to use it:

- ``safe_load(path)`` (foreign files, e.g. official Lightning checkpoints with the authors' classes in
  ``hyper_parameters``): refused globals stay placeholders and only the tensors are used afterwards;
- ``safe_load(path, strict=True)`` / :func:`check_checkpoint` (pfm's own formats: resume, export, tables,
  DeepSpeed and distributed-checkpoint folders): any global outside the allowlist fails, naming the file and
  the global, before anything else (Lightning, DeepSpeed, torch.distributed.checkpoint) unpickles the file.

Public names: :func:`allowed_globals`, :func:`safe_load`, :func:`check_checkpoint`, :func:`load_state_dict`,
:func:`state_dict_from`, :class:`Placeholder`, :func:`refused_globals`, :func:`torch_safe_globals`.
"""

from __future__ import annotations

import _codecs
import _compat_pickle
import collections
import importlib
import io
import json
import pickle
import struct
import types
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch._utils as tu
from safetensors.torch import load_file

__all__ = [
    "Placeholder",
    "allowed_globals",
    "check_checkpoint",
    "check_safetensors",
    "load_state_dict",
    "read_safetensors",
    "refused_globals",
    "safe_load",
    "state_dict_from",
    "torch_safe_globals",
]

# Globals accepted by name but never rebuilt here (kept inert): the classes pfm-train's checkpoints and the
# files DeepSpeed and torch.distributed.checkpoint write name besides tensors and containers (found by scanning
# a checkpoint of every strategy: single, ddp, fsdp with and without distributed checkpoints, ZeRO 1-3). A
# vetted file is then unpickled by the library that wrote it (Lightning with weights_only=True, DeepSpeed,
# torch.distributed.checkpoint), which rebuilds them. Judged by exact name: nothing a file names is imported.
_ACCEPTED_BY_NAME = frozenset(
    {
        "deepspeed.runtime.zero.config.ZeroStageEnum",
        "deepspeed.runtime.fp16.loss_scaler.LossScaler",
        "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
        "deepspeed.utils.tensor_fragment.fragment_address",
        "torch.distributed.checkpoint.metadata.Metadata",
        "torch.distributed.checkpoint.metadata.MetadataIndex",
        "torch.distributed.checkpoint.metadata.TensorStorageMetadata",
        "torch.distributed.checkpoint.metadata.BytesStorageMetadata",
        "torch.distributed.checkpoint.metadata.ChunkStorageMetadata",
        "torch.distributed.checkpoint.metadata.TensorProperties",
        "torch.distributed.checkpoint.metadata.StorageMeta",
        "torch.distributed.checkpoint.filesystem._StorageInfo",
        "torch.distributed.checkpoint.metadata._MEM_FORMAT_ENCODING",  # an Enum
        "torch.serialization._get_layout",  # a lookup in torch's own layouts (KeyError for anything else)
        "pathlib.PosixPath",  # storage_meta.checkpoint_id; a path object touches no file
    }
)


class Placeholder:
    """An inert stand-in for a pickled global that was not allowed; it records the name, calls nothing.

    Instances take any constructor arguments, pickled state, items and list elements, and keep them in
    ``args``, ``state``, ``items`` and ``elements`` for inspection.
    """

    global_name: str = "?"
    refused: bool = True  # False for names on the allowlist that are kept inert (see ``_ACCEPTED_BY_NAME``)

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
        return _placeholder_class(self.global_name + "()", self.refused)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<refused global {self.global_name}>"


_PLACEHOLDER_CLASSES: dict[str, type[Placeholder]] = {}


def _placeholder_class(name: str, refused: bool = True) -> type[Placeholder]:
    key = f"{name}:{refused}"
    if key not in _PLACEHOLDER_CLASSES:
        _PLACEHOLDER_CLASSES[key] = type(
            name.rpartition(".")[2] or name,
            (Placeholder,),
            {"global_name": name, "refused": refused, "__module__": __name__},
        )
    return _PLACEHOLDER_CLASSES[key]


def _display_name(module: str, name: str) -> str:
    # os.system pickles under the platform module (posix.system); show the name people write
    module = {"posix": "os", "nt": "os"}.get(module, module)
    return f"{module}.{name}"


def _allowed() -> dict[tuple[str, str], Any]:
    """Globals that rebuild tensors or plain containers and cannot run code of the checkpoint's choosing."""
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


_REBUILT: dict[tuple[str, str], Any] | None = None


def _rebuilt() -> dict[tuple[str, str], Any]:
    global _REBUILT
    if _REBUILT is None:
        _REBUILT = _allowed()
    return _REBUILT


def allowed_globals() -> frozenset[str]:
    """The one allowlist: every ``module.name`` a file may name (rebuilt here, or accepted inert by name)."""
    return frozenset(f"{m}.{n}" for m, n in _rebuilt()) | _ACCEPTED_BY_NAME


class SafeUnpickler(pickle.Unpickler):
    """An Unpickler whose ``find_class`` returns allowlisted tensor/container globals, else placeholders.

    Names on the allowlist that are not rebuilt here (:data:`_ACCEPTED_BY_NAME`) become inert placeholders too,
    but are not counted as refused; every refused name is appended to ``refused``.
    """

    refused: list[str] | None = None

    def find_class(self, module: str, name: str) -> Any:
        """The allowed object for ``module.name``, or an inert placeholder class recording the name."""
        # torch.save writes protocol 2, which names Python 2 modules (__builtin__, copy_reg); map them as
        # pickle's own find_class would, so that the allowlist and the error messages see today's names
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        found = _rebuilt().get((module, name))
        if found is not None:
            return found
        accepted = f"{module}.{name}" in _ACCEPTED_BY_NAME
        if not accepted and self.refused is not None:
            self.refused.append(_display_name(module, name))
        return _placeholder_class(_display_name(module, name), refused=not accepted)


def _pickle_module(refused: list[str]) -> types.SimpleNamespace:
    # torch.load takes a module-like object: it subclasses ``.Unpickler`` and calls ``.load`` for legacy files
    unpickler = type("RecordingUnpickler", (SafeUnpickler,), {"refused": refused})
    return types.SimpleNamespace(
        __name__="pfm_safe_pickle", Unpickler=unpickler, load=lambda file, **kw: unpickler(file, **kw).load()
    )


def _located(obj: Any, limit: int = 100_000) -> str:
    """`` at [key][key]...`` of the first refused placeholder in ``obj`` (empty if none is reachable)."""
    stack: list[tuple[Any, str]] = [(obj, "")]
    for _ in range(limit):
        if not stack:
            break
        item, where = stack.pop()
        if isinstance(item, Placeholder) and item.refused:
            return f" at {where}" if where else ""
        if isinstance(item, Mapping):
            stack.extend((v, f"{where}[{k!r}]") for k, v in reversed(list(item.items())))
        elif isinstance(item, (list, tuple)):
            stack.extend((v, f"{where}[{i}]") for i, v in reversed(list(enumerate(item))))
    return ""


def _refuse(path: Path, refused: list[str], obj: Any = None) -> None:
    if refused:
        names = sorted(set(refused))
        raise ValueError(
            f"{path} names {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}{_located(obj)}, a global "
            "outside pfm's unpickling allowlist (refused: none of its code ran, and the file is not unpickled "
            "further). Load only files written by pfm-train, `pfm export` or `pfm embed`; for someone else's "
            "weights, ask for a safetensors file."
        )


def safe_load(path: str | Path, map_location: Any = "cpu", strict: bool = False) -> Any:
    """Unpickle a torch file without running its code; unknown globals become :class:`Placeholder`.

    ``strict=True``: a global outside the allowlist raises ValueError naming the file and the global.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist; give the path of a .ckpt/.pth/.pt file.")
    refused: list[str] = []
    try:
        # zip checkpoints are memory-mapped: a multi-GB official file is not read into memory twice
        obj = torch.load(
            path,
            map_location=map_location,
            pickle_module=_pickle_module(refused),
            weights_only=False,
            mmap=zipfile.is_zipfile(path),
        )
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        if strict:
            _refuse(path, refused)
        raise ValueError(
            f"{path} could not be read as a torch checkpoint without executing code ({type(err).__name__}: "
            f"{err}); check that the file is complete (compare its sha256) and is a torch.save file."
        ) from err
    if strict:
        _refuse(path, refused, obj)
    return obj


def _check_raw_pickle(path: Path) -> Any:
    """Unpickle a plain pickle file (a distributed checkpoint's ``.metadata``) under the allowlist, strictly."""
    refused: list[str] = []
    try:
        with open(path, "rb") as f:
            unpickler = _pickle_module(refused).Unpickler(f)
            obj = unpickler.load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        _refuse(path, refused)
        raise ValueError(
            f"{path} is not a complete pickle file ({type(err).__name__}: {err}); the distributed checkpoint "
            "is truncated or damaged: pick an older one."
        ) from err
    _refuse(path, refused, obj)
    return obj


def check_checkpoint(path: str | Path) -> None:
    """Raise ValueError naming the file and global if any pickled file of checkpoint ``path`` names a global
    outside the allowlist; run before Lightning, DeepSpeed or torch.distributed.checkpoint unpickle it.

    ``path`` is a checkpoint file, a DeepSpeed folder (every ``*.pt``), or a distributed-checkpoint folder
    (``.metadata``, ``meta.pt`` and every pickled item inside the ``*.distcp`` files).
    """
    path = Path(path)
    if path.is_file():
        safe_load(path, strict=True)
        return
    for file in sorted(path.rglob("*.pt")) + sorted(path.rglob("*.ckpt")):
        safe_load(file, strict=True)
    for metadata in sorted(path.rglob(".metadata")):
        _check_distcp_items(metadata.parent, _check_raw_pickle(metadata))


def _check_distcp_items(folder: Path, metadata: Any) -> None:
    """Every item torch.distributed.checkpoint will read from the ``*.distcp`` files (a torch.save archive
    each, at the offsets its vetted ``.metadata`` gives), strictly: DCP unpickles byte items with
    ``weights_only=False``."""
    state = metadata.state if isinstance(metadata, Placeholder) else None
    storage = state.get("storage_data") if isinstance(state, Mapping) else None
    if not isinstance(storage, Mapping):
        raise ValueError(
            f"{folder / '.metadata'} is no distributed-checkpoint metadata (no storage_data); the folder is "
            "damaged or not written by pfm-train: pick another checkpoint."
        )
    for info in storage.values():
        where = info.state if isinstance(info, Placeholder) else None
        if not isinstance(where, Mapping) or not {"relative_path", "offset", "length"} <= set(where):
            raise ValueError(f"{folder / '.metadata'}: a storage entry is {info!r}, not a file offset.")
        file = folder / str(where["relative_path"])
        if file.parent != folder or not file.is_file():
            raise ValueError(f"{folder / '.metadata'} points at {file}, which is not a file of this folder.")
        with open(file, "rb") as f:
            f.seek(int(where["offset"]))
            data = f.read(int(where["length"]))
        refused: list[str] = []
        try:
            torch.load(
                io.BytesIO(data),
                map_location="cpu",
                pickle_module=_pickle_module(refused),
                weights_only=False,
            )
        except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
            _refuse(file, refused)
            raise ValueError(
                f"{file}: the item at offset {where['offset']} could not be read ({type(err).__name__}: {err}); "
                "the distributed checkpoint is truncated or damaged: pick an older one."
            ) from err
        _refuse(file, refused)


def torch_safe_globals() -> list[Any]:
    """The allowlist's rebuilt objects, for ``torch.serialization.safe_globals`` around a library's own
    ``torch.load(weights_only=True)`` (Lightning's resume), so that one allowlist serves that load too."""
    return [(obj, f"{module}.{name}") for (module, name), obj in _rebuilt().items() if callable(obj)]


def refused_globals(obj: Any, limit: int = 10_000) -> list[str]:
    """Names of the placeholders (refused globals) found in ``obj``, walking containers, sorted."""
    found: set[str] = set()
    stack, seen = [obj], 0
    while stack and seen < limit:
        item, seen = stack.pop(), seen + 1
        if isinstance(item, Placeholder):
            if item.refused:
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


def check_safetensors(path: str | Path) -> None:
    """Raise ValueError naming ``path`` unless it is a whole safetensors file (header and every tensor's bytes).

    The safetensors library's own error for a truncated or foreign file (``SafetensorError: incomplete
    metadata``) names no file; this check reads only the header, so it costs nothing for a large file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; give the path of a .safetensors file.")
    size = path.stat().st_size
    fix = (
        "The file is truncated (an interrupted download or copy?) or not a safetensors file: download or "
        "export it again (`pfm download` verifies sha256) and compare its size."
    )
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path} has {size} bytes, fewer than a safetensors header needs (8). {fix}")
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            raise ValueError(
                f"{path}: its safetensors header claims {length} bytes but the file holds {size - 8} after the "
                f"length field. {fix}"
            )
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: its safetensors header is not JSON ({err}). {fix}") from err
    if not isinstance(header, dict):
        raise ValueError(
            f"{path}: its safetensors header is {type(header).__name__}, not a JSON object. {fix}"
        )
    ends = [
        int(v["data_offsets"][1])
        for k, v in header.items()
        if k != "__metadata__" and isinstance(v, dict) and len(v.get("data_offsets", ())) == 2
    ]
    need = 8 + length + max(ends, default=0)
    if need > size:
        raise ValueError(f"{path} has {size} bytes; its header describes {need}. {fix}")


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file(path)``, after :func:`check_safetensors` (errors name the file)."""
    check_safetensors(path)
    return load_file(str(path))
