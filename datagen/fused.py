"""Fused ETDRK stage arithmetic: each stage's element-wise combination as one compiled kernel (opt-in).

Why: between its FFTs, a 3D ETDRK4 step on the slab runs some thirty element-wise complex kernels
(``E2 * u``, ``Q * nu``, their sum, ...), each reading and writing whole slabs. On a GPU at 64^3-128^3 that
memory traffic is what is left of the gap to exponax once CUDA graphs remove the launch overhead
(``benchmarks/README.md``, "CUDA-graph replay"). Here every stage is one function compiled by
``torch.compile`` (inductor), so it reads each input once and writes one output.

How to use: ``ETDRKStepper(..., fuse=True)`` or ``stepper.fuse = True``; :meth:`ETDRKStepper._step_slab`
then calls :func:`fused_step_slab`. The nonlinear term and the FFTs stay outside the compiled functions
(they call cuFFT / pocketfft anyway).

- Complex numbers: inductor's complex support is weak, so no complex tensor enters a compiled function. The
  state and complex weights enter as real views ``(..., 2)`` (``torch.view_as_real``, no copy) and products are
  written out in real arithmetic; real weights (the symbol is real: diffusive or reactive PDEs) enter as
  ``(..., 1)`` views and scale both parts.
- Weights are inputs, never captured constants: the pool rewrites rows of them in place
  (``ETDRKStepper.set_rows``), and they are per trajectory ``(batch, ...)`` or shared ``(1, ...)``.
- Compiles: ``dynamic=False``, so each formula is compiled once per (shapes, dtypes, device) on its first
  call (seconds on a CPU, where inductor runs a C++ compiler). After ``torch._dynamo.config.recompile_limit``
  (8) shapes of one formula, dynamo runs that formula eagerly (the same real arithmetic, unfused) and says so
  in a warning.
- Numerics: the same operations in the same order as the plain path; not bitwise, because a compiled kernel
  may contract ``a * b + c`` into one fused multiply-add (rounded once instead of twice). ``tests/test_fused.py``
  bounds the difference.
- Failures: a compile that fails (no C++ compiler on CPU, no triton on CUDA, an unsupported Python) raises a
  ``RuntimeError`` that names the fix (``fuse=False``); there is no silent fallback to the plain path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

__all__ = ["check_fusable", "fused_step_slab"]

NonlinearFn = Callable[[torch.Tensor], torch.Tensor]

_FIX = (
    "Fix: build the stepper with fuse=False (the plain path, same numerics to float32 round-off), or make "
    "torch.compile work here (CPU: a C++ compiler such as g++, or the CXX variable naming one; CUDA: the "
    "triton package that matches torch)."
)


def _mul(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``w * x`` on real views: ``x`` ``(..., 2)`` complex numbers; ``w`` ``(..., 1)`` real or ``(..., 2)`` complex."""
    if w.shape[-1] == 1:  # a real weight scales both parts (shapes are static: dynamic=False)
        return w * x
    wr, wi = w[..., 0], w[..., 1]
    xr, xi = x[..., 0], x[..., 1]
    # The same formula as complex64 multiplication in eager torch, so that only FMA contraction differs.
    return torch.stack((wr * xr - wi * xi, wr * xi + wi * xr), dim=-1)


# The stage formulas, on real views. Each keeps the operation order of ETDRKStepper._step_slab.


