"""Check a composed run config before anything is built: keys, types and ranges of every ``_target_`` node.

Each node with a ``_target_`` is compared with its target's signature: a key the constructor does not take
(typically one an experiment sets for another ``data=``/``model=`` choice), a value whose type does not match
the constructor's type hint, a value outside the range its name implies (counts, rates, fractions), and a
mandatory ``???`` left unset. ``init_from`` must name a checkpoint that exists and is a torch archive. All
problems are reported together in one ``ValueError``, each naming the key, the value, what is expected and the
fix. Nothing here knows a particular key: the rules come from signatures and from the naming conventions of
the code base (counts start with ``num_``), except the names renamed since configs were written with them
(``MOVED_MODULES``, ``MOVED_KEYS``), which fail naming the new name; the entry points check command-line
overrides of a moved key before Hydra composes (:func:`moved_override_problems`). See ``docs/config_checks.md``.

The check judges a config as a run sees it: on a copy with Lightning's ``trainer.precision``/``accelerator``/
``devices``/``num_nodes``/``strategy`` merged into ``strategy`` by
:func:`pfm.distributed.trainer_switches.merge_trainer_switches` (which a run calls first; this module only reads).
"""

from __future__ import annotations

import copy
import difflib
import enum
import inspect
import os
import types
import typing
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_method
from omegaconf import DictConfig, ListConfig, OmegaConf

from pfm.checkpoints.run_description import RENAMED_KEYS
from pfm.distributed.trainer_switches import merge_trainer_switches
from pfm.unpickle import check_safetensors

__all__ = [
    "MOVED_KEYS",
    "RANGES",
    "check_config",
    "config_problems",
    "merge_trainer_devices",
    "moved_override_problems",
]

_HYDRA_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_", "_args_"}
_UNKNOWN = None  # a type the checker cannot judge from a YAML value: accepted
# Modules renamed since configs were written with them: an old ``_target_`` fails naming the new module.
MOVED_MODULES = {
    "pfm.data.molecules": "pfm.data.chains",
    "pfm.distributed.build": "pfm.distributed.catalog",
    "pfm.distributed.loss": "pfm.callbacks.global_loss",
    "datagen.graphs": "datagen.cuda_graphs",
}
# Keys renamed since configs were written with them (old -> new): an old key in a config fails naming the new
# one, while a checkpoint that recorded it still resumes; one table serves both.
MOVED_KEYS = RENAMED_KEYS


@dataclass(frozen=True)
class _Range:
    """Values a parameter may take, judged from its name alone."""

    applies: Callable[[str], bool]
    low: float
    high: float = float("inf")
    low_inclusive: bool = True
    why: str = ""

    def holds(self, value: float) -> bool:
        """Whether ``value`` lies in the range."""
        above = value >= self.low if self.low_inclusive else value > self.low
        return above and value <= self.high

    def describe(self, integer: bool) -> str:
        """The range in words, e.g. 'an integer >= 1'."""
        kind = "an integer" if integer else "a number"
        if self.high < float("inf"):
            return f"{kind} in [{self.low:g}, {self.high:g}]"
        if integer and not self.low_inclusive:
            return f"{kind} >= {int(self.low) + 1}"
        return f"{kind} {'>=' if self.low_inclusive else '>'} {self.low:g}"


# Ranges by parameter name. Positive sizes, steps and rates; non-negative counts (num_workers may be 0);
# fractions in [0, 1]. Checked only for numeric values of parameters of a ``_target_``.
_POSITIVE = {"batch_size", "n", "crop", "crop_size", "lr", "dt", "length", "max_steps", "lag", "window"}
RANGES: list[_Range] = [
    _Range(lambda k: k in _POSITIVE, 0.0, low_inclusive=False, why="a size, step or rate"),
    _Range(
        lambda k: k in {"num_trajectories", "num_pools", "steps_per_batch"},
        0.0,
        low_inclusive=False,
        why="a count of things the run needs at least one of",
    ),
    _Range(lambda k: k.startswith("num_"), 0.0, why="a count"),
    _Range(lambda k: k.endswith("_fraction") or k in {"dropout", "p"}, 0.0, 1.0, why="a fraction"),
    _Range(lambda k: k in {"weight_decay", "eps", "gradient_clip_val"}, 0.0, why="a non-negative amount"),
]


