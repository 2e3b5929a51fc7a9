"""Negative binomial leaves (over-dispersed counts ``0, 1, 2, …``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import checks
from .base import MAX_LOGIT, CountLeaf, LogitParameters, Params, log_ratio


@dataclass(frozen=True)
class NegativeBinomial(LogitParameters, CountLeaf):
    """Negative binomial leaves, as ``torch.distributions.NegativeBinomial``: the number of successes (of
    probability ``p``) before ``total_count`` failures, ``P(x) = C(x + r − 1, x) p^x (1 − p)^r``; parameterized by
    ``logits = logit p`` (initialized with ``p ~ U(0.25, 0.75)``).

    Exponential family (``r`` fixed): ``T(x) = x``, ``η = log p``, ``A = −r log(1 − p)``,
    ``h(x) = log Γ(x + r) − log Γ(r) − log x!``. Differentiable draws are the Gaussian relaxation with the same
    mean and variance (:class:`~pyro_spn.leaves.base.CountLeaf`).

    Args:
        total_count: ``r > 0``, the number of failures (need not be an integer).
    """

    total_count: float
    name: ClassVar[str] = "negative_binomial"

    def __post_init__(self) -> None:
        object.__setattr__(self, "total_count", checks.positive("total_count", self.total_count))

    def natural_parameters(self, params: Params) -> Tensor:
        return F.logsigmoid(params["logits"])[..., None]

    def log_normalizer(self, params: Params) -> Tensor:
        return self.total_count * F.softplus(params["logits"])

    def log_base_measure(self, x: Tensor) -> Tensor:
        r = self.total_count
        return torch.lgamma(x + r) - torch.lgamma(torch.ones_like(x) * r) - torch.lgamma(x + 1)

    def moment_match(self, count: Tensor, total: Tensor, current: Params, *, prior: float,
                     min_variance: float) -> Params:
        """``logits = log(Σx + β) − log(r·count + β)`` (``β = prior``; at ``β = 0`` the MLE of ``p`` for the fixed
        ``r``, whose mean ``r p / (1 − p)`` matches the data's), clamped to ``±MAX_LOGIT``."""
        return {"logits": log_ratio(total[..., 0], self.total_count * count, prior, MAX_LOGIT)}

    def sample(self, params: Params) -> Tensor:
        """A Poisson draw of a Gamma(``r``, odds ``p / (1 − p)``) rate."""
        with torch.no_grad():
            odds = params["logits"].exp()
            rate = torch._standard_gamma(torch.full_like(odds, self.total_count)) * odds
            return torch.poisson(rate)

    def mode(self, params: Params) -> Tensor:
        return torch.floor((self.total_count - 1) * params["logits"].exp()).clamp_min(0)

    def mean(self, params: Params) -> Tensor:
        """``r p / (1 − p) = r exp(logits)``."""
        return self.total_count * params["logits"].exp()

    def variance(self, params: Params) -> Tensor:
        """``r p / (1 − p)² = r exp(logits) (1 + exp(logits))``."""
        odds = params["logits"].exp()
        return self.total_count * odds * (1 + odds)
