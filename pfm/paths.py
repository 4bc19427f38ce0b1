"""Where pfm's own files are: the Hydra configs, the launch templates and the bundled checkpoint registry.

They ship inside the installed package (pyproject.toml maps the repository's ``conf/`` onto ``pfm.conf``,
``launch/`` onto ``pfm.launch_files`` and ``checkpoints/`` onto ``pfm.checkpoint_files``), so a wheel,
``pip install .`` and ``pip install -e .`` find them the same way, from any working directory. An environment
variable points one elsewhere: ``PFM_CONFIG_DIR``, ``PFM_LAUNCH_DIR``, ``PFM_BUNDLED_REGISTRY``.

Nothing here imports the rest of pfm, so any layer may use it.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

__all__ = ["BUNDLED_REGISTRY", "CONF_DIR", "LAUNCH_DIR", "package_folder"]


def package_folder(package: str) -> Path:
    """The folder on disk of the data package ``package`` (e.g. ``pfm.conf``)."""
    folder = Path(str(files(package)))
    if not folder.is_dir():
        # importlib.resources can serve a zipped package, which Hydra and jinja2 cannot read from
        raise RuntimeError(
            f"{package} is not a folder on disk ({folder}); install pfm unzipped (pip install does)."
        )
    return folder


CONF_DIR = Path(os.environ.get("PFM_CONFIG_DIR") or package_folder("pfm.conf"))
LAUNCH_DIR = Path(os.environ.get("PFM_LAUNCH_DIR") or package_folder("pfm.launch_files"))
BUNDLED_REGISTRY = Path(
    os.environ.get("PFM_BUNDLED_REGISTRY") or package_folder("pfm.checkpoint_files") / "registry.yaml"
)
