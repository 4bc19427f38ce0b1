"""``Preemption``: on SIGUSR1 or SIGTERM, checkpoint at the next step boundary, stop, and requeue the SLURM job.

SLURM sends SIGUSR1 some time before a job's limit when the job asked for it (``--signal=USR1@300``, as
``pfm launch slurm`` does; submitit, behind ``hydra/launcher=slurm``, asks for SIGUSR2), and SIGTERM when it
preempts or cancels a job. The signal handler only records the signal (nothing else is safe
inside a handler: a collective or a checkpoint there would run on one rank at an arbitrary point). At the end
of every training step all ranks combine their flags with one all-reduce, so they agree on the step at which
they stop even when the signal reached only some of them. That step is checkpointed with the run's
:class:`~pfm.checkpoints.PeriodicCheckpoint` (model, optimizer, RNG and data-stream state: an exact resume
point), training stops, and after the fit rank 0 runs ``scontrol requeue $SLURM_JOB_ID``. The requeued job
starts the same script again, and ``resume=auto`` picks the checkpoint up.

Lightning has its own SLURM auto-requeue on SIGUSR1; it is switched off
(:func:`pfm.distributed.cluster.cluster_environment`), because its handler saves a checkpoint inside the
signal handler, mid-step and on each rank on its own, and writes it where ``resume=auto`` does not look.

Only SIGUSR1 and SIGUSR2 requeue by default: ``scancel`` sends SIGTERM too, and a cancelled job must stay cancelled;
preemption in SLURM's ``PreemptMode=REQUEUE`` requeues the job by itself. Requeues stop once
``SLURM_RESTART_COUNT`` reaches ``max_requeues``, so a job that keeps being signalled is not requeued forever.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import Any

import lightning as L

from pfm.checkpoints import PeriodicCheckpoint

__all__ = ["Preemption", "signal_number"]

log = logging.getLogger("pfm.preemption")


def signal_number(name: str | int) -> signal.Signals:
    """``"SIGUSR1"``, ``"USR1"`` or ``10`` -> ``signal.SIGUSR1``; a clear error for anything else."""
    if isinstance(name, int):
        return signal.Signals(name)
    key = str(name).upper()
    key = key if key.startswith("SIG") else f"SIG{key}"
    if key not in signal.Signals.__members__ or key in ("SIGKILL", "SIGSTOP"):
        raise ValueError(
            f"preemption signal {name!r} is not a signal that can be handled; expected names such as "
            "SIGUSR1, SIGUSR2, SIGTERM (SIGKILL and SIGSTOP cannot be caught)."
        )
    return signal.Signals[key]


def _timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"


class Preemption(L.Callback):
    """Checkpoint at the next step boundary after one of ``signals``, stop, and requeue after ``requeue_on``.

    Put it after the run's ``PeriodicCheckpoint`` in the callback list (it saves through that callback, so
    the checkpoint holds the same state as a periodic one). ``requeue_command`` is run with the job id
    appended, on rank 0, after the fit; only inside a SLURM batch job and while ``SLURM_RESTART_COUNT`` is
    below ``max_requeues``.
    """

    def __init__(
        self,
        signals: Sequence[str | int] = ("SIGUSR1", "SIGUSR2", "SIGTERM"),
        requeue_on: Sequence[str | int] = ("SIGUSR1", "SIGUSR2"),
        max_requeues: int = 10,
        requeue_command: Sequence[str] = ("scontrol", "requeue"),
    ) -> None:
        if max_requeues < 0:
            raise ValueError(f"preemption.max_requeues={max_requeues} must be >= 0 (0: never requeue).")
        self.signals = [signal_number(s) for s in signals]
        self.requeue_on = [signal_number(s) for s in requeue_on]
        missing = [s.name for s in self.requeue_on if s not in self.signals]
        if missing:
            raise ValueError(
                f"preemption.requeue_on has {missing}, which preemption.signals does not handle; "
                f"add them to preemption.signals={[s.name for s in self.signals]}."
            )
        self.max_requeues = max_requeues
        self.requeue_command = list(requeue_command)
        self.received: list[signal.Signals] = []
        self.stopped_at_step: int | None = None
        self.requeue_requested = False
        self.requeued = False
        self._previous: dict[signal.Signals, Any] = {}

    # --- signal handling ------------------------------------------------------------------------------------
    def _handle(self, signum: int, frame: Any) -> None:
        # record only: the step loop acts on it at the next boundary, on every rank at the same step
        self.received.append(signal.Signals(signum))

    def install(self) -> None:
        """Install the handlers (main thread only; Python allows signal handlers nowhere else)."""
        if threading.current_thread() is not threading.main_thread():
            log.warning("Preemption: not on the main thread; signals will not be handled.")
            return
        for sig in self.signals:
            if sig not in self._previous:
                self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        """Restore the handlers that were there before :meth:`install`, where ours is still installed.

        Lightning's teardown restores its own originals before callbacks' ``teardown`` runs; putting its
        SIGTERM handler back after that would leave it active after the fit, and it runs a collective
        (``dist.broadcast``), which hangs a rank that gets the requeue's SIGTERM until SLURM kills it.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, previous in self._previous.items():
            if signal.getsignal(sig) == self._handle:
                signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Install the handlers; Lightning installs its own SIGTERM handler just before, and this replaces it."""
        self.received = []
        self.install()

    # --- at each step boundary ------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        """All ranks agree whether any got a signal; if so, checkpoint this step and stop."""
        strategy = trainer.strategy
        if not strategy.reduce_boolean_decision(bool(self.received), all=False):
            return
        requeue = strategy.reduce_boolean_decision(
            any(s in self.requeue_on for s in self.received), all=False
        )
        names = ",".join(sorted({s.name for s in self.received})) or "a signal on another rank"
        step = trainer.global_step
        if trainer.is_global_zero:
            log.info("Preemption: %s received; stopping at step %d (%s)", names, step, _timestamp())
        periodic = next((c for c in trainer.callbacks if isinstance(c, PeriodicCheckpoint)), None)
        if periodic is None:
            log.warning("Preemption: the run has no PeriodicCheckpoint; stopping without a checkpoint.")
        elif periodic._last_saved_step != step:
            path = periodic.save(trainer)
            if trainer.is_global_zero:
                log.info("Preemption: checkpoint %s written (%s)", path, _timestamp())
        self.stopped_at_step = step
        self.requeue_requested = requeue
        trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Requeue (rank 0) once the checkpoint is complete on every rank."""
        if self.stopped_at_step is not None and self.requeue_requested:
            trainer.strategy.barrier("pfm_preemption_requeue")
            if trainer.is_global_zero:
                self.requeued = self.requeue()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Give the signals back to their previous handlers."""
        self.uninstall()

    def requeue(self) -> bool:
        """Run ``scontrol requeue <job>`` if this is a SLURM batch job below the requeue limit; True if done."""
        job = os.environ.get("SLURM_ARRAY_JOB_ID")
        job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job else os.environ.get("SLURM_JOB_ID")
        if not job:
            log.info("Preemption: not a SLURM job; the checkpoint is written, resume with resume=auto.")
            return False
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        if restarts >= self.max_requeues:
            log.error(
                "Preemption: job %s was requeued %d times already (preemption.max_requeues=%d); not "
                "requeueing again. The checkpoint is written: submit the run's slurm/job.sbatch again, or "
                "raise preemption.max_requeues.",
                job,
                restarts,
                self.max_requeues,
            )
            return False
        cmd = [*self.requeue_command, job]
        log.info("Preemption: requeueing job %s, restart %d (%s): %s", job, restarts + 1, _timestamp(), cmd)
        # the scheduler ends this job as soon as the requeue is accepted, so this is the last thing done
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as err:
            log.error("Preemption: %s failed (%s); resubmit the run's slurm/job.sbatch by hand.", cmd, err)
            return False
        if result.returncode != 0:
            log.error(
                "Preemption: %s exited %d: %s; resubmit the run's slurm/job.sbatch by hand.",
                cmd,
                result.returncode,
                result.stderr.strip(),
            )
            return False
        return True
