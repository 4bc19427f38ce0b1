"""Pretrained weights: resolve a source (a registry name or a path) to local files (:func:`resolve_source`), and
load its weights into a built model (:func:`load_weights`, used by ``init_from=`` and ``pfm.build``).

Sources: a registry name (``tadpole-s``; downloaded and verified, see :mod:`pfm.checkpoints.download`), a pfm
checkpoint (``.ckpt`` file or DeepSpeed folder; the task's ``model.`` weights are taken), an export folder
(``model.safetensors``), a folder with the official ``tadpole_<size>_{encoder,decoder}.safetensors``, or one
official ``.pth``/``.ckpt``/``.safetensors`` file, which goes to the model's ``load_official_state_dict``
when its names are not the model's own. Nothing here builds a model (``pfm.build.build_network`` does) or runs
pickled code from a file (:mod:`pfm.unpickle`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from pfm.checkpoints.download import cache_root, fetch
from pfm.checkpoints.export import network_weights, training_state_dict
from pfm.checkpoints.registry import NAME_PATTERN, get_entry, load_registry
from pfm.models.strict import load_strict
from pfm.unpickle import read_safetensors, safe_load, state_dict_from

__all__ = [
    "entry_folder",
    "foreign_state",
    "is_registry_name",
    "load_weights",
    "resolve_source",
]

_TORCH_SUFFIXES = (".ckpt", ".pth", ".pt", ".bin")


def _load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: Path) -> None:
    load_strict(
        module,
        state,
        lambda detail: (
            f"The weights in {source} do not fit {type(module).__name__}: {detail}. Pick the model config "
            "that matches the checkpoint (a shape mismatch is another size, e.g. model=tadpole_b for "
            "tadpole_b_*.safetensors)."
        ),
    )


def entry_folder(name: str, paths: list[Path], revision: str) -> Path:
    """A cache folder holding (symlinks to) exactly the verified files of one registry entry."""
    folder = cache_root() / "entries" / name / revision
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        link = folder / path.name
        if link.is_symlink() and Path(os.readlink(link)) == path.resolve():
            continue
        tmp = folder / f".{path.name}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(path.resolve())
        os.replace(tmp, link)  # atomic: a concurrent rank sees the old link or the new one
    return folder


def is_registry_name(source: str | Path) -> bool:
    """Whether ``source`` is not an existing path but the name of a registry entry."""
    text = str(source)
    if Path(text).expanduser().exists() or not NAME_PATTERN.match(text):
        return False
    return text in load_registry()


def resolve_source(source: str | Path, revision: str | None = None) -> Path:
    """A local path for ``source``: itself if it exists, else the registry entry of that name, downloaded.

    Single-file entries give the file; others a folder holding exactly the entry's files.
    """
    path = Path(source).expanduser()
    if path.exists():
        return path
    text = str(source)
    if not NAME_PATTERN.match(text) or "/" in text:
        raise FileNotFoundError(
            f"init_from={text!r} does not exist; give a checkpoint file or folder, or a registry name "
            "(see `pfm list`)."
        )
    entries = load_registry()
    if text not in entries and text.lower().endswith((*_TORCH_SUFFIXES, ".safetensors")):
        raise FileNotFoundError(f"init_from={text!r} does not exist; give a checkpoint file or folder.")
    try:
        entry = get_entry(text, entries)
    except KeyError as err:
        raise FileNotFoundError(
            f"init_from={text!r} is neither an existing file or folder nor a registry name: {err.args[0]}"
        ) from err
    paths = fetch(entry, revision=revision)
    if len(paths) == 1:
        return paths[0]
    return entry_folder(entry.name, paths, revision or entry.revision)


def _torch_state(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """``(state dict, is_pfm_checkpoint)`` of a torch file, read without running pickled code."""
    obj = safe_load(path)
    if isinstance(obj, Mapping) and "pfm" in obj and "state_dict" in obj:
        return network_weights(state_dict_from(obj, path, "state_dict"), path), True
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            return state_dict_from(obj, path, key), False
    return state_dict_from(obj, path, "state_dict"), False


def _load_file(model: nn.Module, path: Path) -> None:
    if path.suffix == ".safetensors":
        state, own = read_safetensors(path), False
    elif path.suffix in _TORCH_SUFFIXES:
        state, own = _torch_state(path)
    else:
        raise ValueError(
            f"{path} is neither a torch checkpoint ({', '.join(_TORCH_SUFFIXES)}) nor .safetensors; give the "
            "weights file itself."
        )
    official = getattr(model, "load_official_state_dict", None)
    if not own and callable(official) and set(state) != set(model.state_dict()):
        official(state)  # the model's converter for the authors' names and layouts
        return
    _load_strict(model, state, path)


def load_weights(model: nn.Module, source: str | Path, revision: str | None = None) -> nn.Module:
    """Load weights from ``source`` (a path or a registry name) into ``model`` (strictly) and return it.

    ``source`` may be a registry name, a pfm training checkpoint (``.ckpt`` file or DeepSpeed folder), an
    export folder holding ``model.safetensors``, a folder with the official
    ``tadpole_<size>_encoder.safetensors`` and ``tadpole_<size>_decoder.safetensors``, or one official
    weights file (``.pth``/``.ckpt``/``.safetensors``: given to ``model.load_official_state_dict`` if the
    model has one and the names are not its own).
    """
    path = resolve_source(source, revision)
    if path.is_file():
        _load_file(model, path)
        return model
    if (path / "model.safetensors").is_file():
        _load_strict(model, read_safetensors(path / "model.safetensors"), path)
        return model
    encoders = sorted(path.glob("*_encoder.safetensors"))
    if encoders:
        if len(encoders) > 1:
            raise ValueError(
                f"{path} holds several encoders ({[p.name for p in encoders]}); pass a folder with one "
                "encoder/decoder pair, or a registry name."
            )
        decoder = encoders[0].with_name(encoders[0].name.replace("_encoder.", "_decoder."))
        if not decoder.is_file() or not hasattr(model, "encoder") or not hasattr(model, "decoder"):
            raise ValueError(
                f"{path} holds {encoders[0].name} but the model has no encoder/decoder pair or {decoder.name} "
                "is missing; download both files of the published checkpoint."
            )
        _load_strict(model.encoder, read_safetensors(encoders[0]), encoders[0])
        _load_strict(model.decoder, read_safetensors(decoder), decoder)
        return model
    weights = [p for p in path.iterdir() if p.suffix in (*_TORCH_SUFFIXES, ".safetensors")]
    if len(weights) == 1 and not (path / "checkpoint").is_dir():
        _load_file(model, weights[0])
        return model
    _load_strict(model, network_weights(training_state_dict(path), path), path)
    return model


def foreign_state(path: str | Path) -> dict[str, torch.Tensor] | None:
    """The state dict of a torch weights file that is not a pfm checkpoint (the authors' names), else None.

    ``pfm.build.build_network`` builds a model class with ``from_official`` from it (widths read off the
    shapes); a pfm checkpoint, a folder or a ``.safetensors`` file gives None.
    """
    path = Path(path)
    if not path.is_file() or path.suffix not in _TORCH_SUFFIXES:
        return None
    state, own = _torch_state(path)
    return None if own else state
