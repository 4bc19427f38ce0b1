"""Lightning's Trainer switches as pfm reads them: ``trainer.X`` is the strategy's ``strategy.X``.

The strategy (``conf/strategy/*.yaml``, :func:`pfm.distributed.build_strategy`) builds the Trainer's
accelerator, devices, nodes and precision, so a Lightning user's ``trainer.precision=bf16-mixed``,
``trainer.accelerator=gpu``, ``trainer.devices=2`` and ``trainer.num_nodes=2`` set ``strategy.precision``,
``strategy.accelerator``, ``strategy.devices`` and ``strategy.num_nodes``. ``trainer.strategy=<name>`` names
the strategy file that is already chosen, or fails naming ``strategy=<name>``: a strategy file sets more than
its name, so only the config group can switch it. :func:`merge_trainer_switches` runs once on the composed
config, before the config is checked and anything is built.
"""

from __future__ import annotations

from omegaconf import DictConfig, open_dict

from pfm.distributed.catalog import STRATEGIES

__all__ = ["TRAINER_SWITCHES", "merge_trainer_switches"]

# trainer.<key> -> strategy.<key>
TRAINER_SWITCHES = ("accelerator", "devices", "num_nodes", "precision")
# the strategy files' defaults: a strategy value other than these was chosen on purpose
_DEFAULTS = (None, "auto", 1)


def _strategy_name(cfg: DictConfig, value: object) -> None:
    """Check ``trainer.strategy`` against the composed strategy; the same name is no conflict."""
    current = (cfg.get("strategy") or {}).get("name", "single")
    if isinstance(value, str) and value == current:
        return
    names = ", ".join(STRATEGIES)
    raise ValueError(
        f"trainer.strategy={value!r}: pfm chooses the strategy with its config group, which sets more than "
        f"the name (this run's is strategy={current}). Fix: strategy=<name> instead, e.g. "
        f"strategy={value if value in STRATEGIES else 'ddp'} (one of {names}); docs/distributed.md."
    )


def merge_trainer_switches(cfg: DictConfig) -> None:
    """Move ``trainer.{accelerator,devices,num_nodes,precision}`` into ``strategy``, in place.

    Unset (null) trainer values are dropped; two different values that were both chosen are refused, naming
    the ``strategy.*`` key to give instead. ``trainer.strategy`` must name the chosen strategy file.
    """
    trainer, strategy = cfg.get("trainer"), cfg.get("strategy")
    if trainer is None:
        return
    if "strategy" in trainer:
        value = trainer.strategy
        if value is not None:
            _strategy_name(cfg, value)
        with open_dict(cfg):
            del trainer["strategy"]
    for key in TRAINER_SWITCHES:
        if key not in trainer:
            continue
        value = trainer[key]
        if value is None:  # unset (conf/trainer/default.yaml): the strategy's value stands
            with open_dict(cfg):
                del trainer[key]
            continue
        if key == "precision":
            value = str(value)  # Lightning's trainer.precision=16 means "16-mixed", like the string
        if strategy is None:
            raise ValueError(
                f"trainer.{key}={value} needs a strategy to take it; the config has none. "
                f"Fix: add strategy=single (or ddp) strategy.{key}={value}."
            )
        current = strategy.get(key)
        if current not in (*_DEFAULTS, value) and str(current) != str(value):
            raise ValueError(
                f"trainer.{key}={value} and strategy.{key}={current} disagree; they are the same switch "
                f"(the strategy sets the Trainer's {key}). Fix: give only strategy.{key}=<value>."
            )
        with open_dict(cfg):
            strategy[key] = value
            del trainer[key]
