"""A training stream whose state matches the last *trained* batch, whoever made batches ahead of it.

Lightning's fetcher takes one batch ahead of the one it trains, a prefetch thread makes one more, and a
DataLoader's workers may read further. A checkpoint taken after step k must nevertheless hold the stream's
state just after batch k, or a resumed run skips batches. :class:`TrainedBatchStream` keeps the stream's
*position* before every batch it makes until that batch is trained: a batch counts as trained when the
Trainer takes it for a training step (``on_before_batch_transfer``; validation batches do not count) or,
without a Trainer, when the stream yields it. A new iterator restarts just after the last trained batch.

A DataModule mixes it in and says what a position is:

- ``_capture_position()``: the stream's position now, before the next batch is made (cheap: a step count,
  or device copies of pool states);
- ``_restore_position(position)``: put the stream back there;
- ``_produce()``: make the next batch, advancing the stream (``StopIteration`` at the end of an epoch).

Every process keeps its own position; the periodic checkpoint gathers every process's ``state_dict()`` and
hands the list (in rank order) to :meth:`TrainedBatchStream.merge_process_states`, which makes the one state
the checkpoint keeps: rank 0's by default (a position every process shares), every process's pools for
:class:`PoolStream` (:func:`merge_pool_states`).

:class:`PoolStream` does this for modules whose stream lives in ``self.pools`` (``datagen`` pools with
``pool_index``, ``snapshot()`` and ``load_state_dict()``), with checkpoint state ``{"pools": {pool_index: state}}``.

Public names: ``TrainedBatchStream``, ``PoolStream``, ``StreamDataset``, ``merge_pool_states``, ``to_cpu``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

from pfm.data.layout import PoolLayout, pool_layout

__all__ = ["PoolStream", "StreamDataset", "TrainedBatchStream", "merge_pool_states", "to_cpu"]


class StreamDataset(IterableDataset):
    """The endless training stream of a :class:`TrainedBatchStream` module (``module.stream()``)."""

    def __init__(self, module: TrainedBatchStream) -> None:
        self.module = module

    def __iter__(self) -> Iterator[Any]:
        return self.module.stream()


class TrainedBatchStream:
    """Mixin for a LightningDataModule: batches made vs trained, and the position after the last trained one."""

    trainer: Any

    # --- what a subclass provides -------------------------------------------------------------------------
    def _capture_position(self) -> Any:
        raise NotImplementedError

    def _restore_position(self, position: Any) -> None:
        raise NotImplementedError

    def _produce(self) -> Any:
        raise NotImplementedError

    # --- the bookkeeping ----------------------------------------------------------------------------------
    def _stream_counts(self) -> tuple[dict[int, Any], int, int]:
        # created on first use, so that the mixin needs no __init__ of its own
        if not hasattr(self, "_positions"):
            self._positions: dict[int, Any] = {}
            self._num_made = 0
            self._num_trained = 0
        return self._positions, self._num_made, self._num_trained

    def _record(self) -> None:
        """Keep the position before the batch about to be made."""
        positions, made, _ = self._stream_counts()
        positions[made] = self._capture_position()
        self._num_made = made + 1

    def mark_trained(self) -> None:
        """Count the oldest batch made and not yet trained as trained."""
        positions, made, trained = self._stream_counts()
        self._num_trained = min(trained + 1, made)
        for index in [i for i in positions if i < self._num_trained]:
            del positions[index]

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """A training batch counts as trained when the Trainer takes it for a step (validation ones do not)."""
        trainer = self.trainer
        if trainer is not None and trainer.training:
            self.mark_trained()
        return batch

    def _forget_positions(self) -> None:
        """Start counting afresh (after a restore): nothing made ahead."""
        self._positions, self._num_made, self._num_trained = {}, 0, 0

    def _trained_position_or_none(self) -> Any:
        positions, made, trained = self._stream_counts()
        return positions[trained] if made > trained else None

    def trained_position(self) -> Any:
        """The stream's position just after the last trained batch (batches made ahead do not count)."""
        position = self._trained_position_or_none()
        return self._capture_position() if position is None else position

    def rewind(self) -> None:
        """Put the stream back just after the last trained batch, dropping batches made ahead."""
        position = self._trained_position_or_none()
        self._forget_positions()
        if position is not None:
            self._restore_position(position)

    # --- making batches -----------------------------------------------------------------------------------
    def make_batch(self) -> Any:
        """The next batch; it counts as trained only once :meth:`mark_trained` is called for it.

        When ``_produce`` raises (``StopIteration`` at the end of an epoch), no batch counts as made.
        """
        self._record()
        try:
            return self._produce()
        except BaseException:
            self._num_made -= 1
            del self._positions[self._num_made]
            raise

    def next_batch(self) -> Any:
        """The batch after the last trained one, counted as trained at once (for use without a Trainer)."""
        self.rewind()
        batch = self.make_batch()
        self.mark_trained()
        return batch

    def stream(self) -> Iterator[Any]:
        """The endless training stream, restarting just after the last trained batch."""
        self.rewind()
        while True:
            batch = self.make_batch()
            if self.trainer is None:
                self.mark_trained()
            yield batch

    def train_dataloader(self) -> DataLoader:
        """An endless loader of :meth:`stream`; batches are produced in this process (on the training device)."""
        return DataLoader(StreamDataset(self), batch_size=None, num_workers=0)

    # --- the checkpoint's state ---------------------------------------------------------------------------
    def merge_process_states(self, states: list[Any]) -> Any:
        """The checkpoint's data state from every process's ``state_dict()`` (rank order): rank 0's.

        A module whose processes hold different parts of the state (their own pools) merges them instead.
        """
        return states[0]


