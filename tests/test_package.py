"""pfm as a package, in this (editable) install: the package list covers the tree, the configs, template and
registry are package data, a user's own config folder composes with pfm's groups (pfm-train's --config-dir,
pfm launch slurm --config-dir), and a missing extra names its pip line. The installed wheel: test_wheel.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from user_config import write_user_config

from pfm.cli import main
from pfm.distributed import build_strategy
from pfm.embeddings.providers import ESM2Embedding
from pfm.extras import extra_problem, require_extra
from pfm.paths import BUNDLED_REGISTRY, CONF_DIR, LAUNCH_DIR, package_folder

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]


def test_package_list_covers_every_code_folder() -> None:
    """pyproject's explicit list (needed for the mapped folders) names every folder of pfm/ and datagen/."""
    on_disk = {
        ".".join(p.parent.relative_to(REPO).parts)
        for top in ("pfm", "datagen")
        for p in (REPO / top).rglob("__init__.py")
    }
    mapped = set(SETUPTOOLS["package-dir"])
    assert set(SETUPTOOLS["packages"]) == on_disk | mapped, "add the new package to pyproject.toml"
    for package, folder in SETUPTOOLS["package-dir"].items():
        assert (REPO / folder / "__init__.py").is_file(), f"{folder}/__init__.py ({package}) is missing"
        assert package_folder(package) == REPO / folder  # the editable install maps it onto the repo folder


def test_runtime_files_are_package_data() -> None:
    """What pfm reads at run time matches a package-data glob, so it is in the wheel."""
    data = SETUPTOOLS["package-data"]
    assert data["pfm.conf"] == ["**/*.yaml"] and (CONF_DIR / "train.yaml").is_file()
    assert "slurm/*.j2" in data["pfm.launch_files"] and (LAUNCH_DIR / "slurm" / "job.sbatch.j2").is_file()
    assert "registry.yaml" in data["pfm.checkpoint_files"] and BUNDLED_REGISTRY.is_file()


def test_user_config_folder_composes_with_pfms_groups(tmp_path: Path) -> None:
    """hydra.searchpath (what --config-dir adds): the user's experiment and data file over pfm's groups."""
    mine = write_user_config(tmp_path / "myconf")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=my_exp", f"hydra.searchpath=[file://{mine}]"])
    assert cfg.model._target_.endswith("ConvVAE"), cfg.model._target_  # pfm's model group
    assert cfg.data._target_ == "pfm.data.OnlineCropDataModule"  # pfm's online_crops under the user's file
    assert (cfg.data.n, cfg.data.crop, cfg.data.prefetch) == (16, 16, False)  # the user's values
    assert "diffusion" in cfg.data.pdes and cfg.seed == 7 and list(cfg.logger) == ["csv"]


def test_pfm_launch_carries_the_user_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--config-dir (relative here) reaches the job as an absolute hydra.searchpath; the config composes."""
    write_user_config(tmp_path / "myconf")
    monkeypatch.chdir(tmp_path)
    args = ["launch", "slurm", "experiment=my_exp", "strategy=ddp", "--gpus-per-node", "0"]
    code = main([*args, "--tasks-per-node", "2", "--config-dir", "myconf", "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 0, err
    script, config = out.split("# --- composed config", 1)
    srun = next(line for line in script.splitlines() if "pfm.train" in line)
    assert f"'hydra.searchpath=[file://{tmp_path / 'myconf'}]'" in srun, srun
    assert "experiment=my_exp" in srun
    assert "seed: 7" in config and "prefetch: false" in config  # the user's files, composed at submission
    assert main([*args, "--config-dir", "nowhere", "--dry-run"]) == 2
    assert "--config-dir nowhere: no such folder" in capsys.readouterr().err


def test_a_missing_extra_names_the_pip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """With an extra's package hidden (None in sys.modules: not importable), its feature names the pip line."""
    assert extra_problem("yaml", "none", "reading YAML") is None
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"ESM-2 provider.*`transformers`.*pip install 'pfm\[esm2\]'"):
        ESM2Embedding(weights="unused")
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    with pytest.raises(RuntimeError, match=r"strategy=deepspeed_zero2 needs `deepspeed`.*pfm\[deepspeed\]"):
        build_strategy("deepspeed_zero2", accelerator="cpu")
    with pytest.raises(ImportError, match=r"pip install 'pfm\[slurm\]'"):
        require_extra("pfm_no_such_module", "slurm", "a sweep on SLURM")


def test_a_sweep_on_slurm_without_the_extra_names_the_pip_line(tmp_path: Path) -> None:
    """pfm-train -m hydra/launcher=slurm without hydra-submitit-launcher (hidden) exits with the pip line."""
    code = (
        "import sys; sys.modules['hydra_plugins.hydra_submitit_launcher'] = None; "
        "sys.argv = ['pfm-train', '-m', 'hydra/launcher=slurm', 'experiment=demo']; "
        "from pfm.train import main; main()"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 1
    assert "hydra/launcher=slurm needs `hydra_plugins.hydra_submitit_launcher`" in result.stderr, (
        result.stderr
    )
    assert "pip install 'pfm[slurm]'" in result.stderr and not (tmp_path / "multirun").exists()
