"""``pfm launch slurm`` without a cluster: dry runs, mistakes caught before submission, Lightning's SLURM
environment for a 2-node x 4-task allocation, the preemption callback's requeue rules, the submitit sweep
launcher config and the torchrun recipe. Tests against a real slurmctld/slurmd are in test_slurm.py."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir

from pfm.callbacks.preemption import Preemption, signal_number
from pfm.cli import main
from pfm.distributed import build_strategy
from pfm.distributed.cluster import cluster_environment

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def pfm(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """``pfm *args`` in this process (imports once; seconds instead of a fresh interpreter per call)."""

    def call(*args: str, env: dict[str, str] | None = None) -> Result:
        monkeypatch.chdir(tmp_path)
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return call


def test_dry_run_renders_4x8_zero3_script_and_config(pfm: Any, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = pfm(
        "launch", "slurm", "experiment=tadpole_pretrain", "model=tadpole_b", "strategy=deepspeed_zero3",
        f"hydra.run.dir={run}", "--nodes", "4", "--gpus-per-node", "8", "--time", "24:00:00",
        "--partition", "gpu", "--account", "proj", "--setup", "module load cuda/12.4", "--dry-run",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for line in [
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --time=24:00:00",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj",
        f"#SBATCH --output={run}/slurm/%j.out",
        "#SBATCH --signal=USR1@300",
        "#SBATCH --requeue",
        "module load cuda/12.4",
    ]:
        assert line in out.splitlines(), f"missing {line!r} in\n{out}"
    srun = next(line for line in out.splitlines() if line.startswith("srun "))
    for part in [
        "-m pfm.train",
        "strategy=deepspeed_zero3",
        "strategy.devices=8",
        "strategy.num_nodes=4",
        "strategy.accelerator=gpu",
        "resume=auto",
        f"hydra.run.dir={run}",
    ]:
        assert part in srun, f"{part!r} not in {srun!r}"
    # the composed config follows the script, with the counts pfm launch set
    config = out.split("# --- composed config", 1)[1]
    assert "num_nodes: 4" in config and "devices: 8" in config and "name: deepspeed_zero3" in config
    assert "size: B" in config  # model=tadpole_b
    assert not run.exists(), "a dry run writes nothing"


def test_cpu_tasks_mode(pfm: Any, tmp_path: Path) -> None:
    result = pfm(
        "launch", "slurm", "model=conv_vae", "strategy=ddp", f"hydra.run.dir={tmp_path / 'r'}",
        "--gpus-per-node", "0", "--tasks-per-node", "2", "--dry-run",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "#SBATCH --ntasks-per-node=2" in lines
    assert not any(line.startswith("#SBATCH --gpus") for line in lines)
    assert any(line.startswith("export DS_ACCELERATOR=cpu") for line in lines)
    srun = next(line for line in lines if line.startswith("srun "))
    assert "strategy.devices=2" in srun and "strategy.accelerator=cpu" in srun


@pytest.mark.parametrize(
    ("override", "flags", "named"),
    [
        ("strategy.devices=4", ["--gpus-per-node", "8"], ["strategy.devices=4", "--gpus-per-node", "=8"]),
        ("strategy.num_nodes=2", ["--nodes", "4"], ["strategy.num_nodes=2", "--nodes", "=4"]),
        ("strategy.accelerator=gpu", ["--gpus-per-node", "0"], ["strategy.accelerator=gpu", "=cpu"]),
    ],
)
def test_mismatch_with_explicit_strategy_override_names_both(
    pfm: Any, tmp_path: Path, override: str, flags: list[str], named: list[str]
) -> None:
    result = pfm("launch", "slurm", "strategy=ddp", override, *flags, "--dry-run")
    assert result.returncode == 2
    for text in named:
        assert text in result.stderr, result.stderr
    assert "#SBATCH" not in result.stdout


def test_matching_explicit_override_is_accepted(pfm: Any, tmp_path: Path) -> None:
    result = pfm(
        "launch", "slurm", "model=conv_vae", "strategy=ddp", "strategy.devices=8", "--gpus-per-node", "8",
        "--dry-run",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("model=no_such_model", "no_such_model"),
        ("trainer.no_such_key=1", "no_such_key"),
        ("data.crop=${no_such_value}", "no_such_value"),
    ],
)
def test_bad_config_fails_before_anything_is_written(
    pfm: Any, tmp_path: Path, override: str, named: str
) -> None:
    run = tmp_path / "run"
    result = pfm("launch", "slurm", override, f"hydra.run.dir={run}", "--gpus-per-node", "1")
    assert result.returncode == 2
    assert named in result.stderr and "nothing was submitted" in result.stderr, result.stderr
    assert not run.exists()


def test_single_process_strategy_with_many_tasks_is_refused(pfm: Any, tmp_path: Path) -> None:
    result = pfm("launch", "slurm", "strategy=single", "--nodes", "2", "--gpus-per-node", "4")
    assert result.returncode == 2
    assert "strategy=single runs one process" in result.stderr and "8 tasks" in result.stderr


def test_without_sbatch_the_script_is_written_and_the_error_says_where(pfm: Any, tmp_path: Path) -> None:
    run = tmp_path / "run"
    bash = shutil.which("bash") or "/bin/bash"
    bare_path = str(Path(sys.executable).parent)  # python only: no sbatch on this PATH
    result = pfm(
        "launch", "slurm", "model=conv_vae", f"hydra.run.dir={run}", "--gpus-per-node", "0",
        env={"PATH": bare_path},
    )  # fmt: skip
    assert result.returncode == 1
    assert "sbatch" in result.stderr and "not on PATH" in result.stderr, result.stderr
    script = run / "slurm" / "job.sbatch"
    assert script.is_file() and os.access(script, os.X_OK)
    assert "devices: 1" in (run / "slurm" / "config.yaml").read_text()
    syntax = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr


def _forget_afterwards(monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    """Remove ``key`` now and restore its original state (absent or not) when the test ends.

    ``delenv(key, raising=False)`` records nothing for an absent key, so a value that Lightning writes
    during the test (SLURMEnvironment sets MASTER_ADDR) would leak into every later test's subprocesses.
    """
    monkeypatch.setenv(key, "set-by-test")
    monkeypatch.delenv(key)


def test_slurm_environment_of_a_2_node_x_4_task_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 5 of 8 (node 1, local rank 1): Lightning reads it all from SLURM's variables."""
    import lightning as L

    for key in list(os.environ):
        if key.startswith(("SLURM_", "MASTER_", "TORCHELASTIC_")) or key in (
            "WORLD_SIZE",
            "RANK",
            "LOCAL_RANK",
        ):
            monkeypatch.delenv(key)
    for key in ("MASTER_ADDR", "MASTER_PORT"):  # Lightning writes them: restore their absence afterwards
        _forget_afterwards(monkeypatch, key)
    monkeypatch.setenv("SLURM_JOB_ID", "4242137")
    monkeypatch.setenv("SLURM_JOB_NAME", "pfm-run")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4")
    monkeypatch.setenv("SLURM_NNODES", "2")
    monkeypatch.setenv("SLURM_NODELIST", "gpu[017-018]")
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_NODEID", "1")
    env = cluster_environment()
    assert env is not None and env.auto_requeue is False
    assert (env.global_rank(), env.local_rank(), env.node_rank(), env.world_size()) == (5, 1, 1, 8)
    assert env.main_address == "gpu017"
    assert env.main_port == 15000 + 2137
    env.validate_settings(num_devices=4, num_nodes=2)
    with pytest.raises(ValueError, match="ntasks-per-node=4"):
        env.validate_settings(num_devices=8, num_nodes=2)

    # the way pfm.train builds the trainer: strategy from build_strategy, the environment as a plugin.
    # Building it sets Lightning's process-global rank (5 here); restore it, or every later in-process
    # Trainer would think it is not rank 0 and its loggers would write nothing.
    from lightning.fabric.utilities.rank_zero import rank_zero_only as fabric_rank_zero_only
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    for holder in {
        id(rank_zero_only): rank_zero_only,
        id(fabric_rank_zero_only): fabric_rank_zero_only,
    }.values():
        monkeypatch.setattr(holder, "rank", getattr(holder, "rank", 0))
    setup = build_strategy("ddp", accelerator="cpu", devices=4, num_nodes=2)
    trainer = L.Trainer(plugins=[env], logger=False, enable_progress_bar=False, **setup.trainer_kwargs)
    assert trainer.strategy.cluster_environment is env
    assert (trainer.global_rank, trainer.local_rank, trainer.node_rank, trainer.world_size) == (5, 1, 1, 8)
    # interactive allocations (job name bash) are not SLURM-launched tasks
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")
    assert cluster_environment() is None