class PoolStream(TrainedBatchStream):
    """A :class:`TrainedBatchStream` over ``self.pools``; positions are device snapshots of every local pool.

    On a GPU with a generation stream (``_cuda_stream``), snapshots are taken on that stream and a position
    carries an event to wait for before it is read. Checkpoint state: ``{"pools": {pool_index: pool state on
    the CPU}}``; :meth:`load_state_dict` before :meth:`setup` is kept until the pools exist (call
    :meth:`_load_pending_state` at the end of ``setup``).
    """

    pools: list[Any]
    batch_size: int
    num_pools: int | None
    _cuda_stream: Any = None
    _pending_state: dict[str, Any] | None = None

    def _layout(self) -> PoolLayout:
        """This process's pools of the global ``batch_size`` (see :mod:`pfm.data.layout`)."""
        return pool_layout(self.trainer, batch_size=self.batch_size, num_pools=self.num_pools)

    def _device_and_layout(self) -> tuple[torch.device, PoolLayout]:
        """The training device and this process's pools; sets ``samples_per_pool`` (start of ``setup``)."""
        trainer = self.trainer
        device = torch.device(trainer.strategy.root_device if trainer is not None else "cpu")
        layout = self._layout()
        self.samples_per_pool = layout.samples_per_pool
        return device, layout

    def _generation_context(self) -> contextlib.AbstractContextManager:
        """Device and stream on which the pools are generated (nothing on the CPU)."""
        if self._cuda_stream is None:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        stack.enter_context(torch.cuda.device(self._cuda_stream.device))
        stack.enter_context(torch.cuda.stream(self._cuda_stream))
        return stack

    def _capture_position(self) -> tuple[list[dict[str, Any]], Any]:
        with self._generation_context():
            snapshots = [pool.snapshot() for pool in self.pools]
            event = None
            if self._cuda_stream is not None:
                event = torch.cuda.Event()
                event.record(self._cuda_stream)
        return snapshots, event

    def _restore_position(self, position: tuple[list[dict[str, Any]], Any]) -> None:
        snapshots, event = position
        if event is not None:
            event.synchronize()
        with self._generation_context():
            for pool, snapshot in zip(self.pools, snapshots, strict=True):
                pool.load_state_dict(snapshot)

    def state_dict(self) -> dict[str, Any]:
        """Every local pool's state just after the last trained batch, on the CPU.

        Batches made ahead (by the Trainer's fetcher or a prefetch thread) do not count, so a run restored
        from this state draws exactly the batch this one would train on next.
        """
        snapshots, event = self.trained_position()
        if event is not None:
            event.synchronize()
        return {"pools": {pool.pool_index: to_cpu(s) for pool, s in zip(self.pools, snapshots, strict=True)}}

    def merge_process_states(self, states: list[dict[str, Any]]) -> dict[str, Any]:
        """Every process's pools in one state (see :func:`merge_pool_states`)."""
        return merge_pool_states(states)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore pool states (deferred until ``setup`` has built the pools)."""
        if self.pools:
            self._restore_pools(state_dict)
        else:
            self._pending_state = state_dict

    def _load_pending_state(self) -> None:
        if self._pending_state is not None:
            self._restore_pools(self._pending_state)
            self._pending_state = None

    def _restore_pools(self, state: dict[str, Any]) -> None:
        self._forget_positions()
        saved = state["pools"]
        for pool in self.pools:
            if pool.pool_index not in saved:
                raise ValueError(
                    f"The checkpoint has no data state for pool {pool.pool_index} (it holds {sorted(saved)}); "
                    "resume with the same data.num_pools."
                )
        with self._generation_context():
            for pool in self.pools:
                pool.load_state_dict(saved[pool.pool_index])


def merge_pool_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """Rank 0's state with the ``pools`` of every process (each holds its own pools) merged into one dict."""
    return {**states[0], "pools": {index: pool for state in states for index, pool in state["pools"].items()}}


def to_cpu(state: Any) -> Any:
    """A host copy of a nested (dict / list) state: tensors are detached, moved and cloned."""
    if torch.is_tensor(state):
        return state.detach().cpu().clone()
    if isinstance(state, dict):
        return {k: to_cpu(v) for k, v in state.items()}
    if isinstance(state, list):
        return [to_cpu(v) for v in state]
    return state