def _name(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _show(value: Any, limit: int = 60) -> str:
    if isinstance(value, str):
        text = repr(value)
    elif isinstance(value, DictConfig | ListConfig):
        text = str(OmegaConf.to_container(value, resolve=False))
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    if isinstance(hint, type):
        return hint.__name__
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    return str(hint).replace("typing.", "")


def _from_text(cls: type) -> bool:
    """Classes whose constructors take a YAML string (paths, devices, enums) and so accept one."""
    return issubclass(cls, os.PathLike | enum.Enum | torch.device | torch.dtype)


def _matches(value: Any, hint: Any) -> bool | None:
    """Whether a YAML ``value`` fits type ``hint``: True, False, or None when the hint cannot be judged."""
    if hint is inspect.Parameter.empty or hint is Any or isinstance(hint, typing.TypeVar | str):
        return _UNKNOWN
    if isinstance(value, DictConfig) and "_target_" in value:
        return _UNKNOWN  # instantiated into an object first
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        results = [_matches(value, a) for a in typing.get_args(hint)]
        return any(r is not False for r in results)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if value is None:
        return False
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    cls = origin or hint
    if not isinstance(cls, type):
        return _UNKNOWN
    if issubclass(cls, Mapping):
        return isinstance(value, DictConfig | dict)
    if issubclass(cls, Sequence):
        return isinstance(value, ListConfig | list | tuple)
    if isinstance(value, DictConfig | ListConfig):
        return _UNKNOWN
    # a YAML scalar (number, text, bool) is never an instance of another class, except what text names
    return isinstance(value, str) and _from_text(cls)


def _signature(target: Any) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    """Parameters of ``target``'s constructor (or of the function), their type hints, and whether it takes **kwargs."""
    call = target.__init__ if isinstance(target, type) else target
    params = dict(inspect.signature(target).parameters)
    try:
        hints = typing.get_type_hints(call)
    except Exception:  # a hint naming something only imported for type checking: judge nothing by type
        hints = {}
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    params = {k: p for k, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return params, hints, open_ended


def _example(param: inspect.Parameter | None, rng: _Range | None, integer: bool) -> str:
    default = None if param is None else param.default
    numeric = isinstance(default, int | float) and not isinstance(default, bool)
    if numeric and (rng is None or rng.holds(default)):
        return str(default)
    if rng is not None:
        low = rng.low if rng.low_inclusive else (rng.low + 1 if integer else rng.low * 2 or 1e-3)
        return str(int(low) if integer else low)
    return "<value>"


def _node_problems(node: DictConfig, path: str) -> Iterator[str]:
    try:
        target = get_method(node._target_)
    except Exception as err:
        module = str(node._target_).rsplit(".", 1)[0]
        fix = (
            f"{module} is now {MOVED_MODULES[module]}: write {MOVED_MODULES[module]}.{str(node._target_).rsplit('.', 1)[1]}"
            if module in MOVED_MODULES
            else "check the spelling in the config file"
        )
        yield (
            f"{_name(path, '_target_')}={node._target_!r} cannot be imported ({type(err).__name__}: {err}); "
            f"expected a dotted path to a class or function. Fix: {fix}."
        )
        return
    params, hints, open_ended = _signature(target)
    label = f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', target)}"
    unknown: dict[str, Any] = {}
    for key in node:
        if key in _HYDRA_KEYS:
            continue
        full = _name(path, key)
        if OmegaConf.is_missing(node, key):
            yield f"{full} is not set (???); {label} needs it. Fix: add {full}=<value> to the command line."
            continue
        try:
            value = node[key]
        except Exception:  # an interpolation that only resolves at run time (e.g. ${hydra:...})
            continue
        if key not in params:
            if MOVED_KEYS.get(key) in params:
                new_key = _name(path, MOVED_KEYS[key])
                yield (
                    f"{full}={_show(value)}: the key is now {new_key} ({label}'s {MOVED_KEYS[key]}). "
                    f"Fix: write {new_key}={_show(value)} instead."
                )
            elif not open_ended:
                unknown[key] = value
            continue
        hint = hints.get(key, params[key].annotation)
        if _matches(value, hint) is False:
            yield (
                f"{full}={_show(value)}: expected {_type_name(hint)} ({label}'s {key}). "
                f"Fix: e.g. {full}={_example(params[key], None, False)}."
            )
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            rng = next((r for r in RANGES if r.applies(str(key))), None)
            if rng is not None and not rng.holds(value):
                # integer-ness from the parameter, not the value: lr=-1 is a bad float, not a bad count
                default = params[key].default
                integer = hint is int or (
                    hint is inspect.Parameter.empty
                    and isinstance(default, int)
                    and not isinstance(default, bool)
                )
                yield (
                    f"{full}={value}: expected {rng.describe(integer)} ({rng.why}). "
                    f"Fix: e.g. {full}={_example(params[key], rng, integer)}."
                )
    if unknown:
        close = {k: difflib.get_close_matches(str(k), list(params), n=1) for k in unknown}
        named = ", ".join(
            f"{_name(path, k)}={_show(v)}" + (f" (did you mean {close[k][0]}?)" if close[k] else "")
            for k, v in unknown.items()
        )
        drops = " ".join(f"~{_name(path, k)}" for k in unknown)
        yield (
            f"{named}: {label} takes no such argument{'s' if len(unknown) > 1 else ''}; it takes "
            f"{', '.join(params) or 'none'}. Fix: drop {'them' if len(unknown) > 1 else 'it'} with "
            f"`{drops}` on the command line (an experiment may set {'them' if len(unknown) > 1 else 'it'} "
            f"for another {path or 'config'} choice), or rename to one it takes."
        )


def _walk(node: Any, path: str) -> Iterator[tuple[DictConfig, str]]:
    if isinstance(node, DictConfig):
        if "_target_" in node and not OmegaConf.is_missing(node, "_target_"):
            yield node, path
        for key in node:
            if key in _HYDRA_KEYS or OmegaConf.is_missing(node, key):
                continue
            child = node._get_node(key)
            if isinstance(child, DictConfig | ListConfig):
                yield from _walk(child, _name(path, str(key)))
    elif isinstance(node, ListConfig):
        for i, child in enumerate(node._iter_ex(resolve=False)):
            if isinstance(child, DictConfig | ListConfig):
                yield from _walk(child, f"{path}[{i}]")


def _init_from_problems(cfg: DictConfig) -> Iterator[str]:
    """``init_from`` names an existing checkpoint file (a torch zip archive) or folder."""
    source = cfg.get("init_from")
    if not source:
        return
    path = Path(str(source)).expanduser()
    fix = (
        "Fix: init_from=<a step*.ckpt/last.ckpt written by pfm-train, a `pfm export` folder, or a folder "
        "with official *.safetensors weights>."
    )
    if not path.exists():
        yield f"init_from={str(source)!r} does not exist. {fix}"
    elif path.is_file() and path.suffix != ".safetensors" and not zipfile.is_zipfile(path):
        # torch.load would fail deep inside (an mmap or unpickling error) without naming the file
        yield (
            f"init_from={str(source)!r} is not a PyTorch checkpoint (not a zip archive: another kind of "
            f"file, or a truncated download). {fix}"
        )
    else:
        # safetensors' own error for a truncated file ("incomplete metadata") names no file
        files = (
            sorted(path.glob("*.safetensors")) if path.is_dir() else [path] * (path.suffix == ".safetensors")
        )
        for file in files:
            try:
                check_safetensors(file)
            except ValueError as err:
                yield f"init_from={str(source)!r}: {err} {fix}"


def config_problems(cfg: DictConfig, keys: Sequence[str] | None = None) -> list[str]:
    """Every problem :func:`check_config` would report, one sentence each (empty if the config is fine).

    Judged as a run would see it: on a copy with the Lightning trainer switches merged into the strategy.
    """
    cfg = copy.deepcopy(cfg)
    merge_trainer_switches(cfg)
    problems: list[str] = list(_init_from_problems(cfg)) if keys is None or "init_from" in keys else []
    for key in keys if keys is not None else list(cfg):
        if key == "hydra" or key not in cfg or OmegaConf.is_missing(cfg, key):
            continue
        child = cfg._get_node(key)
        if isinstance(child, DictConfig | ListConfig):
            for node, path in _walk(child, str(key)):
                problems.extend(_node_problems(node, path))
    return problems


def moved_override_problems(overrides: Sequence[str]) -> list[str]:
    """One sentence per command-line override of a :data:`MOVED_KEYS` key, naming the new key.

    Checked before Hydra composes: Hydra itself would only say that the old key is not in the config.
    """
    problems = []
    for item in overrides:
        key, eq, value = item.lstrip("+~").partition("=")
        *parents, last = key.split(".")
        if last in MOVED_KEYS:
            new_key = ".".join([*parents, MOVED_KEYS[last]])
            # no "+": the shipped configs that take the new key set it (to null)
            fixed = ("~" if item.startswith("~") else "") + new_key + eq + value
            problems.append(f"{item}: the key is now {new_key}. Fix: write {fixed}.")
    return problems


def check_config(cfg: DictConfig, keys: Sequence[str] | None = None) -> None:
    """Raise one ``ValueError`` listing every bad key, type or range in ``cfg`` (or in its sections ``keys``)."""
    problems = config_problems(cfg, keys)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ValueError(f"The run's config has {len(problems)} problem(s); nothing was built:\n{lines}")


# the name tests and older callers import; the merge itself lives in pfm.distributed.trainer_switches
merge_trainer_devices = merge_trainer_switches
