"""The wheel as a user installs it: built from the sources, installed (not editable) into a fresh virtual
environment with its declared dependencies, and run from an empty folder, far from the repository.

Dependencies come from pip's usual sources pinned to this environment's versions (``pip freeze`` as
constraints), so the same (cached) files are installed and no extra is pulled in; the test then checks that the
extras (deepspeed, transformers) stayed out and that the core commands work without them. ``--no-compile``:
Python compiles what a command imports when it first runs; compiling all of torch at install time only costs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import tomllib
from user_config import write_user_config

REPO = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
# small data, so that two steps of the demo's model take seconds
SMALL = [
    "data.n=16",
    "data.crop=16",
    "data.batch_size=2",
    "data.num_trajectories=2",
    "data.num_val_batches=1",
    "trainer.val_check_interval=2",
    "checkpoint_every_n_steps=2",
    "trainer.enable_progress_bar=false",
    "logger=csv",
]


def _run(cmd: list[str | Path], cwd: Path, env: dict[str, str], timeout: int = 600) -> str:
    result = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    )
    return result.stdout + result.stderr


def _build_wheel(tmp: Path) -> Path:
    """``pip wheel`` of a copy of the package's sources (the build writes build/ and *.egg-info beside them)."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for folder in ("pfm", "datagen", *SETUPTOOLS["package-dir"].values()):
        shutil.copytree(
            REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", str(src), "-w", str(tmp / "dist")]
    _run(cmd, tmp, dict(os.environ), timeout=600)
    (wheel,) = (tmp / "dist").glob("pfm-*.whl")
    return wheel


def _expected_files() -> set[str]:
    """Every file the wheel must hold: the code, the configs, the sbatch template and the bundled registry."""
    files = {str(p.relative_to(REPO)) for top in ("pfm", "datagen") for p in (REPO / top).rglob("*.py")}
    files |= {f"pfm/conf/{p.relative_to(REPO / 'conf')}" for p in (REPO / "conf").rglob("*.yaml")}
    return files | {"pfm/launch_files/slurm/job.sbatch.j2", "pfm/checkpoint_files/registry.yaml"}


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_wheel_installs_and_every_command_runs_from_an_empty_folder(tmp_path: Path) -> None:
    start = time.monotonic()
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(_expected_files() - names)
    assert not missing, f"{wheel.name} lacks {missing[:10]} ({len(missing)} files)"
    built = time.monotonic()

    # a fresh environment: the wheel and its declared dependencies, at this environment's versions
    env_dir = tmp_path / "env"
    _run([sys.executable, "-m", "venv", env_dir], tmp_path, dict(os.environ))
    freeze = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("".join(f"{line}\n" for line in freeze.splitlines() if not line.startswith("pfm")))
    python, bin_dir = env_dir / "bin" / "python", env_dir / "bin"
    _run(
        [python, "-m", "pip", "install", "--quiet", "--no-compile", "-c", constraints, wheel],
        tmp_path,
        dict(os.environ),
        1500,
    )
    installed = time.monotonic()

    empty = tmp_path / "project"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PFM_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(WANDB_MODE="offline", XDG_CONFIG_HOME=str(tmp_path / "xdg"), HYDRA_FULL_ERROR="1")
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"

    # pfm and its files come from the fresh environment, not from the repository; the extras stayed out
    where = _run(
        [
            python,
            "-c",
            "import importlib.util as u, pfm, pfm.paths as p; print(pfm.__file__, p.CONF_DIR, "
            "p.LAUNCH_DIR, p.BUNDLED_REGISTRY, u.find_spec('deepspeed'), u.find_spec('transformers'))",
        ],
        empty,
        env,
    ).split()
    assert all(w.startswith(str(env_dir)) for w in where[:4]), where
    assert where[4:] == ["None", "None"], where

    out = _run(
        [
            bin_dir / "pfm-train",
            "experiment=demo",
            "trainer.max_steps=2",
            "trainer.accelerator=cpu",
            *SMALL,
            "hydra.run.dir=demo_run",
        ],
        empty,
        env,
    )
    assert "Trained 2 steps" in out, out[-2000:]
    checkpoint = empty / "demo_run" / "checkpoints" / "last.ckpt"
    assert checkpoint.exists() and (empty / "demo_run" / "csv" / "metrics.csv").is_file()

    write_user_config(empty / "myconf")
    out = _run(
        [bin_dir / "pfm-train", "--config-dir", "myconf", "experiment=my_exp", "hydra.run.dir=my_run"],
        empty,
        env,
    )
    assert "Trained 2 steps" in out, out[-2000:]
    saved = (empty / "my_run" / ".hydra" / "config.yaml").read_text()
    assert "seed: 7" in saved and "ConvVAE" in saved and "prefetch: false" in saved

    assert "tadpole-s" in _run([bin_dir / "pfm", "list"], empty, env)

    script = _run(
        [
            bin_dir / "pfm",
            "launch",
            "slurm",
            "experiment=demo",
            "strategy=ddp",
            "--nodes",
            "2",
            "--gpus-per-node",
            "4",
            "--dry-run",
        ],
        empty,
        env,
    )
    assert "#SBATCH --nodes=2" in script and "strategy.devices=4" in script, script[:3000]
    mine = _run(
        [
            bin_dir / "pfm",
            "launch",
            "slurm",
            "--config-dir",
            "myconf",
            "experiment=my_exp",
            "--gpus-per-node",
            "0",
            "--dry-run",
        ],
        empty,
        env,
    )
    assert f"hydra.searchpath=[file://{empty / 'myconf'}]" in mine and "seed: 7" in mine

    _run(
        [
            bin_dir / "pfm-datagen",
            "write",
            "--pde",
            "diffusion",
            "--samples",
            "2",
            "--n",
            "16",
            "--crop",
            "8",
            "--out",
            "shards",
        ],
        empty,
        env,
    )
    assert list((empty / "shards").glob("*.tar"))
    _run([bin_dir / "pfm", "export", checkpoint, "--out", "exported"], empty, env)
    assert any((empty / "exported").iterdir())
    end = time.monotonic()
    print(
        f"\nwheel {wheel.name}: {len(names)} files; build {built - start:.0f} s, fresh install "
        f"{installed - built:.0f} s, commands {end - installed:.0f} s, total {end - start:.0f} s"
    )
