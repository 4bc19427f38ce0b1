"""`pfm` imports only the chosen subcommand's module: `pfm --help`, `pfm list` and the `--help` of `pfm sample` and
`pfm evaluate` load no torch or Lightning, and every subcommand of `pfm.cli.COMMANDS` is registered by the module
named for it."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import subprocess
import sys

import pytest

import pfm.checkpoints
from pfm.cli import COMMANDS

_PROBE = (
    "import sys\nfrom pfm.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
    "print('LOADED', sorted(m for m in ('torch', 'lightning', 'hydra') if m in sys.modules))\n"
)


@pytest.mark.parametrize(
    "argv", [["--help"], ["list"], ["data", "--help"], ["sample", "--help"], ["evaluate", "--help"]]
)
def test_light_commands_load_no_torch(argv: list[str]) -> None:
    env = dict(os.environ, PFM_OFFLINE="1")
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(argv=argv)], capture_output=True, text=True, env=env, check=True
    ).stdout
    assert out.splitlines()[-1] == "LOADED []", out[-2000:]


def test_every_command_is_registered_by_its_module() -> None:
    for name, (module, _help) in COMMANDS.items():
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).add_parser(sub)
        assert name in sub.choices, (name, module)


def test_no_public_checkpoints_name_is_shadowed_by_a_submodule() -> None:
    """A submodule import sets the package attribute of its name, hiding a lazily imported public name."""
    submodules = {m.name for m in pkgutil.iter_modules(pfm.checkpoints.__path__)}
    assert not set(pfm.checkpoints.__all__) & submodules
    assert set(pfm.checkpoints.__all__) == set(pfm.checkpoints._HOMES)
