"""Fine-tuning controls by parameter name: freezing, and optimizer options (learning rate, ...) per group.

Names are those of the task's model after any head is attached (``model.named_parameters()``), e.g.
``autoencoder.encoder.stem.weight`` or ``latent_transformer.blocks.0.attn.qkv.weight`` for Tadpole under
``head=tadpole_dynamics``. Patterns are shell-style (``fnmatch``: ``*`` also matches dots), so
``latent_transformer.*`` selects a whole module and ``*lora_*`` every LoRA factor. A pattern that matches
nothing is an error that names the pattern and the model's top-level modules: a typo must not silently train
with the wrong learning rate or nothing frozen.

Configured in ``finetune:`` (conf/train.yaml) and applied by :func:`pfm.build.build_task`:

    finetune.freeze=['autoencoder.encoder.*']
    finetune.param_groups=[{pattern: 'latent_transformer.*', lr: 1.0e-3}]

Public names: ``freeze_parameters``, ``group_parameters``, ``describe_groups``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

__all__ = ["describe_groups", "freeze_parameters", "group_parameters"]


def _modules_hint(names: Sequence[str]) -> str:
    """The model's top-level module names, as a starting point for a pattern."""
    tops = sorted({n.split(".")[0] for n in names})
    shown = ", ".join(f"{t}.*" for t in tops[:12]) + (" ..." if len(tops) > 12 else "")
    return f"its parameters start with: {shown}"


def _pattern_list(patterns: Any, key: str) -> list[str]:
    if isinstance(patterns, str):
        return [patterns]
    if patterns is None:
        return []
    if not isinstance(patterns, Sequence) or not all(isinstance(p, str) for p in patterns):
        raise ValueError(
            f"{key}={patterns!r}; expected a list of parameter-name patterns. Fix: e.g. {key}=['encoder.*']."
        )
    return list(patterns)


def freeze_parameters(model: nn.Module, patterns: Sequence[str] | str | None) -> list[str]:
    """Set ``requires_grad=False`` on every parameter whose name matches one of ``patterns``; their names.

    Raises ``ValueError`` naming a pattern that matches no parameter.
    """
    names = [n for n, _ in model.named_parameters()]
    frozen: list[str] = []
    for pattern in _pattern_list(patterns, "finetune.freeze"):
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ValueError(
                f"finetune.freeze pattern {pattern!r} matches no parameter of {type(model).__name__}; "
                f"{_modules_hint(names)}. Fix: correct the pattern (shell-style, e.g. 'encoder.*')."
            )
        frozen += [n for n in hits if n not in frozen]
    wanted = set(frozen)
    for name, p in model.named_parameters():
        if name in wanted:
            p.requires_grad_(False)
    return frozen


def group_parameters(
    model: nn.Module, groups: Sequence[Mapping[str, Any]] | None
) -> list[dict[str, Any]] | list[nn.Parameter]:
    """The trainable parameters of ``model`` as optimizer parameter groups.

    ``groups``: ``[{pattern: 'head.*', lr: 1e-3, ...}, ...]``; every key beside ``pattern`` is an optimizer
    option for the parameters whose names match (the first matching group wins). The parameters no group
    matches form a last group with the optimizer's own options. Without groups: the plain list of trainable
    parameters. Raises ``ValueError`` naming a pattern that matches no trainable parameter.
    """
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not groups:
        return [p for _, p in trainable]
    names = [n for n, _ in model.named_parameters()]
    taken: set[str] = set()
    result: list[dict[str, Any]] = []
    for i, group in enumerate(groups):
        if not isinstance(group, Mapping) or not isinstance(group.get("pattern"), str):
            raise ValueError(
                f"finetune.param_groups[{i}]={group!r}; expected a mapping with a 'pattern' and optimizer "
                "options. Fix: e.g. {pattern: 'latent_transformer.*', lr: 1.0e-3}."
            )
        pattern = group["pattern"]
        options = {k: v for k, v in group.items() if k != "pattern"}
        if "params" in options:
            raise ValueError(
                f"finetune.param_groups[{i}] sets 'params'; the pattern chooses them. Fix: drop 'params'."
            )
        hits = [(n, p) for n, p in trainable if n not in taken and fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
            if not matched:
                why = f"it matches no parameter of {type(model).__name__}; {_modules_hint(names)}"
            elif not any(fnmatch.fnmatchcase(n, pattern) for n, _ in trainable):
                why = f"it matches only frozen parameters ({len(matched)}, e.g. {matched[0]!r})"
            else:
                why = "an earlier group takes every parameter it matches (the first matching group wins)"
            raise ValueError(
                f"finetune.param_groups[{i}] pattern {pattern!r}: {why}. Fix: correct the pattern "
                "(shell-style, e.g. 'latent_transformer.*'), or drop the group."
            )
        taken.update(n for n, _ in hits)
        result.append({"params": [p for _, p in hits], "param_names": [n for n, _ in hits], **options})
    rest = [(n, p) for n, p in trainable if n not in taken]
    if rest:
        result.append({"params": [p for _, p in rest], "param_names": [n for n, _ in rest]})
    return result


def describe_groups(groups: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per optimizer parameter group: its options and how many parameters it holds."""
    lines = []
    for g in groups:
        options = {k: v for k, v in g.items() if k not in ("params", "param_names")}
        count = sum(p.numel() for p in g["params"])
        shown = options or "task.optimizer's options"
        lines.append(f"{len(g['params'])} tensors, {count:,} parameters, {shown}")
    return lines
