"""pfm's Hydra configs, shipped inside the package as ``pfm.conf`` (pyproject.toml maps it onto this folder)."""