def _weighted_sum(w1: torch.Tensor, x: torch.Tensor, w2: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``w1 x + w2 y``: ETDRK1; the first stage of ETDRK2/3; the first two stages of ETDRK4."""
    return _mul(w1, x) + _mul(w2, y)


def _weighted_difference(
    w1: torch.Tensor, x: torch.Tensor, w2: torch.Tensor, y: torch.Tensor, z: torch.Tensor
) -> torch.Tensor:
    """``w1 x + w2 (2 y - z)``: the second stage of ETDRK3 and the third of ETDRK4."""
    return _mul(w1, x) + _mul(w2, 2 * y - z)


def _order2_final(a: torch.Tensor, phi2: torch.Tensor, na: torch.Tensor, nu: torch.Tensor) -> torch.Tensor:
    """``a + phi2 (N(a) - N(u))``: the ETDRK2 result."""
    return a + _mul(phi2, na - nu)


def _order3_final(
    e: torch.Tensor,
    u: torch.Tensor,
    f1: torch.Tensor,
    nu: torch.Tensor,
    f2: torch.Tensor,
    na: torch.Tensor,
    f3: torch.Tensor,
    nb: torch.Tensor,
) -> torch.Tensor:
    """``E u + f1 N(u) + f2 (4 N(a)) + f3 N(b)``: the ETD3RK result."""
    return _mul(e, u) + _mul(f1, nu) + _mul(f2, 4 * na) + _mul(f3, nb)


def _order4_final(
    e: torch.Tensor,
    u: torch.Tensor,
    f1: torch.Tensor,
    nu: torch.Tensor,
    f2: torch.Tensor,
    na: torch.Tensor,
    nb: torch.Tensor,
    f3: torch.Tensor,
    nc: torch.Tensor,
) -> torch.Tensor:
    """``E u + f1 N(u) + f2 (2 (N(a) + N(b))) + f3 N(c)``: the ETDRK4 result."""
    return _mul(e, u) + _mul(f1, nu) + _mul(f2, 2 * (na + nb)) + _mul(f3, nc)


_FORMULAS = {
    f.__name__: f for f in (_weighted_sum, _weighted_difference, _order2_final, _order3_final, _order4_final)
}
_compiled: dict[str, Callable[..., torch.Tensor]] = {}


def _compiled_formula(name: str) -> Callable[..., torch.Tensor]:
    # torch.compile is lazy (it compiles on the first call), but importing dynamo costs about a second:
    # only steppers that fuse pay it.
    if name not in _compiled:
        _compiled[name] = torch.compile(_FORMULAS[name], dynamic=False, fullgraph=True)
    return _compiled[name]


def _state_view(x: torch.Tensor) -> torch.Tensor:
    # Contiguous, so that every call of one shape meets the same strides (dynamic=False guards on them; the
    # first slab of a step_fourier call is a strided slice of the spectrum).
    return torch.view_as_real(x.contiguous())


def _weight_view(w: torch.Tensor) -> torch.Tensor:
    # No copy: the compiled kernel reads the stepper's own weight memory, so in-place row updates are seen.
    return torch.view_as_real(w) if w.is_complex() else w.unsqueeze(-1)


def _run(name: str, *args: torch.Tensor) -> torch.Tensor:
    """Call compiled formula ``name`` on real views ``args``; the complex result ``(batch, channels, ...)``."""
    try:
        out = _compiled_formula(name)(*args)
    except Exception as error:
        if not _is_compile_error(error):  # e.g. mismatched shapes: the same error as the plain path's
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise RuntimeError(
            f"Fused ETDRK stage {name!r} failed in torch.compile (inductor) on device "
            f"{args[0].device}: {type(error).__name__}: {first[:300]}. {_FIX}"
        ) from error
    # contiguous(): a no-op for inductor's pointwise outputs; view_as_complex needs (..., 2) with stride 1
    return torch.view_as_complex(out.contiguous())


def _is_compile_error(error: BaseException) -> bool:
    # imported when a compile failed: torch._dynamo and torch._inductor take seconds to import
    import torch._dynamo.exc as dynamo_exc
    import torch._inductor.exc as inductor_exc

    kinds = (dynamo_exc.TorchDynamoException, inductor_exc.InvalidCxxCompiler, inductor_exc.CppCompileError)
    return isinstance(error, kinds)


def check_fusable(device: torch.device) -> None:
    """Raise ``RuntimeError`` naming the fix when torch.compile cannot fuse on ``device`` (cheap checks only).

    A compiler that is present but fails is found on the first fused step, which raises the same way.
    """
    # imported when fusing is asked for: torch._dynamo (and triton below) take seconds to import
    import torch._dynamo.eval_frame

    try:
        torch._dynamo.eval_frame.check_if_dynamo_supported()
    except RuntimeError as error:
        raise RuntimeError(f"fuse=True needs torch.compile, which is unavailable: {error}. {_FIX}") from error
    if torch.device(device).type == "cuda":
        from torch.utils._triton import has_triton  # triton: seconds to import, and only on CUDA

        if not has_triton():
            raise RuntimeError(
                f"fuse=True on {device} needs triton for inductor's GPU kernels; none found. {_FIX}"
            )


def fused_step_slab(
    weights: Mapping[str, torch.Tensor], nonlinear: NonlinearFn, order: int, u: torch.Tensor
) -> torch.Tensor:
    """One ETDRK step of the slab ``u`` ``(batch, channels, ..., num_kept)`` (complex) with fused stages.

    ``weights`` are :class:`~datagen.spectral.ETDRKStepper`'s slab weights ``(batch|1, channels|1, ...,
    num_kept)``, real or complex; ``nonlinear`` maps a slab to the slab of ``FFT(N(u))``. The same
    arithmetic as the plain ``_step_slab``, one compiled kernel per stage.
    """
    w = {name: _weight_view(t) for name, t in weights.items()}
    ur = _state_view(u)
    u = torch.view_as_complex(ur)  # the contiguous copy, if one was made
    nu = nonlinear(u)
    nur = _state_view(nu)
    if order == 1:
        return _run("_weighted_sum", w["E"], ur, w["phi1"], nur)
    if order == 2:
        a = _run("_weighted_sum", w["E"], ur, w["phi1"], nur)
        return _run("_order2_final", torch.view_as_real(a), w["phi2"], _state_view(nonlinear(a)), nur)
    a = _run("_weighted_sum", w["E2"], ur, w["Q"], nur)
    nar = _state_view(nonlinear(a))
    if order == 3:
        b = _run("_weighted_difference", w["E"], ur, w["phi1"], nar, nur)
        nbr = _state_view(nonlinear(b))
        return _run("_order3_final", w["E"], ur, w["f1"], nur, w["f2"], nar, w["f3"], nbr)
    b = _run("_weighted_sum", w["E2"], ur, w["Q"], nar)
    nbr = _state_view(nonlinear(b))
    c = _run("_weighted_difference", w["E2"], torch.view_as_real(a), w["Q"], nbr, nur)
    ncr = _state_view(nonlinear(c))
    return _run("_order4_final", w["E"], ur, w["f1"], nur, w["f2"], nar, nbr, w["f3"], ncr)
