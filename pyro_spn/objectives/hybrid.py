"""Hybrid: a sample-based objective plus a weighted negative log-likelihood."""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

from torch import Tensor

from ..distribution import SPNDistribution
from ..leaves import Leaf
from ..spn import RatSPN
from .base import Objective


class HybridObjective(Objective):
    """``loss = base.loss + nll_weight · (−mean log p(x))``, with ``log p`` the base's
    :meth:`~Objective.log_likelihood` (PAE: the data marginal).

    Everything else (auxiliary steps, sampling, the circuit it builds) is the base's. Likelihood
    pre-training is the trainer's job, not this objective's.

    Args:
        base: the sample-based objective.
        nll_weight: ``λ >= 0``.
    """

    def __init__(self, base: Objective, nll_weight: float) -> None:
        super().__init__()
        if not isinstance(base, Objective):
            raise TypeError(f"base must be a pyro_spn.objectives.Objective, got {type(base).__name__}")
        if isinstance(nll_weight, bool) or not isinstance(nll_weight, Real) or not 0 <= nll_weight < math.inf:
            raise ValueError(f"nll_weight must be a finite number >= 0, got {nll_weight!r}")
        self.base = base
        self.nll_weight = float(nll_weight)
        self.name = f"{base.name}+ll"

    def loss(self, d: SPNDistribution, x: Tensor) -> Tensor:
        return self.base.loss(d, x) - self.nll_weight * self.base.log_likelihood(d, x).mean()

    def auxiliary_step(self, d: SPNDistribution, x: Tensor) -> dict[str, float]:
        return self.base.auxiliary_step(d, x)

    def log_likelihood(self, d: SPNDistribution, x: Tensor) -> Tensor:
        return self.base.log_likelihood(d, x)

    def sample(self, d: SPNDistribution, n: int) -> Tensor:
        return self.base.sample(d, n)

    def build_spn(self, event_shape: int | Sequence[int], leaf: Leaf, *, depth: int, num_repetitions: int,
                  num_sums: int, num_leaves: int, seed: int = 0) -> RatSPN:
        return self.base.build_spn(event_shape, leaf, depth=depth, num_repetitions=num_repetitions,
                                   num_sums=num_sums, num_leaves=num_leaves, seed=seed)
