"""Bernoulli leaves (binary data)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import constraints

from .base import LogitLeaf, Params, uniform


@dataclass(frozen=True)
class Bernoulli(LogitLeaf):
    """Bernoulli leaves, parameterized by ``logits = logit p`` (initialized with ``p ~ U(0.25, 0.75)``);
    differentiable draws through the binary Concrete relaxation ``sigmoid((logit p + L) / τ)`` with logistic
    noise ``L``."""

    name: ClassVar[str] = "bernoulli"

    @property
    def support(self) -> constraints.Constraint:
        return constraints.boolean

    @property
    def trials(self) -> int:
        return 1

    def log_normalizer(self, params: Params) -> Tensor:
        return F.softplus(params["logits"])

    def sample(self, params: Params) -> Tensor:
        with torch.no_grad():
            return torch.bernoulli(torch.sigmoid(params["logits"]))

    def relaxed(self, params: Params, temperature: Tensor | float, value: Tensor | None = None) -> Tensor:
        logits = params["logits"]
        u = uniform(logits.shape, logits)
        if value is None:
            noise = torch.log(u) - torch.log1p(-u)
        else:
            # logistic noise conditioned on the draw (value == 1  <=>  logits + noise > 0), drawn in log space:
            # the tail beyond -logits has probability sigmoid(±logits), which 1 - sigmoid(.) would round away
            eta, one = logits.detach(), value > 0.5
            log_tail = torch.where(one, F.logsigmoid(eta), F.logsigmoid(-eta)) + torch.log(u)
            logit_tail = log_tail - torch.log(-torch.expm1(log_tail))
            noise = torch.where(one, -logit_tail, logit_tail)
            noise = torch.where(one, torch.maximum(noise, torch.nextafter(-eta, -eta + 1)),
                                torch.minimum(noise, torch.nextafter(-eta, -eta - 1)))
        return torch.sigmoid((logits + noise) / temperature)

    def mode(self, params: Params) -> Tensor:
        return (params["logits"] > 0).to(params["logits"].dtype)

    def mean(self, params: Params) -> Tensor:
        return torch.sigmoid(params["logits"])

    def variance(self, params: Params) -> Tensor:
        """``p (1 − p)``."""
        return torch.sigmoid(params["logits"]) * torch.sigmoid(-params["logits"])
