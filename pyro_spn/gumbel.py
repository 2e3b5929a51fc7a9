"""Gumbel noise: standard draws, and draws conditional on which entry wins the Gumbel-max."""

from __future__ import annotations

import torch
from torch import Tensor


def gumbel_like(x: Tensor) -> Tensor:
    """Standard Gumbel noise of the shape, dtype and device of ``x``."""
    tiny = torch.finfo(x.dtype).tiny
    # in place: one tensor instead of five (this is the paper's soft sampler's largest tensor, [N, R, L, K, K²])
    return torch.rand_like(x).clamp_(tiny, 1.0 - 1e-7).log_().neg_().log_().neg_()


def conditional_gumbel(log_probs: Tensor, index: Tensor) -> Tensor:
    """Gumbel-perturbed log-probabilities ``z = log p + g`` drawn conditional on ``argmax z == index``.

    The maximum of independent ``Gumbel(log p_q)`` is ``Gumbel(logsumexp log p) = Gumbel(0)`` and the other
    entries are Gumbels truncated below it, so ``(index, z)`` has exactly the law of a Gumbel-max draw and its
    perturbed logits. No gradient flows through the result.

    Args:
        log_probs: ``[..., Q]`` normalized log-probabilities.
        index: ``[...]`` the categories the draws must select.

    Returns:
        ``[..., Q]``.
    """
    log_probs = log_probs.detach()
    tiny = torch.finfo(log_probs.dtype).tiny
    u = torch.rand_like(log_probs).clamp(tiny, 1.0 - 1e-7)
    index = index.long()[..., None]
    top = -torch.log(-torch.log(u.gather(-1, index)))
    others = -torch.log(-torch.log(u) / log_probs.exp() + torch.exp(-top))
    return others.scatter(-1, index, top)