def test_outside_slurm_there_is_no_cluster_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("SLURM_"):
            monkeypatch.delenv(key)
    assert cluster_environment() is None


# --- the preemption callback ------------------------------------------------------------------------------
def test_signal_names() -> None:
    assert signal_number("SIGUSR1") == signal.SIGUSR1
    assert signal_number("usr1") == signal.SIGUSR1
    assert signal_number(15) == signal.SIGTERM
    with pytest.raises(ValueError, match="SIGKILL"):
        signal_number("SIGKILL")
    with pytest.raises(ValueError, match="'SIGNOPE'"):
        signal_number("SIGNOPE")
    with pytest.raises(ValueError, match="requeue_on"):
        Preemption(signals=["SIGTERM"], requeue_on=["SIGUSR1"])
    with pytest.raises(ValueError, match="max_requeues=-1"):
        Preemption(max_requeues=-1)


def test_requeue_limit_and_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for key in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(key, raising=False)
    record = tmp_path / "requeued"
    # the job id is appended to the command, as for scontrol; this one writes it down ($0 of sh -c)
    callback = Preemption(max_requeues=2, requeue_command=["sh", "-c", f'echo "$0" >> {record}'])
    with caplog.at_level(logging.INFO, logger="pfm.preemption"):
        assert callback.requeue() is False  # not a SLURM job
        assert "not a SLURM job" in caplog.text and not record.exists()
        monkeypatch.setenv("SLURM_JOB_ID", "77")
        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
        assert callback.requeue() is True
        assert record.read_text() == "77\n"
        monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
        caplog.clear()
        assert callback.requeue() is False
        assert "requeued 2 times already (preemption.max_requeues=2)" in caplog.text
        assert record.read_text() == "77\n", "no requeue at the limit"
        monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
        caplog.clear()
        assert Preemption(requeue_command=["false"]).requeue() is False
        assert "exited 1" in caplog.text


