"""Binomial leaves (counts ``0..total_count``, e.g. 8-bit pixels)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import constraints

from .. import checks
from .base import LogitLeaf, Params


@dataclass(frozen=True)
class Binomial(LogitLeaf):
    """Binomial leaves ``B(total_count, p)``, parameterized by ``logits = logit p`` (initialized with
    ``p ~ U(0.25, 0.75)``).

    Differentiable draws use the Gaussian approximation ``Np + sqrt(Np(1 − p)) · ε``; straight-through draws
    are exact Binomial counts whose gradient is that of the approximation at the same point.

    Args:
        total_count: ``N >= 1``, the number of trials (255 for 8-bit pixels).
        clamp: clamp relaxed draws to ``[0, N]``, passing the gradient through the clamp unchanged (off by
            default, as in the paper; relaxed draws are not samples of the leaf and may leave ``[0, N]``).
    """

    total_count: int
    clamp: bool = False
    name: ClassVar[str] = "binomial"

    def __post_init__(self) -> None:
        object.__setattr__(self, "total_count", checks.integer("total_count", self.total_count))
        checks.flag("clamp", self.clamp)

    @property
    def support(self) -> constraints.Constraint:
        return constraints.integer_interval(0, self.total_count)

    @property
    def trials(self) -> int:
        return self.total_count

    def log_normalizer(self, params: Params) -> Tensor:
        return self.total_count * F.softplus(params["logits"])

    def log_base_measure(self, x: Tensor) -> Tensor:
        n = self.total_count
        return math.lgamma(n + 1) - torch.lgamma(x + 1) - torch.lgamma(n - x + 1)

    def _moments(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """The Gaussian approximation's ``(mean, std)``, the std floored at 1e-6.

        The std is ``exp((log N + log p + log(1 − p)) / 2)`` from log-sigmoids, so that it and its gradient stay
        finite where ``p(1 − p)`` underflows (``|logits|`` beyond ~88 in float32: a square root of 0 has an
        infinite slope).
        """
        mean = self.total_count * torch.sigmoid(logits)
        log_variance = math.log(self.total_count) + F.logsigmoid(logits) + F.logsigmoid(-logits)
        return mean, (0.5 * log_variance).exp().clamp_min(1e-6)

    def sample(self, params: Params) -> Tensor:
        with torch.no_grad():
            logits = params["logits"]
            count = torch.full_like(logits, float(self.total_count))
            return torch.binomial(count, torch.sigmoid(logits))

    def relaxed(self, params: Params, temperature: Tensor | float, value: Tensor | None = None) -> Tensor:
        mean, std = self._moments(params["logits"])
        eps = torch.randn_like(mean) if value is None else ((value - mean) / std).detach()
        draw = mean + std * eps
        if self.clamp:
            draw = draw + (draw.clamp(0.0, float(self.total_count)) - draw).detach()
        return draw

    def gaussian_relaxation(self, params: Params) -> tuple[Tensor, Tensor] | None:
        return None if self.clamp else self._moments(params["logits"])

    def mode(self, params: Params) -> Tensor:
        probs = torch.sigmoid(params["logits"])
        return torch.floor((self.total_count + 1) * probs).clamp(max=self.total_count)

    def mean(self, params: Params) -> Tensor:
        return self.total_count * torch.sigmoid(params["logits"])

    def variance(self, params: Params) -> Tensor:
        """``N p (1 − p)``."""
        logits = params["logits"]
        return self.total_count * torch.sigmoid(logits) * torch.sigmoid(-logits)
