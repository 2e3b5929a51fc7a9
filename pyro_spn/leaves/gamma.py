"""Gamma leaves (positive values)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor
from torch.distributions import constraints

from .base import Leaf, Params, safe_log


def standard_gamma(concentration: Tensor, draw: Tensor) -> Tensor:
    """The standard Gamma draw ``draw`` (of ``Gamma(concentration, 1)``; broadcast to ``concentration``'s shape)
    with the implicit reparameterization gradient ``∂x/∂α = −(∂F(x; α)/∂α) / p(x; α)`` w.r.t. ``concentration``
    (the one ``torch.distributions.Gamma.rsample`` uses): the pathwise gradient of this very draw. The draw is floored
    at the smallest normal number, as torch's draws are."""
    draw = draw.detach().clamp_min(torch.finfo(draw.dtype).tiny).expand(concentration.shape)
    if not concentration.requires_grad:
        return draw
    slope = torch._standard_gamma_grad(concentration.detach(), draw)
    return draw + (concentration - concentration.detach()) * slope


def standard_gamma_rsample(concentration: Tensor) -> Tensor:
    """A fresh reparameterized ``Gamma(concentration, 1)`` draw (exact law, implicit gradient)."""
    with torch.no_grad():
        draw = torch._standard_gamma(concentration.detach())
    return standard_gamma(concentration, draw)


@dataclass(frozen=True)
class Gamma(Leaf):
    """Gamma leaves ``Gamma(concentration α, rate β)``, parameterized by ``log_concentration`` and ``log_rate``
    (initialized with ``α ~ U(1, 5)``, ``β ≈ 1``).

    Exponential family: ``T(x) = (log x, x)``, ``η = (α − 1, −β)``, ``A = log Γ(α) − α log β``, ``h = 0``.
    Differentiable draws are pathwise (exact reparameterization with the implicit gradient of
    ``torch.distributions.Gamma.rsample``); coupled to an exact draw ``x``, the draw ``x`` itself with that
    gradient. The temperature is not used. The density at ``x = 0`` (the mode where ``α < 1``) is taken at the
    smallest positive normal number.
    """

    name: ClassVar[str] = "gamma"

    @property
    def num_statistics(self) -> int:
        return 2

    @property
    def support(self) -> constraints.Constraint:
        """``x >= 0``, as torch's (0 holds the limit density, taken at the smallest normal number)."""
        return constraints.nonnegative

    def parameter_shapes(self, num_features: int) -> dict[str, tuple[int, tuple[int, ...]]]:
        return {"log_concentration": (num_features, ()), "log_rate": (num_features, ())}

    def init_parameters(self, shape: torch.Size, generator: torch.Generator) -> Params:
        return {"log_concentration": torch.log(1.0 + 4.0 * torch.rand(shape, generator=generator)),
                "log_rate": 0.3 * torch.randn(shape, generator=generator)}

    def constrain(self, raw: Params) -> Params:
        return {"log_concentration": raw["log_concentration"], "log_rate": raw["log_rate"]}

    @staticmethod
    def _alpha_beta(params: Params) -> tuple[Tensor, Tensor]:
        return params["log_concentration"].exp(), params["log_rate"].exp()

    def natural_parameters(self, params: Params) -> Tensor:
        alpha, beta = self._alpha_beta(params)
        return torch.stack(torch.broadcast_tensors(alpha - 1, -beta), dim=-1)

    def log_normalizer(self, params: Params) -> Tensor:
        alpha = params["log_concentration"].exp()
        return torch.lgamma(alpha) - alpha * params["log_rate"]

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return torch.stack([safe_log(x), x], dim=-1)

    def sample(self, params: Params) -> Tensor:
        with torch.no_grad():
            return self.relaxed(params, 1.0)

    def relaxed(self, params: Params, temperature: Tensor | float, value: Tensor | None = None) -> Tensor:
        alpha, beta = self._alpha_beta(params)
        alpha, beta = torch.broadcast_tensors(alpha, beta)
        if value is None:
            return standard_gamma_rsample(alpha) / beta
        return standard_gamma(alpha, value * beta.detach()) / beta

    def mode(self, params: Params) -> Tensor:
        alpha, beta = self._alpha_beta(params)
        return (alpha - 1).clamp_min(0) / beta

    def mean(self, params: Params) -> Tensor:
        alpha, beta = self._alpha_beta(params)
        return alpha / beta

    def variance(self, params: Params) -> Tensor:
        alpha, beta = self._alpha_beta(params)
        return alpha / beta.square()
