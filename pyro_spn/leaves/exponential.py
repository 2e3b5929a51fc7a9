"""Exponential leaves (waiting times, ``x >= 0``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor
from torch.distributions import constraints

from .base import LOG_FLOOR, Leaf, Params, log_ratio, uniform


@dataclass(frozen=True)
class Exponential(Leaf):
    """Exponential leaves ``Exp(rate)``, parameterized by ``log_rate`` (initialized near ``rate = 1``).

    Exponential family: ``T(x) = x``, ``η = −rate``, ``A = −log rate``, ``h = 0``. Differentiable draws are pathwise
    (exact reparameterization): ``E / rate`` with ``E ~ Exp(1)``; coupled to an exact draw ``x``, ``E = x · rate``.
    The temperature is not used.
    """

    name: ClassVar[str] = "exponential"

    @property
    def num_statistics(self) -> int:
        return 1

    @property
    def support(self) -> constraints.Constraint:
        return constraints.nonnegative

    def parameter_shapes(self, num_features: int) -> dict[str, tuple[int, tuple[int, ...]]]:
        return {"log_rate": (num_features, ())}

    def init_parameters(self, shape: torch.Size, generator: torch.Generator) -> Params:
        return {"log_rate": 0.3 * torch.randn(shape, generator=generator)}

    def constrain(self, raw: Params) -> Params:
        return {"log_rate": raw["log_rate"]}

    def natural_parameters(self, params: Params) -> Tensor:
        return -params["log_rate"].exp()[..., None]

    def log_normalizer(self, params: Params) -> Tensor:
        return -params["log_rate"]

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return x[..., None]

    def moment_match(self, count: Tensor, total: Tensor, current: Params, *, prior: float,
                     min_variance: float) -> Params:
        """``log rate = log(count + β) − log(Σx + β)`` (``β = prior``; the MLE ``count / Σx`` at ``β = 0``), clamped to
        ``±LOG_FLOOR``."""
        return {"log_rate": log_ratio(count, total[..., 0], prior, -LOG_FLOOR)}

    def sample(self, params: Params) -> Tensor:
        with torch.no_grad():
            return self.relaxed(params, 1.0)

    def relaxed(self, params: Params, temperature: Tensor | float, value: Tensor | None = None) -> Tensor:
        rate = params["log_rate"].exp()
        if value is None:
            standard = -torch.log(uniform(rate.shape, rate))
        else:
            standard = (value * rate).detach()
        return standard / rate

    def mode(self, params: Params) -> Tensor:
        return torch.zeros_like(params["log_rate"])

    def mean(self, params: Params) -> Tensor:
        return torch.exp(-params["log_rate"])

    def variance(self, params: Params) -> Tensor:
        return torch.exp(-2 * params["log_rate"])
