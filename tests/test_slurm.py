"""``pfm launch slurm`` against a real one-node SLURM cluster (slurmctld + slurmd + munged on this machine).

.ci/run starts the cluster with launch/slurm/ci/start.sh; without it, this module starts one itself when it
can (root, slurm-wlm installed) and stops it at the end. The tests skip, naming the reason, only when no
cluster can be reached or started; with PFM_REQUIRE_SLURM=1 (set by .ci/run) that is a failure instead.

Jobs are tiny CPU runs (conv_vae, 16^3 crops, gloo). A requeued job waits ``cred_expire`` seconds before SLURM
starts it again; the CI cluster sets that to 10 s (launch/slurm/ci/slurm.conf.in) instead of the default 120.
The tests never force an earlier start: ``scontrol update StartTime=now`` races the node's clean-up of the
previous run, and SLURM then kills the restart as "non-startable: Job credential revoked" (seen in CI).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import resume_run

from pfm.checkpoints import read_checkpoint

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
CI = REPO / "launch" / "slurm" / "ci"
STATE = Path(os.environ.get("PFM_SLURM_DIR", "/tmp/pfm-slurm"))
STEPS = 12
RUN = resume_run(STEPS, keep_last=None)
DDP = ["strategy=ddp", "data.num_pools=2"]


def _env(slurm_conf: str | None = None) -> dict[str, str]:
    """This process's environment without SLURM job variables; ``slurm_conf`` overrides SLURM_CONF."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
    if slurm_conf is not None:
        env["SLURM_CONF"] = slurm_conf
    return {**env, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1"}


def _sinfo_ok(env: dict[str, str], wait: float = 0) -> bool:
    """True once the node is up (idle, mixed or allocated), trying for ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            out = subprocess.run(
                ["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=20
            )
        except (OSError, subprocess.TimeoutExpired):
            out = None
        states = out.stdout.split() if out is not None and out.returncode == 0 else []
        if any(s.startswith(("idle", "mix", "alloc")) for s in states):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(1)


@pytest.fixture(scope="module")
def slurm() -> dict[str, str]:
    """An environment whose SLURM_CONF reaches a running cluster (started here if needed and possible)."""
    reason = None
    started = False
    # .ci/run exports SLURM_CONF; otherwise a cluster this module started before (or starts now) is used.
    # Kept in the environment handed to the tests, never set in os.environ (later tests would inherit it).
    conf = os.environ.get("SLURM_CONF")
    if shutil.which("sbatch") is None or shutil.which("slurmctld") is None:
        reason = "slurm-wlm is not installed (.ci/run installs it; or apt-get install slurm-wlm munge)"
    else:
        if conf is None and (STATE / "slurm.conf").exists():
            conf = str(STATE / "slurm.conf")
        if not _sinfo_ok(_env(conf)):
            if os.geteuid() != 0:
                reason = "no SLURM cluster answers and starting one needs root (launch/slurm/ci/start.sh)"
            else:
                result = subprocess.run(
                    [str(CI / "start.sh"), str(STATE)],
                    env={**os.environ, "PFM_SLURM_INSTALL": "0"},
                    capture_output=True,
                    text=True,
                    timeout=180,
                )
                conf = str(STATE / "slurm.conf")
                started = result.returncode == 0
                if not started or not _sinfo_ok(_env(conf), wait=30):
                    reason = (
                        f"launch/slurm/ci/start.sh could not start the cluster (exit {result.returncode}):\n"
                        f"{(result.stdout + result.stderr)[-2000:]}"
                    )
    if reason is not None:
        if os.environ.get("PFM_REQUIRE_SLURM") == "1":
            pytest.fail(f"PFM_REQUIRE_SLURM=1 but the SLURM tests cannot run: {reason}")
        pytest.skip(reason)
    yield _env(conf)
    if started:
        subprocess.run([str(CI / "stop.sh"), str(STATE)], timeout=60)


def _launch(env: dict[str, str], run_dir: Path, *args: str, tasks: int = 1) -> str:
    cmd = [sys.executable, "-m", "pfm.cli", "launch", "slurm", *RUN, *args, f"hydra.run.dir={run_dir}"]
    cmd += ["--gpus-per-node", "0", "--tasks-per-node", str(tasks), "--job-name", f"pfm-test-{run_dir.name}"]
    result = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    match = re.search(r"Submitted job (\d+)", result.stdout)
    assert match, result.stdout
    return match.group(1)


def _job(env: dict[str, str], job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "-o", "show", "job", job], env=env, capture_output=True, text=True)
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout))


def _wait(env: dict[str, str], job: str, timeout: float = 600) -> dict[str, str]:
    """Wait for ``job`` to finish, through its requeues (each waits ``cred_expire``, see module docstring)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = _job(env, job)
        state = info.get("JobState", "")
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            # A requeued job passes through a terminal state (its killed steps make it FAILED for a moment)
            # before SLURM shows it REQUEUED/PENDING: believe a terminal state only once it has lasted.
            time.sleep(3)
            again = _job(env, job)
            if again.get("JobState") == state and again.get("Restarts") == info.get("Restarts"):
                return again
            continue
        time.sleep(0.5)
    subprocess.run(["scancel", job], env=env, check=False)
    pytest.fail(f"job {job} did not finish in {timeout} s: {_job(env, job)}")


def _log(run_dir: Path, job: str) -> str:
    return (run_dir / "slurm" / f"{job}.out").read_text()


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == STEPS
    return checkpoint["state_dict"]


def _reference(out: Path, *args: str) -> dict[str, torch.Tensor]:
    """The same run without SLURM (pfm-train directly; Lightning launches the second rank itself)."""
    cmd = [sys.executable, "-m", "pfm.train", *RUN, *args, f"hydra.run.dir={out}"]
    # one thread per process, as in the jobs (1 CPU per task): thread counts change float reduction order
    env = {**_env(), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return _weights(out)


@pytest.fixture(scope="module")
def reference_1(tmp_path_factory: pytest.TempPathFactory, slurm: dict[str, str]) -> dict[str, torch.Tensor]:
    """One process, no SLURM, never interrupted."""
    return _reference(tmp_path_factory.mktemp("ref1"))


@pytest.fixture(scope="module")
def reference_2(tmp_path_factory: pytest.TempPathFactory, slurm: dict[str, str]) -> dict[str, torch.Tensor]:
    """Two DDP processes (gloo), no SLURM, never interrupted."""
    return _reference(tmp_path_factory.mktemp("ref2"), *DDP, "strategy.devices=2")


def test_bad_config_fails_at_submission(slurm: dict[str, str], tmp_path: Path) -> None:
    before = subprocess.run(["squeue", "-h", "-o", "%i"], env=slurm, capture_output=True, text=True).stdout
    cmd = [sys.executable, "-m", "pfm.cli", "launch", "slurm", *RUN, "model.no_such_key=3"]
    cmd += [f"hydra.run.dir={tmp_path / 'run'}", "--gpus-per-node", "0"]
    result = subprocess.run(cmd, env=slurm, cwd=REPO, capture_output=True, text=True, timeout=300)
    after = subprocess.run(["squeue", "-h", "-o", "%i"], env=slurm, capture_output=True, text=True).stdout
    assert result.returncode == 2
    assert "no_such_key" in result.stderr and "nothing was submitted" in result.stderr
    assert "Submitted job" not in result.stdout and after == before, "no job was queued"
    assert not (tmp_path / "run").exists()


def test_two_tasks_train_to_the_end_like_a_run_without_slurm(
    slurm: dict[str, str], reference_2: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    run_dir = tmp_path / "two"
    job = _launch(slurm, run_dir, *DDP, tasks=2)
    info = _wait(slurm, job)
    log = _log(run_dir, job)
    assert info["JobState"] == "COMPLETED", log[-4000:]
    assert "Starting with 2 processes" in log or "world_size=2" in log or "2 processes" in log, log[-3000:]
    assert (run_dir / "slurm" / "job.sbatch").is_file() and (run_dir / "slurm" / "config.yaml").is_file()
    weights = _weights(run_dir)
    assert weights.keys() == reference_2.keys()
    for name, value in reference_2.items():
        assert torch.equal(weights[name], value), f"{name} differs between the SLURM job and the local run"


def _preempt(env: dict[str, str], run_dir: Path, *args: str, tasks: int) -> tuple[str, list[str]]:
    """Launch, send SIGUSR1 to the job's steps after the step-3 checkpoint, wait for requeue and resume."""
    job = _launch(env, run_dir, *args, tasks=tasks)
    first = run_dir / "checkpoints" / "step0000003.ckpt"
    deadline = time.monotonic() + 600
    while not first.exists() and time.monotonic() < deadline:
        assert _job(env, job).get("JobState") in ("PENDING", "RUNNING"), _log(run_dir, job)[-3000:]
        time.sleep(0.05)
    # without --batch/--full: the job's steps (the training processes) get it, as with --signal=USR1@T
    sent = time.time()
    subprocess.run(["scancel", "--signal=USR1", job], env=env, check=True)
    info = _wait(env, job)
    log = _log(run_dir, job)
    timeline = [f"{_iso(sent)} test: scancel --signal=USR1 {job}"]
    timeline += [
        line
        for line in log.splitlines()
        if line.startswith("pfm: job")
        or "Preemption:" in line
        or "Resuming from" in line
        or "Run folder" in line
    ]
    return job, [*timeline, f"final state {info['JobState']}, restarts {info.get('Restarts')}"]


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def _check_requeued(run_dir: Path, job: str, timeline: list[str]) -> int:
    log = _log(run_dir, job)
    text = "\n".join(timeline)
    print(f"\nrequeue timeline of job {job}:\n" + text)
    (run_dir / "timeline.txt").write_text(text + "\n")
    match = re.search(r"Preemption: SIGUSR1 received; stopping at step (\d+)", log)
    assert match, log[-4000:]
    stopped = int(match.group(1))
    assert 3 <= stopped < STEPS, f"stopped at step {stopped}; the signal came too late to test a resume"
    assert (run_dir / "checkpoints" / f"step{stopped:07d}.ckpt").exists()
    assert "Preemption: requeueing job" in log and "restart 1" in log, log[-4000:]
    assert f"Resuming from {run_dir}/checkpoints/step{stopped:07d}.ckpt" in log, log[-4000:]
    assert "`Trainer.fit` stopped: `max_steps=12` reached." in log
    return stopped


def test_usr1_checkpoints_requeues_resumes_bitwise_one_task(
    slurm: dict[str, str], reference_1: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    run_dir = tmp_path / "one"
    job, timeline = _preempt(slurm, run_dir, tasks=1)
    assert "COMPLETED" in timeline[-1] and "restarts 1" in timeline[-1], "\n".join(timeline)
    stopped = _check_requeued(run_dir, job, timeline)
    weights = _weights(run_dir)
    for name, value in reference_1.items():
        assert torch.equal(weights[name], value), f"{name} differs after USR1 at step {stopped} and requeue"


def test_usr1_checkpoints_requeues_resumes_two_tasks(
    slurm: dict[str, str], reference_2: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    run_dir = tmp_path / "two_preempted"
    job, timeline = _preempt(slurm, run_dir, *DDP, tasks=2)
    assert "COMPLETED" in timeline[-1] and "restarts 1" in timeline[-1], "\n".join(timeline)
    stopped = _check_requeued(run_dir, job, timeline)
    weights = _weights(run_dir)
    for name, value in reference_2.items():
        # the tolerance of test_resume's 2-process test (gloo reduction order)
        torch.testing.assert_close(
            weights[name], value, rtol=1e-5, atol=1e-6, msg=f"{name}: USR1 at step {stopped}"
        )


def test_submitit_sweep_runs_one_job_per_point(slurm: dict[str, str], tmp_path: Path) -> None:
    """``pfm-train -m hydra/launcher=slurm ...``: two points, two array tasks, two finished runs."""
    sweep = tmp_path / "sweep"
    tiny = [a for a in RUN if not a.startswith(("trainer.max_steps", "checkpoint_every"))]
    cmd = [sys.executable, "-m", "pfm.train", "-m", "hydra/launcher=slurm", *tiny, "trainer.max_steps=2"]
    cmd += [
        "checkpoint_every_n_steps=2",
        "strategy.accelerator=cpu",
        "resume=auto",
        "task.optimizer.lr=1e-3,3e-4",
    ]
    cmd += [f"hydra.sweep.dir={sweep}", "hydra.launcher.gpus_per_node=0", "hydra.launcher.timeout_min=10"]
    result = subprocess.run(cmd, env=slurm, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    jobs = sorted(p.name for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+_\d", p.name))
    assert len(jobs) == 2, jobs
    for point, lr in (("0", "0.001"), ("1", "0.0003")):
        assert f"task.optimizer.lr={lr}" in (sweep / point / ".hydra" / "overrides.yaml").read_text()
        assert read_checkpoint(sweep / point / "checkpoints" / "last.ckpt")["global_step"] == 2
