"""Soft (Gumbel-Softmax) selections of many sum units at once, fused: the native kernel of
:mod:`pyro_spn.native.soft_select` where it runs (CPU, float32 or float64), a plain PyTorch path elsewhere.

:func:`soft_select` computes, for selections ``s [N, G, K]`` arriving at the ``K`` units of ``G`` groups (a region of
one repetition each), the units' log-weights ``logw [G, K, Q]`` over their ``Q`` children, an optional per-sample
``bias [N, G, Q]`` (evidence: child log-likelihoods) and the temperature ``τ``:

``pairs[n, g] = Σ_k s[n, g, k] · softmax((logw[g, k] + bias[n, g] + gumbel) / τ)``,

with independent standard Gumbel noise for every ``(n, g, k, q)``. The kernel draws the noise from a counter-based
generator seeded from torch's global generator (so ``torch.manual_seed`` reproduces it), never stores it, and draws it
again in the backward: memory O(inputs + outputs) instead of the ``[N, G, K, Q]`` noise and selections.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..gumbel import gumbel_like
from ..native import soft_select as kernel

#: Seeds are drawn from torch's generator in ``[0, SEED_BOUND)``.
SEED_BOUND = 2**62


def soft_select_reference(s: Tensor, logw: Tensor | None, bias: Tensor | None, temperature: Tensor | float,
                          noise: Tensor) -> Tensor:
    """:func:`soft_select` in plain differentiable operations, given the noise ``[N, G, K, Q]``."""
    logits = noise
    if logw is not None:
        logits = logits + logw
    if bias is not None:
        logits = logits + bias[:, :, None, :]
    return torch.einsum("ngk,ngkq->ngq", s, (logits / temperature).softmax(-1))


class SoftSelection(torch.autograd.Function):
    """The native kernel as an autograd function of ``s``, ``logw``, ``bias`` and ``inv_tau`` (a 0-dim tensor); the
    ``seed`` fixes the noise. Under ``create_graph`` the backward is :func:`soft_select_reference`'s with the kernel's
    noise, so higher derivatives work."""

    @staticmethod
    def forward(ctx, s: Tensor, logw: Tensor | None, bias: Tensor | None, inv_tau: Tensor,
                seed: int) -> Tensor:
        """``pairs [N, G, Q]``."""
        ctx.seed = seed
        ctx.save_for_backward(s, logw, bias, inv_tau)
        return kernel.forward(s, logw, bias, float(inv_tau), seed)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        """The gradients of ``s``, ``logw``, ``bias`` and ``inv_tau`` for ``grad [N, G, Q]``."""
        s, logw, bias, inv_tau = ctx.saved_tensors
        needs = ctx.needs_input_grad[:4]
        if torch.is_grad_enabled():  # create_graph
            noise = kernel.gumbel((*s.shape, grad.shape[-1]), ctx.seed, s.dtype)
            inputs = [t for t, needed in zip((s, logw, bias, inv_tau), needs, strict=True) if needed]
            pairs = soft_select_reference(s, logw, bias, 1 / inv_tau, noise)
            grads = iter(torch.autograd.grad(pairs, inputs, grad, create_graph=True))
            return (*(next(grads) if needed else None for needed in needs), None)
        grad_s, grad_logw, grad_bias, grad_inv_tau = kernel.backward(s, logw, bias, float(inv_tau), ctx.seed, grad,
                                                                       tuple(needs))
        return grad_s, grad_logw, grad_bias, inv_tau.new_tensor(grad_inv_tau) if needs[3] else None, None


def _rows_layout(t: Tensor | None) -> Tensor | None:
    """``t [N, G, X]`` as it is if it is ``[N, G, X]``- or ``[G, N, X]``-contiguous (the kernel takes both), else
    contiguous."""
    if t is None or t.is_contiguous() or t.transpose(0, 1).is_contiguous():
        return t
    return t.contiguous()


def soft_select(s: Tensor, logw: Tensor | None, bias: Tensor | None, temperature: Tensor | float) -> Tensor:
    """Fused Gumbel-Softmax selections, see the module docstring.

    Args:
        s: ``[N, G, K]`` selections arriving at the units.
        logw: ``[G, K, Q]`` the units' log-weights, or ``None`` (zeros).
        bias: ``[N, G, Q]`` per-sample logits added to every unit's, or ``None``.
        temperature: ``τ > 0``, a float or a 0-dim tensor (which may require grad).

    Returns:
        ``[N, G, Q]``, with ``bias``'s layout where given (``[G, N, Q]`` memory stays so).
    """
    tau = torch.as_tensor(temperature, dtype=s.dtype, device=s.device)
    if kernel.supports(s, logw, bias):
        seed = int(torch.randint(SEED_BOUND, (), dtype=torch.int64))
        return SoftSelection.apply(_rows_layout(s), None if logw is None else logw.contiguous(), _rows_layout(bias),
                                   1 / tau, seed)
    num_pairs = (logw if logw is not None else bias).shape[-1]  # type: ignore[union-attr]
    noise = gumbel_like(s.new_empty(*s.shape, num_pairs))
    return soft_select_reference(s, logw, bias, tau, noise)
