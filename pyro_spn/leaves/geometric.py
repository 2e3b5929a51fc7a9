"""Geometric leaves (the number of failures before the first success, ``0, 1, 2, …``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import MAX_LOGIT, CountLeaf, LogitParameters, Params, log_ratio, uniform


@dataclass(frozen=True)
class Geometric(LogitParameters, CountLeaf):
    """Geometric leaves ``P(x) = (1 − p)^x p`` on ``{0, 1, 2, …}`` (``torch.distributions.Geometric``: failures
    before the first success), parameterized by ``logits = logit p`` (initialized with ``p ~ U(0.25, 0.75)``).

    Exponential family: ``T(x) = x``, ``η = log(1 − p)``, ``A = −log p``, ``h = 0``. Differentiable draws are the
    Gaussian relaxation with the same mean and variance (:class:`~pyro_spn.leaves.base.CountLeaf`).
    """

    name: ClassVar[str] = "geometric"

    def natural_parameters(self, params: Params) -> Tensor:
        return F.logsigmoid(-params["logits"])[..., None]

    def log_normalizer(self, params: Params) -> Tensor:
        return F.softplus(-params["logits"])

    def moment_match(self, count: Tensor, total: Tensor, current: Params, *, prior: float,
                     min_variance: float) -> Params:
        """``logits = log(count + β) − log(Σx + β)`` (``β = prior``; the MLE ``p = count / (count + Σx)`` at ``β = 0``),
        clamped to ``±MAX_LOGIT``."""
        return {"logits": log_ratio(count, total[..., 0], prior, MAX_LOGIT)}

    def sample(self, params: Params) -> Tensor:
        """``⌊log U / log(1 − p)⌋`` (inversion)."""
        with torch.no_grad():
            logits = params["logits"]
            return torch.floor(torch.log(uniform(logits.shape, logits)) / F.logsigmoid(-logits))

    def mode(self, params: Params) -> Tensor:
        return torch.zeros_like(params["logits"])

    def mean(self, params: Params) -> Tensor:
        """``(1 − p) / p = exp(−logits)``."""
        return torch.exp(-params["logits"])

    def variance(self, params: Params) -> Tensor:
        """``(1 − p) / p² = exp(−logits) (1 + exp(−logits))``."""
        odds = torch.exp(-params["logits"])
        return odds * (1 + odds)
