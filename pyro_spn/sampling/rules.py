"""The selection rules of the top-down pass: how a sum unit chooses among its children.

Every rule maps unnormalized log-probabilities ``logits [..., Q]`` (log-weights, plus child log-likelihoods when
there is evidence) to a selection ``[..., Q]`` on the simplex:

* ``"exact"``: a categorical draw by Gumbel-max, one-hot, no gradient: exact ancestral sampling;
* ``"soft"``: Gumbel-Softmax ``softmax((logits + g) / τ)`` (the paper's relaxation);
* ``"straight_through"``: the exact draw forward (one-hot), the soft draw's gradient backward; both use the same
  Gumbel noise, so the forward value is the exact categorical draw;
* ``"argmax"``: the most probable child, one-hot (max-product completion);
* ``"expected"``: the probabilities themselves, ``softmax(logits)``, no noise (exact flows, means).

The temperature ``τ`` always *divides* the perturbed logits; it may be a float or a tensor that requires grad
(a learned temperature).
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from ..gumbel import gumbel_like

Rule = Literal["exact", "soft", "straight_through", "argmax", "expected"]
RULES: tuple[Rule, ...] = ("exact", "soft", "straight_through", "argmax", "expected")
#: Rules whose forward value is exactly one-hot.
ONE_HOT_RULES: tuple[Rule, ...] = ("exact", "straight_through", "argmax")


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
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}; got {rule!r}")
    perturbed = logits + gumbel_like(logits)
    if rule == "exact":
        return _one_hot(perturbed.detach().argmax(-1), num_classes, logits)
    soft = (perturbed / temperature).softmax(-1)
    if rule == "soft":
        return soft
    hard = _one_hot(perturbed.detach().argmax(-1), num_classes, logits)
    return hard + (soft - soft.detach())
