"""`pfm` imports only the chosen subcommand's module: `pfm --help`, `pfm list` and the `--help` of `pfm sample`,
`pfm evaluate` and `pfm embed` load no torch or Lightning, nor does `pfm-datagen --help` (and its subcommands'),
and every subcommand of `pfm.cli.COMMANDS` is registered by the module named for it."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import subprocess
import sys

import pytest

import pfm.checkpoints
import pfm.embeddings
from pfm.cli import COMMANDS
from pfm.embeddings.cli import PROVIDER_NAMES

_PROBE = (
    "import sys\nfrom {entry} import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
    "print('LOADED', sorted(m for m in ('torch', 'lightning', 'hydra') if m in sys.modules))\n"
)


@pytest.mark.parametrize(
    ("entry", "argv"),
    [
        ("pfm.cli", ["--help"]),
        ("pfm.cli", ["list"]),
        ("pfm.cli", ["data", "--help"]),
        ("pfm.cli", ["sample", "--help"]),
        ("pfm.cli", ["evaluate", "--help"]),
        ("pfm.cli", ["embed", "--help"]),
        ("datagen.cli", ["--help"]),
        ("datagen.cli", ["write", "--help"]),
        ("datagen.cli", ["bench", "--help"]),
    ],
)
def test_light_commands_load_no_torch(entry: str, argv: list[str]) -> None:
    env = dict(os.environ, PFM_OFFLINE="1")
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(entry=entry, argv=argv)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert out.splitlines()[-1] == "LOADED []", out[-2000:]


def test_every_command_is_registered_by_its_module() -> None:
    for name, (module, _help) in COMMANDS.items():
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).add_parser(sub)
        assert name in sub.choices, (name, module)


@pytest.mark.parametrize("package", [pfm.checkpoints, pfm.embeddings])
def test_no_lazy_public_name_is_shadowed_by_a_submodule(package) -> None:
    """A submodule import sets the package attribute of its name, hiding a lazily imported public name."""
    submodules = {m.name for m in pkgutil.iter_modules(package.__path__)}
    assert not set(package.__all__) & submodules
    assert set(package.__all__) == set(package._HOMES)


def test_pfm_embed_offers_every_provider() -> None:
    """`pfm embed --provider` takes its choices from a list beside the arguments (the providers load torch)."""
    assert sorted(PROVIDER_NAMES) == sorted(pfm.embeddings.PROVIDERS)
