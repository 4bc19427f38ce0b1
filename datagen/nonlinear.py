"""Reusable pseudo-spectral nonlinear terms: convection, gradient norm, polynomial, projected convection.

Each builder takes the grid's cached :class:`~datagen.spectral.SpectralOps` and per-sample coefficient
tensors ``(batch|1, 1, 1, ...)`` and returns a function from the slab ``u_hat[..., :num_kept]`` to the
dealiased slab of ``FFT(N(u))``, both ``(batch, channels, ..., num_kept)`` (see ``SpectralOps``). FFTs set
the cost of a step, so every builder batches its transforms into one inverse and one forward call on the
slab, and folds dealiasing into the derivative symbols (``ik_masked_slab``). Signs follow exponax: all terms
are on the right-hand side, ``u_t = L u + N(u)``.

Coefficients are live inputs: a returned function reads the coefficient tensors it was given when it is
called, so values written into them in place (a pool drawing new coefficients for some rows) take effect
without building a new function, and a CUDA graph captured around it stays valid. A coefficient-dependent
tensor too costly to recompute per call (a forcing in Fourier space: an FFT) is kept instead in the
function's ``buffers`` dict (name -> tensor with a leading batch axis); whoever writes new coefficients
copies those rows from a function built for them (``PDEPool`` does).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from datagen.spectral import SpectralOps

__all__ = [
    "convection",
    "cross_product",
    "gradient_norm",
    "leray_project",
    "polynomial",
    "projected_rotational_convection",
    "single_channel_convection",
    "vorticity_convection",
]

NonlinearFn = Callable[[torch.Tensor], torch.Tensor]


def _zero_mean_mode(u_hat: torch.Tensor, num_spatial_dims: int) -> torch.Tensor:
    u_hat[(..., *([0] * num_spatial_dims))] = 0
    return u_hat


def cross_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a x b`` over the channel axis of ``(batch, 3, ...)`` tensors (real or complex)."""
    a1, a2, a3 = a[:, 0], a[:, 1], a[:, 2]
    b1, b2, b3 = b[:, 0], b[:, 1], b[:, 2]
    return torch.stack((a2 * b3 - a3 * b2, a3 * b1 - a1 * b3, a1 * b2 - a2 * b1), dim=1)


def _curl_hat(ik: torch.Tensor, u_hat: torch.Tensor) -> torch.Tensor:
    """Vorticity of ``(batch, d, ...)`` velocity in Fourier space: 3 channels in 3D, 1 in 2D."""
    if u_hat.shape[1] == 3:
        return cross_product(ik, u_hat)
    return ik[:, 0:1] * u_hat[:, 1:2] - ik[:, 1:2] * u_hat[:, 0:1]


