"""The cluster environment of a run: Lightning's ``SLURMEnvironment`` inside SLURM tasks, its own default otherwise.

Inside a task started by ``srun``, Lightning reads the ranks (``SLURM_PROCID``, ``SLURM_LOCALID``,
``SLURM_NODEID``), the world size (``SLURM_NTASKS``), the master address (first host of ``SLURM_NODELIST``)
and the master port (15000 + the last four digits of ``SLURM_JOB_ID``, or ``MASTER_PORT``); pfm parses none of
them. Lightning would detect SLURM on its own; pfm builds the environment itself only to switch off
Lightning's auto-requeue, because :class:`pfm.callbacks.preemption.Preemption` does that job (see there why).
"""

from __future__ import annotations

from lightning.fabric.plugins.environments import SLURMEnvironment

__all__ = ["cluster_environment", "in_slurm_task"]


def in_slurm_task() -> bool:
    """True inside a task that ``srun`` (or a SLURM batch script) started, unless the job is interactive."""
    return SLURMEnvironment.detect()


def cluster_environment() -> SLURMEnvironment | None:
    """``SLURMEnvironment(auto_requeue=False)`` inside SLURM tasks, else None (Lightning picks the default)."""
    return SLURMEnvironment(auto_requeue=False) if in_slurm_task() else None
