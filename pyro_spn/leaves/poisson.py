"""Poisson leaves (counts ``0, 1, 2, …`` without an upper bound)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .base import LOG_FLOOR, CountLeaf, Params, log_ratio


@dataclass(frozen=True)
class Poisson(CountLeaf):
    """Poisson leaves ``Poisson(rate)``, parameterized by ``log_rate`` (the natural parameter; initialized with
    ``rate ~ U(1, 5)``).

    Exponential family: ``T(x) = x``, ``η = log rate``, ``A = rate``, ``h(x) = −log x!``. Differentiable draws are the
    Gaussian relaxation ``rate + sqrt(rate) · ε`` (:class:`~pyro_spn.leaves.base.CountLeaf`).
    """

    name: ClassVar[str] = "poisson"

    def parameter_shapes(self, num_features: int) -> dict[str, tuple[int, tuple[int, ...]]]:
        return {"log_rate": (num_features, ())}

    def init_parameters(self, shape: torch.Size, generator: torch.Generator) -> Params:
        return {"log_rate": torch.log(1.0 + 4.0 * torch.rand(shape, generator=generator))}

    def constrain(self, raw: Params) -> Params:
        return {"log_rate": raw["log_rate"]}

    def natural_parameters(self, params: Params) -> Tensor:
        return params["log_rate"][..., None]

    def log_normalizer(self, params: Params) -> Tensor:
        return params["log_rate"].exp()

    def log_base_measure(self, x: Tensor) -> Tensor:
        return -torch.lgamma(x + 1)

    def moment_match(self, count: Tensor, total: Tensor, current: Params, *, prior: float,
                     min_variance: float) -> Params:
        """``log rate = log(Σx + β) − log(count + β)`` (``β = prior``; the MLE ``Σx / count`` at ``β = 0``), clamped to
        ``±LOG_FLOOR``."""
        return {"log_rate": log_ratio(total[..., 0], count, prior, -LOG_FLOOR)}

    def sample(self, params: Params) -> Tensor:
        with torch.no_grad():
            return torch.poisson(params["log_rate"].exp())

    def mode(self, params: Params) -> Tensor:
        return torch.floor(params["log_rate"].exp())

    def mean(self, params: Params) -> Tensor:
        return params["log_rate"].exp()

    def variance(self, params: Params) -> Tensor:
        return params["log_rate"].exp()
