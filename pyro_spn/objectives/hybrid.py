"""Hybrid: a sample-based objective plus a weighted negative log-likelihood."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .. import checks
from .base import Objective


class HybridObjective(Objective):
    """``loss = base.loss + nll_weight · (−mean log p(x))``, with ``log p`` the model's ``log_prob`` (for a joint
    circuit trained by PAE: the data's marginal).

    The auxiliary steps are the base's. Likelihood pre-training is the trainer's job, not this objective's.

    Args:
        base: the sample-based objective.
        nll_weight: ``λ >= 0``.
    """

    def __init__(self, base: Objective, nll_weight: float) -> None:
        super().__init__()
        if not isinstance(base, Objective):
            raise TypeError(f"base must be a pyro_spn.objectives.Objective, got {type(base).__name__}")
        self.base = base
        self.nll_weight = checks.non_negative("nll_weight", nll_weight)
        self.name = f"{base.name}+ll"

    def loss(self, d: Any, x: Tensor) -> Tensor:
        return self.base.loss(d, x) - self.nll_weight * d.log_prob(x).mean()

    def auxiliary_step(self, d: Any, x: Tensor) -> dict[str, float]:
        return self.base.auxiliary_step(d, x)