def test_preemption_config_composes_into_the_callback() -> None:
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train", overrides=["preemption.max_requeues=3", "preemption.requeue_on=[SIGUSR1,SIGTERM]"]
        )
    callback = instantiate(cfg.preemption)
    assert isinstance(callback, Preemption)
    assert callback.max_requeues == 3 and callback.requeue_on == [signal.SIGUSR1, signal.SIGTERM]


def test_sweep_launcher_config_composes() -> None:
    """``pfm-train -m hydra/launcher=slurm ...``: hydra-submitit-launcher with pfm's defaults."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "hydra/launcher=slurm",
                "hydra.launcher.gpus_per_node=8",
                "hydra.launcher.tasks_per_node=8",
            ],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == (8, 8, 1)
    assert launcher.max_num_timeout == 0, "requeueing is pfm's Preemption callback's job, not submitit's"
    assert launcher.signal_delay_s == 300
    assert str(launcher.submitit_folder).endswith("/.submitit/%j")
    # submitit's time-limit signal is SIGUSR2: the run's Preemption callback must act on it
    assert "SIGUSR2" in cfg.preemption.requeue_on


# --- the torchrun recipe (clusters without SLURM) ---------------------------------------------------------
TORCHRUN = REPO / "launch" / "torchrun" / "train.sh"


def _torchrun(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(TORCHRUN), *args],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("MASTER_")}, "DRY_RUN": "1", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_torchrun_recipe_dry_run_4_nodes_x_8_gpus() -> None:
    result = _torchrun(
        "experiment=tadpole_pretrain", "model=tadpole_b", "strategy=deepspeed_zero3", "hydra.run.dir=/shared/b",
        NNODES="4", NODE_RANK="2", MASTER_ADDR="node0", GPUS_PER_NODE="8",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    words = result.stdout.split()
    assert words[1:4] == ["-m", "torch.distributed.run", "--nnodes=4"]
    for word in [
        "--node-rank=2",
        "--nproc-per-node=8",
        "--master-addr=node0",
        "--master-port=29500",
        "pfm.train",
        "strategy.devices=8",
        "strategy.num_nodes=4",
        "strategy.accelerator=gpu",
        "resume=auto",
        "hydra.run.dir=/shared/b",
    ]:
        assert word in words, f"{word} not in {result.stdout}"


def test_torchrun_recipe_cpu_processes_and_mistakes() -> None:
    cpu = _torchrun("model=conv_vae", GPUS_PER_NODE="0", NPROC_PER_NODE="2")
    assert cpu.returncode == 0, cpu.stderr
    assert "strategy.devices=2" in cpu.stdout and "strategy.accelerator=cpu" in cpu.stdout
    assert "strategy.num_nodes=1" in cpu.stdout
    no_dir = _torchrun("model=conv_vae", NNODES="2", GPUS_PER_NODE="8")
    assert no_dir.returncode == 2 and "hydra.run.dir" in no_dir.stderr
    owned = _torchrun("strategy.devices=4", GPUS_PER_NODE="8")
    assert owned.returncode == 2 and "strategy.devices=4" in owned.stderr
    rank = _torchrun("hydra.run.dir=/x", NNODES="2", NODE_RANK="2", GPUS_PER_NODE="8")
    assert rank.returncode == 2 and "NODE_RANK=2" in rank.stderr
    resume = _torchrun("resume=null", GPUS_PER_NODE="1")
    assert "resume=null" in resume.stdout and "resume=auto" not in resume.stdout


def test_config_checks_run_before_submission(pfm: Any, tmp_path: Path) -> None:
    """pfm-train's own config checks (ranges, trainer.devices vs strategy.devices) run at submission too."""
    clash = pfm("launch", "slurm", "strategy=ddp", "trainer.devices=4", "--gpus-per-node", "8", "--dry-run")
    assert clash.returncode == 2
    assert "trainer.devices=4 and strategy.devices=8 disagree" in clash.stderr, clash.stderr
    fine = pfm("launch", "slurm", "model=conv_vae", "logger=csv", "--gpus-per-node", "0", "--dry-run")
    assert fine.returncode == 0, fine.stderr  # loggers' save_dir interpolates the run folder


