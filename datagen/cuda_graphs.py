"""CUDA-graph replay of solver steps: one launch per call instead of hundreds of small kernels.

A 3D ETDRK4 step is a few FFTs and some thirty element-wise complex kernels per stage; at 64^3 with a small
batch each kernel runs for microseconds and the GPU waits on Python and kernel launches. Capturing a whole
``stepper(u, num_steps)`` call once per input shape and replaying it removes that overhead while running the
very same kernels, so the numbers are bitwise those of the plain call (the benchmark prints the difference).

Per-sample coefficients stay inputs: the graph reads the stepper's weight tensors, the nonlinear term's
``buffers`` and any ``inputs`` (e.g. a pool's coefficient tensors, which its nonlinear terms read at call
time) in place, so values written into them (``ETDRKStepper.set_rows``, ``values[key][rows] = ...``) are
seen by the next replay. A stepper whose tensors or nonlinear term are *replaced* (``expand_rows``, a new
``nonlinear``) is captured again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["CudaGraphStepper"]


class CudaGraphStepper:
    """Wraps a stepper ``f(u, num_steps) -> u`` (``(batch, channels, *grid)``); on CUDA it replays a graph.

    On other devices, or while another graph is being captured, it calls the stepper directly. Each distinct
    (shape, dtype, device, num_steps, weights, nonlinear term and its buffers, ``inputs()``) is captured once,
    after ``num_warmup`` plain calls on a side stream (FFT plans and the allocator settle there); only the
    newest capture is kept, since a pool steps the same shape every batch. ``inputs`` returns the other
    tensors the stepper reads (their replacement, unlike an in-place write, forces a new capture).
    """

    def __init__(
        self,
        stepper: Callable[..., torch.Tensor],
        num_warmup: int = 2,
        inputs: Callable[[], Sequence[torch.Tensor]] | None = None,
    ) -> None:
        self.stepper = stepper
        self.num_warmup = num_warmup
        self.inputs = inputs
        self._key: tuple | None = None
        self._graph: tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor] | None = None
        self.num_captures = 0

    def _signature(self, u: torch.Tensor, num_steps: int) -> tuple:
        tensors = list(getattr(self.stepper, "tensors", lambda: [])())
        nonlinear = getattr(self.stepper, "nonlinear", None)
        tensors += list(getattr(nonlinear, "buffers", {}).values())
        tensors += list(self.inputs() if self.inputs is not None else [])
        # The key holds the term and the tensors themselves, not their ids or addresses alone: a graph reads
        # raw addresses, so what it reads must stay alive, and a freed tensor's address (or a freed closure's
        # id) may be handed to a new one, which a key of numbers would take for the old.
        return (
            tuple(u.shape),
            u.dtype,
            u.device,
            num_steps,
            nonlinear,
            tuple((t, t.data_ptr(), tuple(t.shape), t.stride()) for t in tensors),
        )

    def __call__(self, u: torch.Tensor, num_steps: int = 1) -> torch.Tensor:
        """Advance ``u`` by ``num_steps`` steps; the result is a fresh tensor (not the graph's buffer)."""
        if u.device.type != "cuda" or torch.cuda.is_current_stream_capturing():
            return self.stepper(u, num_steps)
        key = self._signature(u, num_steps)
        if self._key is None or not _same(key, self._key):
            self._graph = self._key = None  # free the old capture's memory before making the new one
            static_in = u.detach().clone()
            side = torch.cuda.Stream(device=u.device)
            side.wait_stream(torch.cuda.current_stream(u.device))
            with torch.cuda.stream(side):
                for _ in range(self.num_warmup):
                    self.stepper(static_in, num_steps)
            torch.cuda.current_stream(u.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # "thread_local": a pool may capture in the prefetch thread while the training thread runs its
            # own kernels and syncs; the default "global" mode would fail the capture on those calls.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                static_out = self.stepper(static_in, num_steps)
            self._graph, self._key = (graph, static_in, static_out), key
            self.num_captures += 1
        graph, static_in, static_out = self._graph
        static_in.copy_(u)
        graph.replay()
        return static_out.clone()


def _same(a: object, b: object) -> bool:
    """Equal keys: tuples element by element, tensors and callables by identity, the rest by value."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor) or callable(a) or callable(b):
        return False
    return type(a) is type(b) and a == b
