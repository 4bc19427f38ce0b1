"""Produce the next batch while the current one trains: one background thread (and CUDA stream) per process.

:class:`Prefetcher` calls ``produce()`` one call ahead in a single worker thread, so the calls happen one at
a time and in order, exactly as a plain loop would make them: the samples and the random streams are the
same with and without prefetching. Only the time they take moves off the training thread.

Devices:
- CUDA: the worker enqueues its kernels on its own stream, so generation overlaps the training kernels. The
  training stream waits for an event recorded after each batch, and the batch's tensors are marked as used
  by the training stream so that the caching allocator does not hand their memory out while training reads
  them. Whatever the producer keeps (the pools) must be allocated on :attr:`stream` too (see
  :meth:`Prefetcher.context`).
- CPU: the worker runs ``num_threads`` intra-op threads. OpenMP's thread count is a per-thread setting, so
  the training thread keeps its own; on a machine with few cores, 1 generation thread beside the training
  threads measured best (``benchmarks/datagen_wait.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

__all__ = ["Prefetcher", "tensors_of"]


def tensors_of(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a (nested) dict, list or tuple."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from tensors_of(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from tensors_of(value)


class Prefetcher:
    """Runs ``produce()`` one call ahead in a background thread; :meth:`next` returns the results in order.

    ``before_submit()`` runs on the calling thread just before each call is handed to the worker, while the
    worker is idle (e.g. to record the producer's state before the batch it is about to make).
    """

    def __init__(
        self,
        produce: Callable[[], Any],
        device: torch.device,
        *,
        num_threads: int | None = 1,
        before_submit: Callable[[], None] | None = None,
        stream: Any = None,
    ) -> None:
        if num_threads is not None and num_threads < 1:
            raise ValueError(
                f"data.prefetch_threads={num_threads}; expected a positive number of generation threads, "
                "or null to use torch's default."
            )
        self.produce = produce
        self.device = torch.device(device)
        self.num_threads = num_threads
        self.before_submit = before_submit
        self.stream = stream
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pfm-prefetch")
        self._future: Future | None = None
        self._initialised = False

    def context(self) -> contextlib.AbstractContextManager:
        """Device and stream of the worker: allocate what the producer keeps under this context."""
        if self.device.type == "cuda" and self.stream is not None:
            stack = contextlib.ExitStack()
            stack.enter_context(torch.cuda.device(self.device))
            stack.enter_context(torch.cuda.stream(self.stream))
            return stack
        return contextlib.nullcontext()

    def _run(self) -> tuple[Any, Any]:
        if not self._initialised:
            # per-thread settings: OpenMP threads, the current device, grad mode (tensors made here must not
            # be inference tensors: training saves its inputs for backward)
            if self.device.type == "cpu" and self.num_threads is not None:
                torch.set_num_threads(self.num_threads)
            self._initialised = True
        with torch.no_grad(), self.context():
            batch = self.produce()
            event = None
            if self.device.type == "cuda" and self.stream is not None:
                event = torch.cuda.Event()
                event.record(self.stream)
        return batch, event

    def _submit(self) -> None:
        if self.before_submit is not None:
            with self.context():
                self.before_submit()
        self._future = self._executor.submit(self._run)

    def next(self) -> Any:
        """The next result of ``produce()``; starts the call after it before returning."""
        if self._future is None:
            if self.device.type == "cuda" and self.stream is not None:
                # the producer's state may have been written on the training stream (set-up, restore)
                self.stream.wait_stream(torch.cuda.current_stream(self.device))
            self._submit()
        batch, event = self._future.result()
        self._future = None
        if event is not None:
            consumer = torch.cuda.current_stream(self.device)
            consumer.wait_event(event)
            for tensor in tensors_of(batch):
                if tensor.is_cuda:
                    tensor.record_stream(consumer)
        self._submit()
        return batch

    def close(self) -> None:
        """Wait for the call in flight (its result is dropped) and stop the worker thread."""
        future, self._future = self._future, None
        if future is not None:
            with contextlib.suppress(Exception):
                future.result()
        self._executor.shutdown(wait=True)