def test_handlers_are_restored_only_where_still_ours() -> None:
    """Lightning restores its originals before callbacks' teardown; uninstall must not undo that."""
    before = signal.getsignal(signal.SIGUSR2)
    term_before = signal.getsignal(signal.SIGTERM)
    callback = Preemption(signals=["SIGUSR2", "SIGTERM"], requeue_on=["SIGUSR2"])
    try:
        callback.install()
        assert signal.getsignal(signal.SIGUSR2) == callback._handle
        os.kill(os.getpid(), signal.SIGUSR2)  # the handler only records it
        assert callback.received == [signal.SIGUSR2]
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as Lightning's own teardown does
        callback.uninstall()
        assert signal.getsignal(signal.SIGUSR2) == before
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, "someone else's later choice stands"
    finally:
        signal.signal(signal.SIGUSR2, before)
        signal.signal(signal.SIGTERM, term_before)


@pytest.mark.slow
def test_sigterm_outside_slurm_checkpoints_and_stops_without_requeue(tmp_path: Path) -> None:
    """A real pfm-train process: SIGTERM after the first checkpoint -> checkpoint at the next step, exit 0."""
    import time

    from pfm.checkpoints import read_checkpoint

    run = tmp_path / "run"
    steps = 500  # far more than it can reach before the signal lands
    cmd = [
        sys.executable,
        "-m",
        "pfm.train",
        "model=conv_vae",
        "data.n=16",
        "data.crop=16",
        "data.batch_size=2",
    ]
    cmd += ["data.num_trajectories=2", "data.num_val_batches=1", f"trainer.max_steps={steps}", "plots=false"]
    cmd += [
        "trainer.val_check_interval=100",
        "trainer.enable_progress_bar=false",
        "checkpoint_every_n_steps=2",
    ]
    cmd += ["logger=csv", f"hydra.run.dir={run}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env={**env, "WANDB_MODE": "offline"}, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 600
    while not (run / "checkpoints" / "step0000002.ckpt").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 600 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    log = (run / "train.log").read_text()
    assert "Preemption: SIGTERM received; stopping at step" in log, log[-3000:]
    assert "requeueing" not in log, "SIGTERM does not requeue by default"
    last = read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"]
    assert 2 <= last < steps
    assert f"stopping at step {last} " in log


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("/images/pfm.sif", "srun --kill-on-bad-exit=1 apptainer exec --nv --bind"),
        (
            "nvcr.io#nvidia/pytorch:24.05-py3",
            "srun --kill-on-bad-exit=1 --container-image='nvcr.io#nvidia/pytorch:24.05-py3'",  # quoted: '#'
        ),
    ],
)
def test_container_images(pfm: Any, tmp_path: Path, image: str, expected: str) -> None:
    result = pfm(
        "launch", "slurm", "model=conv_vae", "strategy=ddp", f"hydra.run.dir={tmp_path / 'r'}",
        "--gpus-per-node", "4", "--container", image, "--signal-seconds", "120", "--dry-run",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    srun = next(line for line in result.stdout.splitlines() if line.startswith("srun "))
    assert srun.startswith(expected), srun
    assert " python -m pfm.train " in srun, "inside the image: its own python"
    assert "#SBATCH --signal=USR1@120" in result.stdout.splitlines()
