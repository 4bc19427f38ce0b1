"""Pretrained weights: build a model from a registry name or a path (:func:`load_pretrained`), or load weights
into a built model before fine-tuning (:func:`load_weights`, used by ``init_from=``).

Sources: a registry name (``tadpole-s``; downloaded and verified, see :mod:`pfm.checkpoints.download`), a pfm
checkpoint (``.ckpt`` file or DeepSpeed folder; the task's ``model.`` weights are taken), an export folder
(``model.safetensors``), a folder with the official ``tadpole_<size>_{encoder,decoder}.safetensors``, or one
official ``.pth``/``.ckpt``/``.safetensors`` file, which goes to the model's ``load_official_state_dict``
when its names are not the model's own. Nothing here runs pickled code from a file (:mod:`pfm.checkpoints.safe`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "entry_folder",
    "is_registry_name",
    "load_pretrained",
    "load_weights",
    "model_config",
    "resolve_source",
]

_TORCH_SUFFIXES = (".ckpt", ".pth", ".pt", ".bin")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: Path) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        detail = "; ".join(
            part
            for part in (
                f"missing {missing[:5]}" if missing else "",
                f"unexpected {unexpected[:5]}" if unexpected else "",
                "shape mismatch "
                + ", ".join(f"{k}: {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong[:5])
                if wrong
                else "",
            )
            if part
        )
        raise ValueError(
            f"The weights in {source} do not fit {type(module).__name__}: {detail}. Pick the model config "
            "that matches the checkpoint (e.g. model=tadpole_b for tadpole_b_*.safetensors)."
        )
    module.load_state_dict(dict(state))


def entry_folder(name: str, paths: list[Path], revision: str) -> Path:
    """A cache folder holding (symlinks to) exactly the verified files of one registry entry."""
    import os

    from pfm.checkpoints.download import cache_root

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
    if Path(text).expanduser().exists() or not _NAME.match(text):
        return False
    from pfm.checkpoints.registry import load_registry

    return text in load_registry()


def resolve_source(source: str | Path, revision: str | None = None) -> Path:
    """A local path for ``source``: itself if it exists, else the registry entry of that name, downloaded.

    Single-file entries give the file; others a folder holding exactly the entry's files.
    """
    path = Path(source).expanduser()
    if path.exists():
        return path
    text = str(source)
    if not _NAME.match(text) or "/" in text:
        raise FileNotFoundError(
            f"init_from={text!r} does not exist; give a checkpoint file or folder, or a registry name "
            "(see `pfm list`)."
        )
    from pfm.checkpoints.download import fetch
    from pfm.checkpoints.registry import get_entry, load_registry

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
    from pfm.checkpoints.safe import safe_load, state_dict_from

    obj = safe_load(path)
    if isinstance(obj, Mapping) and "pfm" in obj and "state_dict" in obj:
        state = state_dict_from(obj, path, "state_dict")
        prefix = "model."
        network = {
            k.removeprefix("_forward_module.").removeprefix("module.").removeprefix(prefix): v
            for k, v in state.items()
            if k.removeprefix("_forward_module.").removeprefix("module.").startswith(prefix)
        }
        if not network:
            raise ValueError(f"{path} holds no 'model.*' weights; expected a pfm training checkpoint.")
        return network, True
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            return state_dict_from(obj, path, key), False
    return state_dict_from(obj, path, "state_dict"), False


def _load_file(model: nn.Module, path: Path) -> None:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state, own = load_file(path), False
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
    from safetensors.torch import load_file

    path = resolve_source(source, revision)
    if path.is_file():
        _load_file(model, path)
        return model
    if (path / "model.safetensors").is_file():
        _load_strict(model, load_file(path / "model.safetensors"), path)
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
        _load_strict(model.encoder, load_file(encoders[0]), encoders[0])
        _load_strict(model.decoder, load_file(decoder), decoder)
        return model
    weights = [p for p in path.iterdir() if p.suffix in (*_TORCH_SUFFIXES, ".safetensors")]
    if len(weights) == 1 and not (path / "checkpoint").is_dir():
        _load_file(model, weights[0])
        return model
    from pfm.checkpoints.export import training_state_dict

    state = training_state_dict(path)
    prefix = "model."
    network = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    if not network:
        raise ValueError(f"{path} holds no 'model.*' weights; expected a pfm training checkpoint.")
    _load_strict(model, network, path)
    return model


def _build(model_cfg: Any, spec: Mapping[str, Any], head_cfg: Any = None) -> nn.Module:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from pfm.build import accepted, build_model, head_model_spec

    head_cfg = OmegaConf.create(dict(head_cfg)) if head_cfg else None
    # built as in training: a head's model_spec (e.g. GPhyT's pretrained field vocabulary) comes first
    model = build_model(model_cfg, head_model_spec(spec, head_cfg))
    if head_cfg and head_cfg.get("_target_"):
        head = instantiate(head_cfg, _partial_=True)
        model = head(model, **accepted(head.func, spec))
    return model


def model_config(choice: str) -> Any:
    """The ``conf/model/<choice>.yaml`` config (read as a file: no Hydra composition below the entry points)."""
    from omegaconf import OmegaConf

    from pfm.build import CONF_DIR

    path = CONF_DIR / "model" / f"{choice}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
        raise ValueError(
            f"Model config {choice!r} is not in {CONF_DIR / 'model'}; known: {', '.join(known)}."
        )
    cfg = OmegaConf.load(path)
    if "defaults" in cfg:
        cfg.pop("defaults")
    return cfg


def load_pretrained(source: str | Path, revision: str | None = None) -> nn.Module:
    """The built model holding the weights of ``source`` (a registry name, export folder or pfm checkpoint), in eval mode.

    Registry entries are built from their ``conf/model`` choice with the data shapes in their ``spec`` and
    loaded through :func:`load_weights` (the official converters included); files are verified first.
    """
    from omegaconf import OmegaConf

    path = Path(source).expanduser()
    if path.exists():
        if path.is_dir() and (path / "config.yaml").is_file() and (path / "model.safetensors").is_file():
            from pfm.checkpoints.export import load_exported

            return load_exported(path, verify=(path / "SHA256SUMS").is_file())
        from pfm.checkpoints.files import read_checkpoint

        meta = read_checkpoint(path, safe=True)
        info = meta.get("pfm") if isinstance(meta, Mapping) else None
        if not isinstance(info, Mapping) or not isinstance(info.get("model"), Mapping):
            raise ValueError(
                f"{path} carries no pfm model description, so the model cannot be rebuilt from it; give a "
                "registry name, a `pfm export` folder or a pfm-train checkpoint, or build the model yourself "
                "and call load_weights(model, path)."
            )
        model = _build(
            OmegaConf.create(dict(info["model"])), dict(info.get("data_spec") or {}), info.get("head")
        )
        return load_weights(model, path).eval()
    from pfm.checkpoints.registry import get_entry

    if not _NAME.match(str(source)):
        raise FileNotFoundError(
            f"{str(source)!r} does not exist and is not a registry name; give a registry name (`pfm list`), "
            "a `pfm export` folder or a pfm-train checkpoint."
        )
    entry = get_entry(str(source))
    if entry.status != "supported":
        raise ValueError(
            f"pfm cannot build {entry.name!r} yet (status: {entry.status} in {entry.source}): its model "
            f"config {entry.model!r} or its converter is missing. `pfm download {entry.name}` still fetches "
            "the files."
        )
    local = resolve_source(entry.name, revision)
    if local.is_dir() and (local / "config.yaml").is_file() and (local / "model.safetensors").is_file():
        from pfm.checkpoints.export import load_exported

        return load_exported(local, verify=False)  # the registry's sha256 were checked by the download
    cfg = model_config(entry.model)
    if local.is_file() and local.suffix in _TORCH_SUFFIXES:
        official = _from_official(cfg, dict(entry.spec), local)
        if official is not None:
            return official.eval()
    model = _build(cfg, dict(entry.spec))
    return load_weights(model, local).eval()


def _from_official(model_cfg: Any, spec: Mapping[str, Any], path: Path) -> nn.Module | None:
    """The model built by its class's ``from_official(state_dict, ...)`` when it has one and ``path`` holds
    the authors' names (PLaTITO reads its widths off the shapes; the 3M models' are published nowhere else)."""
    from hydra.utils import get_method
    from omegaconf import OmegaConf

    from pfm.build import accepted

    target = get_method(model_cfg._target_)
    factory = getattr(target, "from_official", None)
    if not callable(factory):
        return None
    state, own = _torch_state(path)
    if own:
        return None
    options = {k: v for k, v in OmegaConf.to_container(model_cfg, resolve=True).items() if k != "_target_"}
    return factory(state, **accepted(factory, {**options, **spec}))
