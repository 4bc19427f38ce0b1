"""datagen.cuda_graphs: the CUDA-graph wrapper is a pass-through off CUDA and recaptures when its inputs change.

The replay itself needs a GPU; ``benchmarks/datagen.py --device cuda`` prints its speed and its difference
from the plain call (0 expected: the same kernels run).
"""

from __future__ import annotations

import torch

from datagen import make_stepper
from datagen.cuda_graphs import CudaGraphStepper, _same


def test_cpu_calls_the_stepper_unchanged() -> None:
    stepper = make_stepper("burgers", dim=2, n=16, dt=0.001, diffusivity=0.05)
    u = 0.5 * torch.randn(2, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    graphed = CudaGraphStepper(stepper)
    assert torch.equal(graphed(u, 3), stepper(u, 3))
    assert graphed.num_captures == 0


def test_signature_changes_with_shape_steps_and_nonlinear_term() -> None:
    stepper = make_stepper("burgers", dim=2, n=16, dt=0.001, diffusivity=0.05)
    graphed = CudaGraphStepper(stepper)
    u = torch.zeros(2, 2, 16, 16)
    key = graphed._signature(u, 2)
    assert _same(key, graphed._signature(u, 2))
    assert not _same(key, graphed._signature(u, 3))
    assert not _same(key, graphed._signature(torch.zeros(3, 2, 16, 16), 2))
    stepper.nonlinear = lambda u_hat: u_hat  # a new term (new derived tensors): a new capture
    assert not _same(key, graphed._signature(u, 2))
