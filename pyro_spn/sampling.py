"""The selection rule of the top-down pass: how a sum unit chooses among its children.

Every rule maps unnormalized log-probabilities ``logits [..., Q]`` (log-weights, plus child
log-likelihoods when there is evidence) to a selection ``[..., Q]`` on the simplex:

* ``"hard"``: a categorical draw by Gumbel-max, one-hot, no gradient: exact ancestral sampling;
* ``"soft"``: Gumbel-Softmax ``softmax((logits + g) / τ)`` (the paper's relaxation);
* ``"straight_through"``: the hard draw forward (exactly one-hot), the soft draw's gradient backward;
  both use the same Gumbel noise, so the forward value is the exact categorical draw;
* ``"argmax"``: the most probable child, one-hot (MPE);
* ``"expected"``: the probabilities themselves, ``softmax(logits)``, no noise (exact flows, means).

The temperature ``τ`` always *divides* the perturbed logits; it may be a float or a tensor that requires
grad (a learned temperature).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Rule = Literal["hard", "soft", "straight_through", "argmax", "expected"]
RULES: tuple[str, ...] = ("hard", "soft", "straight_through", "argmax", "expected")
#: Rules whose forward value is exactly one-hot.
ONE_HOT_RULES: tuple[str, ...] = ("hard", "straight_through", "argmax")


def gumbel_like(x: Tensor) -> Tensor:
    """Standard Gumbel noise of the shape, dtype and device of ``x``."""
    tiny = torch.finfo(x.dtype).tiny
    # in place: one tensor instead of five (this is the paper's soft sampler's largest tensor, [N, R, L, K, K²])
    return torch.rand_like(x).clamp_(tiny, 1.0 - 1e-7).log_().neg_().log_().neg_()


def conditional_gumbel(log_probs: Tensor, index: Tensor) -> Tensor:
    """Gumbel-perturbed log-probabilities ``z = log p + g`` drawn conditional on ``argmax z == index``.

    The maximum of independent ``Gumbel(log p_q)`` is ``Gumbel(logsumexp log p) = Gumbel(0)`` and the
    other entries are Gumbels truncated below it, so ``(index, z)`` has exactly the law of a Gumbel-max
    draw and its perturbed logits. No gradient flows through the result.

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


def _one_hot(index: Tensor, num_classes: int, like: Tensor) -> Tensor:
    return F.one_hot(index, num_classes).to(like.dtype)


def select(logits: Tensor, rule: Rule, temperature: Tensor | float = 1.0) -> Tensor:
    """Applies a selection rule over the last dimension.

    Args:
        logits: ``[..., Q]`` unnormalized log-probabilities of the ``Q`` children.
        rule: one of :data:`RULES`.
        temperature: ``τ > 0`` for ``"soft"`` and ``"straight_through"``.

    Returns:
        ``[..., Q]`` selections (one-hot for :data:`ONE_HOT_RULES`).
    """
    num_classes = logits.shape[-1]
    if rule == "expected":
        return logits.softmax(-1)
    if rule == "argmax":
        return _one_hot(logits.detach().argmax(-1), num_classes, logits)
    perturbed = logits + gumbel_like(logits)
    if rule == "hard":
        return _one_hot(perturbed.detach().argmax(-1), num_classes, logits)
    soft = (perturbed / temperature).softmax(-1)
    if rule == "soft":
        return soft
    if rule == "straight_through":
        hard = _one_hot(perturbed.detach().argmax(-1), num_classes, logits)
        return hard + (soft - soft.detach())
    raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