def _lamb_vector(u: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """``u x omega`` in real space for 2D (omega scalar along z) or 3D fields."""
    if u.shape[1] == 3:
        return cross_product(u, omega)
    return torch.cat((u[:, 1:2] * omega, -u[:, 0:1] * omega), dim=1)


def convection(ops: SpectralOps, scale: torch.Tensor) -> NonlinearFn:
    """``N(u) = -scale (u . grad) u`` for a ``num_spatial_dims``-channel velocity (exponax Burgers form).

    Uses ``(u . grad) u = grad(|u|^2 / 2) - u x curl(u)``, valid for any vector field, so that a 3D
    evaluation costs 6 inverse and 4 forward channel-FFTs instead of 12 and 3. In 1D, ``-scale/2 (u^2)_x``.
    """
    d = ops.grid.num_spatial_dims
    if d == 1:
        return single_channel_convection(ops, scale)
    ik, ikm, mask = ops.ik_slab, ops.ik_masked_slab, ops.mask_slab

    def fn(u_hat: torch.Tensor) -> torch.Tensor:
        both = ops.ifft_slab(torch.cat((u_hat * mask, _curl_hat(ikm, u_hat)), dim=1))
        u, omega = both[:, :d], both[:, d:]
        products = torch.cat((_lamb_vector(u, omega), 0.5 * (u * u).sum(dim=1, keepdim=True)), dim=1)
        p_hat = ops.fft_slab(products)
        return scale * (p_hat[:, :d] - ik * p_hat[:, d:])

    return fn


def single_channel_convection(ops: SpectralOps, scale: torch.Tensor) -> NonlinearFn:
    """``N(u) = -scale/2 sum_j d_j (u^2)`` for a scalar ``u`` (exponax single-channel convection)."""
    # The sum of the derivative symbols, summed once here; it is scaled on every call, since ``scale`` is live.
    ik_sum = ops.ik_slab.sum(dim=1, keepdim=True)
    mask = ops.mask_slab

    def fn(u_hat: torch.Tensor) -> torch.Tensor:
        u = ops.ifft_slab(u_hat * mask)
        return (-0.5 * scale * ik_sum) * ops.fft_slab(u * u)

    return fn


def gradient_norm(ops: SpectralOps, scale: torch.Tensor) -> NonlinearFn:
    """``N(u) = -scale/2 |grad u|^2`` with its mean removed (exponax Kuramoto-Sivashinsky form).

    One batched inverse FFT of the ``d`` gradient components and one forward FFT per evaluation.
    """
    ikm = ops.ik_masked_slab
    d = ops.grid.num_spatial_dims

    def fn(u_hat: torch.Tensor) -> torch.Tensor:
        grad = ops.ifft_slab(ikm * u_hat)  # (batch, d, ...) for a single-channel u
        out = ops.fft_slab((grad * grad).sum(dim=1, keepdim=True))
        return _zero_mean_mode(out.mul_(-0.5 * scale), d)

    return fn


def polynomial(ops: SpectralOps, coefficients: list[torch.Tensor | float]) -> NonlinearFn:
    """``N(u) = sum_p c_p u^p`` (``coefficients[p]`` for power p), evaluated pointwise by Horner's rule.

    The tensors in ``coefficients`` are read at call time: pass the coefficient tensors themselves, not a
    tensor computed from them (``-r`` would not follow later writes into ``r``).
    """
    mask = ops.mask_slab

    def fn(u_hat: torch.Tensor) -> torch.Tensor:
        u = ops.ifft_slab(u_hat * mask)
        value = torch.zeros_like(u) + coefficients[-1]
        for c in reversed(coefficients[:-1]):
            value = value * u + c
        return ops.fft_slab(value)

    return fn


def _projection_inverse(ik: torch.Tensor) -> torch.Tensor:
    k2 = (ik.imag**2).sum(dim=1, keepdim=True)
    return torch.where(k2 > 0, 1.0 / torch.where(k2 > 0, k2, torch.ones_like(k2)), torch.zeros_like(k2))


def leray_project(ops: SpectralOps, f_hat: torch.Tensor) -> torch.Tensor:
    """Divergence-free part ``f - grad(lap^-1 div f)`` of a ``(batch, d, *fourier_shape)`` vector field.

    Built from the same derivative symbols as the divergence, so ``div`` of the result is zero to round-off.
    """
    ik = ops.ik
    div = (ik * f_hat).sum(dim=1, keepdim=True)
    return f_hat + ik * (div * _projection_inverse(ik))


def projected_rotational_convection(ops: SpectralOps, forcing_hat: torch.Tensor | None = None) -> NonlinearFn:
    """``N(u) = P(u x curl u) + f``: incompressible convection in rotational form (exponax NS velocity).

    ``forcing_hat`` ``(batch|1, 1, *fourier_shape)``, if given, is a divergence-free forcing of channel 0, kept
    (cut to the slab) in ``fn.buffers["forcing"]``. 3D: 6 inverse and 3 forward channel-FFTs per evaluation;
    the Leray projection P removes the gradient part (pressure and kinetic energy) in Fourier space.
    """
    d = ops.grid.num_spatial_dims
    ik, ikm, mask = ops.ik_slab, ops.ik_masked_slab, ops.mask_slab
    inverse = _projection_inverse(ik)
    forcing = None if forcing_hat is None else ops.slab(forcing_hat) * mask

    def fn(u_hat: torch.Tensor) -> torch.Tensor:
        both = ops.ifft_slab(torch.cat((u_hat * mask, _curl_hat(ikm, u_hat)), dim=1))
        lamb_hat = ops.fft_slab(_lamb_vector(both[:, :d], both[:, d:]))
        div = (ik * lamb_hat).sum(dim=1, keepdim=True)
        out = lamb_hat.add_(ik * (div * inverse))
        if forcing is not None:
            out[:, 0:1] += forcing
        return out

    if forcing is not None:
        fn.buffers = {"forcing": forcing}
    return fn


def vorticity_convection(
    ops: SpectralOps, scale: torch.Tensor, forcing_hat: torch.Tensor | None = None
) -> NonlinearFn:
    """2D ``N(w) = -scale (u . grad) w + f`` with ``u = (d_y psi, -d_x psi)``, ``psi = lap^-1 w`` (exponax).

    ``forcing_hat`` ``(batch|1, 1, *fourier_shape)``, if given, is kept (cut to the slab) in
    ``fn.buffers["forcing"]``.
    """
    ikm = ops.ik_masked_slab
    # Velocity symbols from the vorticity: (i k_y, -i k_x) / lap, with dealiasing folded in.
    velocity = torch.cat((ikm[:, 1:2], -ikm[:, 0:1]), dim=1) * ops.inverse_laplacian_slab
    forcing = None if forcing_hat is None else ops.slab(forcing_hat) * ops.mask_slab

    def fn(w_hat: torch.Tensor) -> torch.Tensor:
        fields = ops.ifft_slab(torch.cat((velocity * w_hat, ikm * w_hat), dim=1))
        transport = (fields[:, :2] * fields[:, 2:]).sum(dim=1, keepdim=True)
        out = ops.fft_slab(transport).mul_(-scale)
        return out if forcing is None else out + forcing

    if forcing is not None:
        fn.buffers = {"forcing": forcing}
    return fn
