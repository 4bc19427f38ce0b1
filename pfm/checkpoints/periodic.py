"""``PeriodicCheckpoint``: every N steps and every T minutes, the last k kept, each write atomic.

A checkpoint holds what an exact resume needs: model, optimizer, scheduler and loop state (Lightning), the
data-stream state of *every* rank (Lightning saves rank 0's only, so this callback gathers them and the
datamodule merges them), the RNG
states of every rank, and a description of the run (``pfm`` key) that resume checks for mismatches.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states

from pfm.checkpoints.files import list_checkpoints

__all__ = ["PeriodicCheckpoint"]

log = logging.getLogger("pfm.checkpoints")


def _gather(obj: Any, world_size: int) -> list[Any]:
    if world_size == 1 or not torch.distributed.is_initialized():
        return [obj]
    # serialise to bytes first: unpickling tensors inside all_gather_object breaks under DeepSpeed ZeRO-3
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    gathered: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(gathered, buffer.getvalue())
    return [torch.load(io.BytesIO(b), weights_only=False) for b in gathered]


def _rng_state() -> dict[str, Any]:
    # numpy's state holds an ndarray, which torch.load(weights_only=True) refuses; a tensor it accepts
    state = _collect_rng_states(include_cuda=torch.cuda.is_available())
    name, keys, *rest = state["numpy"]
    state["numpy"] = (name, torch.from_numpy(keys.copy()), *rest)
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    state = dict(state)
    name, keys, *rest = state["numpy"]
    state["numpy"] = (name, keys.numpy() if isinstance(keys, torch.Tensor) else keys, *rest)
    if not torch.cuda.is_available():
        state.pop("torch.cuda", None)
    _set_rng_states(state)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class PeriodicCheckpoint(L.Callback):
    """Saves ``dirpath/step{step:07d}.ckpt`` every ``every_n_steps`` steps and every ``every_n_minutes``.

    Writes go to ``<name>.tmp`` and are renamed once every rank has finished, so a killed run never leaves
    a checkpoint that looks whole but is not. ``last.ckpt`` points at the newest one (hard link for files,
    symbolic link for folders). Only the newest ``keep_last`` step checkpoints are kept (``None``: all).
    ``run_info`` (model and data config, ...) is stored under ``checkpoint["pfm"]``.
    """

    def __init__(
        self,
        dirpath: str | Path,
        every_n_steps: int | None = 100,
        every_n_minutes: float | None = None,
        keep_last: int | None = 3,
        save_at_end: bool = True,
        run_info: dict[str, Any] | None = None,
    ) -> None:
        if keep_last is not None and keep_last < 1:
            raise ValueError(f"keep_last={keep_last} must be >= 1, or None to keep every checkpoint.")
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps
        self.every_n_minutes = every_n_minutes
        self.keep_last = keep_last
        self.save_at_end = save_at_end
        self.run_info = dict(run_info or {})
        self._last_time = time.monotonic()
        self._last_saved_step = -1
        self._pending_rng: list[dict[str, Any]] | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Restore RNG states on resume, just before the first step."""
        self._restore_rng(trainer)

    # --- saving -------------------------------------------------------------------------------------------
    def _due(self, trainer: L.Trainer) -> bool:
        step = trainer.global_step
        if step == self._last_saved_step or step == 0:
            return False
        if self.every_n_steps and step % self.every_n_steps == 0:
            return True
        if self.every_n_minutes is not None:
            # every rank must agree, or the collective save would hang: rank 0's clock decides
            elapsed = (time.monotonic() - self._last_time) / 60.0
            return bool(trainer.strategy.broadcast(elapsed >= self.every_n_minutes))
        return False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        """Save when the step count or the clock says so."""
        if self._due(trainer):
            self.save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save the final state unless the last step was just saved."""
        if self.save_at_end and trainer.global_step != self._last_saved_step:
            self.save(trainer)

    def save(self, trainer: L.Trainer) -> Path:
        """Write the checkpoint of the current step atomically, update ``last.ckpt``, prune old ones."""
        step = trainer.global_step
        final = self.dirpath / f"step{step:07d}.ckpt"
        tmp = final.with_name(final.name + ".tmp")
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            _remove(tmp)
        trainer.strategy.barrier("pfm_checkpoint_start")
        trainer.save_checkpoint(tmp)
        trainer.strategy.barrier("pfm_checkpoint_written")
        if trainer.is_global_zero:
            _remove(final)
            os.replace(tmp, final)
            self._point_last(final)
            self._prune()
        trainer.strategy.barrier("pfm_checkpoint_done")
        self._last_time = time.monotonic()
        self._last_saved_step = step
        return final

    def _point_last(self, target: Path) -> None:
        last = self.dirpath / "last.ckpt"
        tmp = self.dirpath / "last.ckpt.tmp"
        _remove(tmp)
        if target.is_dir():
            tmp.symlink_to(target.name, target_is_directory=True)
        else:
            os.link(target, tmp)
        if last.is_dir() and not last.is_symlink():
            shutil.rmtree(last)
        os.replace(tmp, last)

    def _prune(self) -> None:
        if self.keep_last is None:
            return
        for old in list_checkpoints(self.dirpath)[: -self.keep_last]:
            _remove(old)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Add every rank's RNG and data-stream state, and the run description.

        The data-stream state is the datamodule's own ``state_dict()``, which must describe the stream just
        after the last trained batch (see :mod:`pfm.data.stream_state`). Every rank's is gathered and the
        datamodule's ``merge_process_states`` makes the checkpoint's one state of them (this callback does
        not know its layout); a datamodule without it keeps Lightning's (rank 0's).
        """
        world = trainer.world_size
        rng = _gather(_rng_state(), world)
        checkpoint["pfm_rng_states"] = rng
        datamodule = trainer.datamodule
        merge = getattr(datamodule, "merge_process_states", None)
        if datamodule is not None and callable(merge):
            checkpoint[type(datamodule).__qualname__] = merge(_gather(datamodule.state_dict(), world))
        metrics = {
            k: float(v) for k, v in trainer.callback_metrics.items() if torch.as_tensor(v).numel() == 1
        }
        checkpoint["pfm"] = {
            **self.run_info,
            "world_size": world,
            "global_step": trainer.global_step,
            "metrics": metrics,
        }

    # --- restoring ----------------------------------------------------------------------------------------
    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Keep the saved RNG states; they are applied just before the first resumed step."""
        self._pending_rng = checkpoint.get("pfm_rng_states")
        step = checkpoint.get("global_step")
        if step is not None:
            self._last_saved_step = int(step)

    def _restore_rng(self, trainer: L.Trainer) -> None:
        """Restore this rank's RNG state as it was when the checkpoint was taken."""
        if not self._pending_rng:
            return
        states = self._pending_rng
        self._pending_rng = None
        if len(states) != trainer.world_size:
            log.warning(
                "The checkpoint holds RNG states for %d processes, this run has %d; RNG streams restart "
                "from the seed, so the resumed run will not match an uninterrupted one bit for bit.",
                len(states),
                trainer.world_size,
            )
            return
        _set_rng_state(states[trainer.global_rank])

    def state_dict(self) -> dict[str, Any]:
        """The step of the last save (so a resumed run does not save the same step again)."""
        return {"last_saved_step": self._last_saved_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the step of the last save."""
        self._last_saved_step = int(state_dict.get("last_saved_step", -1))
