"""A table of bad inputs (configs, files, checkpoints, tensor shapes, PDE coefficients): each fails with a message
that names the bad value and a fix, and leaves no partial file behind.

Config cases are composed in-process with Hydra's compose API and checked the way ``pfm-train`` checks them
(``merge_trainer_devices`` + ``check_config``, then ``build_task``); one case runs the real ``pfm-train``.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import pfm_train
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import DictConfig

from datagen import FamilySpec, PDEPool, make_stepper
from datagen.shards import write_shards
from datagen.spectral import Grid
from datagen.stepper import as_coefficient
from pfm.build import CONF_DIR, build_task, load_pretrained
from pfm.checkpoints import export_checkpoint, load_weights, resolve_resume
from pfm.checkpoints.registry import load_registry
from pfm.config_check import check_config, config_problems, merge_trainer_devices
from pfm.data import ShardDataModule
from pfm.data.mdcath import MdCathDataModule
from pfm.data.well import WellDataModule
from pfm.embeddings import EmbeddingTable

# small FFTs and models on a shared 2-core machine: one torch thread (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


def _compose(overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides)


def _checked(overrides: list[str]) -> Callable[[Path], None]:
    """Compose, then check as pfm-train does before building anything."""

    def run(tmp: Path) -> None:
        cfg = _compose([o.replace("TMP", str(tmp)) for o in overrides])
        merge_trainer_devices(cfg)
        check_config(cfg)

    return run


def _built(overrides: list[str]) -> Callable[[Path], None]:
    """Compose, check and build data, model and task (errors raised while building)."""

    def run(tmp: Path) -> None:
        cfg = _compose([o.replace("TMP", str(tmp)) for o in overrides])
        merge_trainer_devices(cfg)
        instantiate(cfg.strategy, _convert_="all")
        build_task(cfg)

    return run


def _text_file(tmp: Path, name: str = "model.ckpt") -> Path:
    path = tmp / name
    path.write_text("this is not a checkpoint\n")
    return path


def _state(max_abs: float, dim: int = 3, n: int = 48, length: float = 2 * math.pi) -> torch.Tensor:
    """A smooth vector field ``(1, dim, n, ..., n)`` with max |u| = ``max_abs``."""
    axis = torch.arange(n) * length / n
    x = torch.stack(torch.meshgrid(*[axis] * dim, indexing="ij"))
    u = torch.sin(x + 0.3 * torch.arange(dim).reshape(-1, *[1] * dim))
    return max_abs * u[None] / u.abs().max()


class CliError(Exception):
    """A command line that exited non-zero; the message is what it printed on stderr."""


def _cli(main: Callable[[list[str]], int], argv: list[str]) -> Callable[[Path], None]:
    """Run a command line in-process (``TMP`` -> the case's folder); a non-zero exit raises CliError."""

    def run(tmp: Path) -> None:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                code = main([a.replace("TMP", str(tmp)) for a in argv])
            except SystemExit as exit_:
                code = exit_.code
        if code != 0:
            raise CliError(f"exit {code}: {err.getvalue()}")

    return run


def _pfm(argv: list[str]) -> Callable[[Path], None]:
    from pfm.cli import main

    return _cli(main, argv)


def _datagen(argv: list[str]) -> Callable[[Path], None]:
    from datagen.cli import main

    return _cli(main, argv)


def _safetensors(tmp: Path, name: str = "cut.safetensors", cut: int = 16) -> Path:
    """A safetensors file with its last ``cut`` bytes missing (an interrupted download)."""
    from safetensors.torch import save

    data = save({"weight": torch.ones(8, 8)})
    (tmp / name).write_bytes(data[: len(data) - cut])
    return tmp / name


def _registry(tmp: Path, text: str) -> Path:
    (tmp / "registry.yaml").write_text(text)
    return tmp / "registry.yaml"


def _write(tmp: Path, name: str, data: bytes) -> Path:
    (tmp / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp / name).write_bytes(data)
    return tmp / name


def _torch_file(tmp: Path, name: str, cut: bool) -> Path:
    buffer = io.BytesIO()
    torch.save({"1abcA00": torch.ones(5, 7)}, buffer)
    data = buffer.getvalue()
    return _write(tmp, name, data[: len(data) // 2] if cut else b"")


def _tar(tmp: Path, cut: int) -> None:
    import tarfile

    (tmp / "shards").mkdir()
    (tmp / "shards" / "format.json").write_text('{"kind": "crops"}')
    with tarfile.open(tmp / "shards" / "shard-000000.tar", "w") as tar:
        info = tarfile.TarInfo("000000000.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    data = (tmp / "shards" / "shard-000000.tar").read_bytes()
    (tmp / "shards" / "shard-000000.tar").write_bytes(data[: len(data) - cut])


@dataclass
class Case:
    """One bad input: what to run, the error type, words naming the value, words giving the fix."""

    name: str
    run: Callable[[Path], object]
    error: type[BaseException] | tuple[type[BaseException], ...]
    names: tuple[str, ...]
    fix: tuple[str, ...]
    setup: Callable[[Path], object] | None = None  # writes the bad input files (not counted as left behind)


DEMO = ["experiment=demo"]
CASES = [
    # configs: the four raw errors of issue 12, then types, ranges and unknown keys
    Case(
        "init_from text file named .ckpt",
        lambda t: _checked([*DEMO, f"init_from={_text_file(t)}"])(t),
        ValueError,
        ("model.ckpt", "not a PyTorch checkpoint"),
        ("Fix: init_from=",),
    ),
    Case(
        "batch_size negative",
        _checked([*DEMO, "data.batch_size=-2"]),
        ValueError,
        ("data.batch_size=-2",),
        ("Fix: e.g. data.batch_size=",),
    ),
    Case(
        "lr not a number",
        _checked([*DEMO, "task.optimizer.lr=fast"]),
        ValueError,
        ("task.optimizer.lr='fast'", "float"),
        ("Fix: e.g. task.optimizer.lr=",),
    ),
    Case(
        "lr negative given as an integer",
        _checked([*DEMO, "task.optimizer.lr=-1"]),
        ValueError,
        ("task.optimizer.lr=-1", "a number > 0"),
        ("Fix: e.g. task.optimizer.lr=0.001",),
    ),
    Case(
        "typed keys the shards data does not take",
        _checked([*DEMO, "data=shards", "data.path=TMP", "+data.n=64", "+data.crop=32"]),
        ValueError,
        ("data.n=64", "data.crop=32", "ShardDataModule"),
        ("~data.n ~data.crop",),
    ),
    Case(
        "num_data_shards (renamed num_pools) in a config",
        _checked([*DEMO, "+data.num_data_shards=2"]),
        ValueError,
        ("data.num_data_shards=2", "the key is now data.num_pools"),
        ("Fix: write data.num_pools=2",),
    ),
    Case(
        "num_data_shards (renamed num_pools) on pfm launch's command line",
        _pfm(["launch", "slurm", "experiment=demo", "data.num_data_shards=2", "--dry-run"]),
        CliError,
        ("data.num_data_shards=2", "the key is now data.num_pools"),
        ("Fix: write data.num_pools=2",),
    ),
    Case(
        "num_data_shards (renamed num_pools) in pfm evaluate's overrides",
        _pfm(["evaluate", "TMP/last.ckpt", "data.num_data_shards=2", "--out", "TMP/eval"]),
        ValueError,
        ("data.num_data_shards=2", "the key is now data.num_pools"),
        ("Fix: write data.num_pools=2",),
    ),
    Case(
        "ShardPool (renamed PDEPool) imported",
        lambda t: exec("from datagen import ShardPool"),
        ImportError,
        ("datagen.ShardPool", "shard= argument is pool_index="),
        ("Fix: from datagen import PDEPool",),
    ),
    Case(
        "init_from missing",
        _checked([*DEMO, "init_from=/nonexistent/weights.ckpt"]),
        ValueError,
        ("/nonexistent/weights.ckpt", "does not exist"),
        ("Fix: init_from=",),
    ),
    Case(
        "crop not an integer",
        _checked([*DEMO, "data.crop=3.5"]),
        ValueError,
        ("data.crop=3.5", "int"),
        ("Fix: e.g. data.crop=32",),
    ),
    Case(
        "grid size zero",
        _checked([*DEMO, "data.n=0"]),
        ValueError,
        ("data.n=0", ">= 1"),
        ("Fix: e.g. data.n=",),
    ),
    Case(
        "refresh fraction above 1",
        _checked([*DEMO, "data.refresh_fraction=1.5"]),
        ValueError,
        ("data.refresh_fraction=1.5", "[0, 1]"),
        ("Fix: e.g. data.refresh_fraction=",),
    ),
    Case(
        "no trajectories",
        _checked([*DEMO, "data.num_trajectories=0"]),
        ValueError,
        ("data.num_trajectories=0",),
        ("Fix: e.g. data.num_trajectories=",),
    ),
    Case(
        "max_steps zero",
        _checked([*DEMO, "trainer.max_steps=0"]),
        ValueError,
        ("trainer.max_steps=0",),
        ("Fix: e.g. trainer.max_steps=",),
    ),
    Case(
        "misspelt data key",
        _checked([*DEMO, "+data.augmentt=false"]),
        ValueError,
        ("data.augmentt=False",),
        ("did you mean augment", "~data.augmentt"),
    ),
    Case(
        "boolean given as text",
        _checked([*DEMO, "data.standardize=maybe"]),
        ValueError,
        ("data.standardize='maybe'", "bool"),
        ("Fix",),
    ),
    Case(
        "shards path unset",
        _checked(["data=shards", "model=conv_vae"]),
        ValueError,
        ("data.path", "???"),
        ("data.path=<value>",),
    ),
    Case(
        "trainer.devices and strategy.devices disagree",
        _checked([*DEMO, "strategy=ddp", "strategy.devices=3", "trainer.devices=2"]),
        ValueError,
        ("trainer.devices=2", "strategy.devices=3"),
        ("Fix: give only strategy.devices",),
    ),
    Case(
        "trainer.devices=2 on the one-process strategy",
        _built([*DEMO, "trainer.devices=2"]),
        HydraException,
        ("devices=2", "single runs one process"),
        ("ddp", "pick one with strategy=<name>"),
    ),
    Case(
        "unknown accelerator",
        _built([*DEMO, "strategy.accelerator=tpu"]),
        HydraException,
        ("'tpu'",),
        ("auto, cpu, gpu",),
    ),
    Case(
        "unknown model choice",
        lambda t: _compose(["model=tadpole_xxl"]),
        MissingConfigException,
        ("tadpole_xxl",),
        ("tadpole_s", "conv_vae"),
    ),
    Case(
        "key not in the config",
        lambda t: _compose(["data.augmentt=false"]),
        ConfigCompositionException,
        ("data.augmentt",),
        ("+data.augmentt",),
    ),
    Case(
        "crop larger than the grid",
        _built(["model=conv_vae", "data.n=16", "data.crop=32"]),
        HydraException,
        ("data.crop=32", "data.n=16"),
        ("data.crop <= 16",),
    ),
    Case(
        "crop not divisible by the model",
        _built([*DEMO, "data.n=32", "data.crop=24"]),
        ValueError,
        ("data.crop=24", "16"),
        ("e.g. data.crop=16",),
    ),
    # files and checkpoints
    Case(
        "resume from a text file",
        lambda t: resolve_resume(_text_file(t), t / "checkpoints"),
        ValueError,
        ("model.ckpt",),
        ("resume=auto",),
    ),
    Case(
        "export a text file",
        lambda t: export_checkpoint(_text_file(t), t / "export"),
        ValueError,
        ("model.ckpt",),
        ("export an older one",),
    ),
    Case(
        "export a missing checkpoint",
        lambda t: export_checkpoint(t / "missing.ckpt", t / "export"),
        (FileNotFoundError, ValueError),
        ("missing.ckpt",),
        ("pass a step*.ckpt",),
    ),
    Case(
        "shards folder without format.json",
        lambda t: ShardDataModule(path=str(t), batch_size=2).setup("fit"),
        ValueError,
        ("format.json",),
        ("pfm-datagen write --out",),
    ),
    # tensor shapes
    Case(
        "coefficient of the wrong shape",
        lambda t: as_coefficient(torch.ones(2, 2), Grid(2, 16, 1.0)),
        ValueError,
        ("(2, 2)",),
        ("scalar or a (batch,) vector",),
    ),
    Case(
        "field without a channel axis",
        lambda t: build_task(_compose(["model=conv_vae", "data.n=16", "data.crop=16"]))[1].model(
            torch.randn(1, 12, 12, 12)
        ),
        ValueError,
        ("(1, 12, 12, 12)",),
        ("(batch, channels, x, y, z)",),
    ),
    # PDE coefficients and states
    Case(
        "unknown PDE",
        lambda t: make_stepper("navier_stokes_3d", dim=3, n=16, dt=0.1),
        ValueError,
        ("navier_stokes_3d",),
        ("burgers", "docs/new_pde.md"),
    ),
    Case(
        "unknown coefficient",
        lambda t: make_stepper("burgers", dim=1, n=32, dt=0.001, viscosity=0.1),
        ValueError,
        ("viscosity",),
        ("diffusivity",),
    ),
    Case(
        "negative diffusivity",
        lambda t: make_stepper("diffusion", dim=2, n=32, dt=0.01, diffusivity=-0.1),
        ValueError,
        ("diffusivity", "-0.1"),
        ("use diffusivity >= 0",),
    ),
    # a negative coefficient under a resolved width's sqrt (Allen-Cahn, Cahn-Hilliard, Fisher-KPP, Gray-Scott)
    Case(
        "negative gamma (Cahn-Hilliard's interface width)",
        lambda t: make_stepper("cahn_hilliard", dim=2, n=32, dt=0.01, gamma=-0.1),
        ValueError,
        ("gamma", "-0.1", "below the limit 0"),
        ("use gamma >= 0",),
    ),
    Case(
        "negative diffusivity in a pool's range (Fisher-KPP's front width)",
        lambda t: PDEPool(
            [FamilySpec("fisher_kpp", dt=0.001, coefficients={"diffusivity": [-0.001, 0.001]})],
            n=32,
            num_trajectories=1,
        ),
        ValueError,
        ("diffusivity", "-0.001", "below the limit 0"),
        ("use diffusivity >= 0",),
    ),
    Case(
        "zero time step",
        lambda t: make_stepper("diffusion", dim=2, n=32, dt=0.0),
        ValueError,
        ("dt=0",),
        ("positive time step",),
    ),
    Case(
        "dimension the family lacks",
        lambda t: make_stepper("navier_stokes_vorticity", dim=3, n=16, dt=0.001),
        ValueError,
        ("dim=3",),
        ("[2]",),
    ),
    Case(
        "state too large for the viscosity",
        lambda t: make_stepper("burgers", dim=3, n=48, length=2 * math.pi, dt=0.005, diffusivity=0.03)(
            _state(4.0)
        ),
        ValueError,
        ("max|u|=4", "cell Reynolds number", "above the limit 10"),
        ("use diffusivity >= ", "or n >= "),
    ),
    Case(
        "pool coefficient range breaks the CFL limit",
        lambda t: PDEPool(
            [FamilySpec("burgers", dt=0.05, coefficients={"diffusivity": [0.01, 0.03]})],
            n=32,
            num_trajectories=1,
        ),
        ValueError,
        ("dt=0.05", "CFL number"),
        ("use dt <=",),
    ),
    Case(
        "negative max_amplitude",
        lambda t: make_stepper("burgers", dim=1, n=32, dt=0.001, max_amplitude=-1.0),
        ValueError,
        ("max_amplitude=-1.0",),
        (">= 0",),
    ),
    # issue 17's second round: files that are truncated or empty, counts on every command line, registries
    Case(
        "init_from truncated .safetensors",
        _checked([*DEMO, "init_from=TMP/cut.safetensors"]),
        ValueError,
        ("cut.safetensors", "header describes"),
        ("Fix: init_from=", "download or export it again"),
        setup=_safetensors,
    ),
    Case(
        "official weights truncated .safetensors",
        lambda t: load_weights(torch.nn.Linear(8, 8), t / "cut.safetensors"),
        ValueError,
        ("cut.safetensors", "header describes"),
        ("download or export it again",),
        setup=_safetensors,
    ),
    Case(
        "embedding table empty .safetensors",
        lambda t: EmbeddingTable(t / "e.safetensors"),
        ValueError,
        ("e.safetensors", "has 0 bytes"),
        ("download or export it again",),
        setup=lambda t: _write(t, "e.safetensors", b""),
    ),
    Case(
        "embedding table truncated .pt",
        lambda t: EmbeddingTable(t / "cut.pt"),
        ValueError,
        ("cut.pt", "could not be read"),
        ("check that the file is complete",),
        setup=lambda t: _torch_file(t, "cut.pt", cut=True),
    ),
    Case(
        "load_pretrained empty .pth",
        lambda t: load_pretrained(t / "empty.pth"),
        ValueError,
        ("empty.pth", "could not be read"),
        ("check that the file is complete",),
        setup=lambda t: _torch_file(t, "empty.pth", cut=False),
    ),
    Case(
        "resume from an empty .ckpt",
        lambda t: resolve_resume(t / "empty.ckpt", t),
        ValueError,
        ("resume=", "empty.ckpt", "truncated or unreadable"),
        ("resume=auto",),
        setup=lambda t: _torch_file(t, "empty.ckpt", cut=False),
    ),
    Case(
        "mdCATH truncated .h5",
        lambda t: MdCathDataModule(str(t / "md"), lag_range=[1, 2]),
        ValueError,
        ("mdcath_dataset_1abcA00.h5", "cannot be opened as HDF5"),
        ("download the domain again",),
        setup=lambda t: _write(t, "md/mdcath_dataset_1abcA00.h5", b"\x89HDF\r\n\x1a\n" + bytes(56)),
    ),
    Case(
        "shards format.json empty",
        lambda t: ShardDataModule(str(t / "shards")),
        ValueError,
        ("format.json", "not valid JSON"),
        ("pfm-datagen write --out",),
        setup=lambda t: _write(t, "shards/format.json", b""),
    ),
    Case(
        "shards tar truncated",
        lambda t: ShardDataModule(str(t / "shards")),
        ValueError,
        ("shard-000000.tar", "not a whole number of 512-byte tar blocks"),
        ("copy or write it again",),
        setup=lambda t: _tar(t, cut=100),
    ),
    Case(
        "Well stats.yaml truncated",
        lambda t: WellDataModule(str(t / "ds")),
        ValueError,
        ("stats.yaml", "not valid YAML"),
        ("pfm data stats", "data.normalization=sample"),
        setup=lambda t: (
            (t / "ds" / "data" / "train").mkdir(parents=True),
            _write(t, "ds/stats.yaml", b"mean: {u: [0.1, 0.2"),
        ),
    ),
    Case(
        "registry entry of family nope",
        lambda t: load_registry(t / "registry.yaml"),
        ValueError,
        ("registry.yaml", "entry 'mine'", "family is 'nope'"),
        ("use one of ['conv_vae'",),
        setup=lambda t: _registry(
            t, "models:\n  mine: {family: nope, model: conv_vae, files: [https://a/b]}\n"
        ),
    ),
    Case(
        "registry entries without models:",
        lambda t: load_registry(t / "registry.yaml"),
        ValueError,
        ("registry.yaml", "top-level key(s) ['mine']"),
        ("Fix: add a line `models:`",),
        setup=lambda t: _registry(t, "mine: {family: conv_vae, model: conv_vae, files: [https://a/b]}\n"),
    ),
    Case(
        "registry YAML truncated",
        lambda t: load_registry(t / "registry.yaml"),
        ValueError,
        ("registry.yaml", "not valid YAML"),
        ("fix the syntax",),
        setup=lambda t: _registry(t, "models:\n  mine: {family: [\n"),
    ),
    Case(
        "pfm-datagen write --samples -3",
        _datagen(["write", "--pde", "diffusion", "--samples", "-3", "--out", "TMP/out"]),
        CliError,
        ("--samples", "-3 is below 1"),
        ("expected an integer >= 1 (e.g. 1024)",),
    ),
    Case(
        "pfm-datagen write --samples not an integer",
        _datagen(["write", "--pde", "diffusion", "--samples", "1e3", "--out", "TMP/out"]),
        CliError,
        ("--samples", "'1e3' is not an integer"),
        ("expected an integer >= 1",),
    ),
    Case(
        "pfm-datagen write --samples-per-shard 0",
        _datagen(
            ["write", "--pde", "diffusion", "--samples", "4", "--samples-per-shard", "0", "--out", "TMP/o"]
        ),
        CliError,
        ("--samples-per-shard", "0 is below 1"),
        ("expected an integer >= 1",),
    ),
    Case(
        "pfm-datagen write --shard 1 (renamed --pool-index)",
        _datagen(["write", "--pde", "diffusion", "--samples", "4", "--shard", "1", "--out", "TMP/o"]),
        CliError,
        ("--shard 1", "the pool index is now --pool-index"),
        ("Fix: --pool-index 1",),
    ),
    Case(
        "pfm-datagen write --out an existing file",
        _datagen(["write", "--pde", "diffusion", "--samples", "4", "--out", "TMP/model.ckpt"]),
        CliError,
        ("--out", "model.ckpt is an existing file"),
        ("Fix: pass another path",),
        setup=_text_file,
    ),
    Case(
        "write_shards num_samples=0",
        lambda t: write_shards([FamilySpec("diffusion", dt=0.01)], t / "out", num_samples=0),
        ValueError,
        ("num_samples=0",),
        ("expected an integer >= 1", "Fix: e.g. num_samples="),
    ),
    Case(
        "pfm-datagen bench --steps 0",
        _datagen(["bench", "--steps", "0"]),
        CliError,
        ("--steps", "0 is below 1"),
        ("expected an integer >= 1",),
    ),
    Case(
        "pfm launch slurm --time soon",
        _pfm(["launch", "slurm", "experiment=demo", "--time", "soon", "--dry-run"]),
        CliError,
        ("--time 'soon'", "not a SLURM time limit"),
        ("D-HH:MM:SS", "Fix: e.g. --time 24:00:00"),
    ),
    Case(
        "pfm launch slurm --nodes 0",
        _pfm(["launch", "slurm", "experiment=demo", "--nodes", "0", "--dry-run"]),
        CliError,
        ("--nodes 0",),
        ("expected an integer >= 1", "Fix: e.g. --nodes 2"),
    ),
    Case(
        "pfm launch slurm --tasks-per-node 0",
        _pfm(
            [
                "launch",
                "slurm",
                "experiment=demo",
                "--gpus-per-node",
                "0",
                "--tasks-per-node",
                "0",
                "--dry-run",
            ]
        ),
        CliError,
        ("--tasks-per-node 0",),
        ("expected an integer >= 1",),
    ),
    Case(
        "pfm launch slurm --nodes not an integer",
        _pfm(["launch", "slurm", "experiment=demo", "--nodes", "two", "--dry-run"]),
        CliError,
        ("--nodes", "'two'"),
        ("int",),
    ),
    Case(
        "pfm sample --steps 0",
        _pfm(["sample", "x.ckpt", "--pdb", "x.pdb", "--steps", "0", "--out", "TMP/out"]),
        CliError,
        ("--steps", "0 is below 1"),
        ("expected an integer >= 1 (e.g. 1000)",),
    ),
    Case(
        "pfm sample --temperature -5",
        _pfm(["sample", "x.ckpt", "--pdb", "x.pdb", "--temperature", "-5", "--out", "TMP/out"]),
        CliError,
        ("--temperature", "-5 is not a finite number > 0"),
        ("expected e.g. 300.0",),
    ),
    Case(
        "pfm sample --trajectories not an integer",
        _pfm(["sample", "x.ckpt", "--pdb", "x.pdb", "--trajectories", "many", "--out", "TMP/out"]),
        CliError,
        ("--trajectories", "'many' is not an integer"),
        ("expected an integer >= 1",),
    ),
    Case(
        "pfm embed --batch-size 0",
        _pfm(
            [
                "embed",
                "--provider",
                "identity",
                "--fasta",
                "x.fasta",
                "--out",
                "TMP/t.safetensors",
                "--batch-size",
                "0",
            ]
        ),
        CliError,
        ("--batch-size", "0 is below 1"),
        ("expected an integer >= 1 (e.g. 8)",),
    ),
]


def test_the_table_is_large() -> None:
    assert len(CASES) >= 25
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_names_value_and_fix(case: Case, tmp_path: Path) -> None:
    if case.setup is not None:
        case.setup(tmp_path)
    before = set(tmp_path.rglob("*"))
    with pytest.raises(case.error) as info:
        case.run(tmp_path)
    message = str(info.value) + "".join(f"\n{c}" for c in _causes(info.value))
    for words in (*case.names, *case.fix):
        assert words in message, f"{case.name}: {words!r} not in the message:\n{message}"
    left = set(tmp_path.rglob("*")) - before - {tmp_path / "model.ckpt"}
    assert not left, f"{case.name} left files behind: {sorted(map(str, left))}"


def _causes(err: BaseException) -> list[BaseException]:
    out = []
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
        out.append(err)
    return out


def test_trainer_devices_is_strategy_devices() -> None:
    """trainer.devices/num_nodes, as a Lightning user types them, set the strategy's switches."""
    cfg = _compose([*DEMO, "strategy=ddp", "trainer.devices=2", "trainer.num_nodes=1"])
    merge_trainer_devices(cfg)
    assert cfg.strategy.devices == 2 and cfg.strategy.num_nodes == 1
    assert "devices" not in cfg.trainer and "num_nodes" not in cfg.trainer
    setup = instantiate(cfg.strategy, _convert_="all")
    assert setup.trainer_kwargs["devices"] == 2
    same = _compose([*DEMO, "strategy=ddp", "strategy.devices=2", "trainer.devices=2"])
    merge_trainer_devices(same)  # the same value twice is no conflict
    assert same.strategy.devices == 2
    with pytest.raises(ValueError, match=r"trainer.num_nodes=2 and strategy.num_nodes=4.*strategy.num_nodes"):
        merge_trainer_devices(_compose([*DEMO, "strategy.num_nodes=4", "trainer.num_nodes=2"]))


def test_every_composed_experiment_passes_the_check() -> None:
    """No false alarms: every experiment and every option of every group composes into a clean config (an
    option may leave a ``???`` value of its own group for the user, as data=shards leaves data.path; an experiment
    on files, foundation_gphyt_finetune, leaves data.path too, as test_configs allows)."""
    overrides = [f"experiment={p.stem}" for p in (CONF_DIR / "experiment").glob("*.yaml")]
    for group in ("model", "data", "head", "task", "strategy", "trainer", "logger"):
        overrides += [f"{group}={p.stem}" for p in (CONF_DIR / group).glob("*.yaml")]
    flagged = {}
    for override in overrides:
        group = override.split("=")[0]
        user = (f"{group}.", "data.path") if group == "experiment" else (f"{group}.",)
        problems = [
            p
            for p in config_problems(_compose([override]))
            if not (p.startswith(user) and "is not set (???)" in p)
        ]
        if problems:
            flagged[override] = problems
    assert not flagged, flagged


def test_pfm_train_reports_the_shards_case_before_building(tmp_path: Path) -> None:
    """The real entry point: online-data keys typed with `data=shards data.path=DIR` fail clearly, early.

    (`experiment=demo data=shards` alone composes: the demo's data keys live in conf/data/demo_crops.yaml.)"""
    shards = tmp_path / "shards"
    shards.mkdir()
    out = tmp_path / "run"
    overrides = ["experiment=demo", "data=shards", f"data.path={shards}", "+data.n=64", "+data.crop=32"]
    result = pfm_train([*overrides, "logger=csv"], out)
    assert result.returncode != 0
    assert "data.n=64" in result.stderr and "~data.n ~data.crop" in result.stderr, result.stderr[-2000:]
    assert "unexpected keyword argument" not in result.stderr
    assert (
        not (out / "checkpoints").exists() and not list(out.rglob("*.png")) and not list(out.rglob("*.tmp"))
    )


def test_pfm_train_names_the_new_name_of_a_renamed_key(tmp_path: Path) -> None:
    """The real entry point: data.num_data_shards (now data.num_pools) on the command line fails naming the new
    key before Hydra composes (Hydra alone would only say that the key is not in the config)."""
    out = tmp_path / "run"
    result = pfm_train(["experiment=demo", "data.num_data_shards=2", "logger=csv"], out)
    assert result.returncode != 0
    assert (
        "data.num_data_shards=2: the key is now data.num_pools. Fix: write data.num_pools=2." in result.stderr
    )
    assert not (out / "checkpoints").exists()
