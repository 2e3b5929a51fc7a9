"""Gamma leaves (positive values)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor
from torch.distributions import constraints

from .base import LOG_FLOOR, Leaf, Params, safe_log

#: Newton steps of the M-step's shape (each gains about twice the digits; 6 reach float64 precision from Minka's start).
NEWTON_STEPS = 6


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


def gamma_shape(log_mean: Tensor, mean_log: Tensor) -> Tensor:
    """The maximum-likelihood shape ``α`` of a Gamma law from ``log E[x]`` and ``E[log x]`` (any equal shapes):
    the root of ``log α − ψ(α) = s``, ``s = log E[x] − E[log x] >= 0``, by Minka's generalized Newton steps
    ``1/α ← 1/α + (log α − ψ(α) − s) / (α² (1/α − ψ'(α)))`` from ``α₀ = (3 − s + sqrt((s − 3)² + 24 s)) / (12 s)``
    (*Estimating a Gamma distribution*, 2002), ``s`` floored at 1e-12."""
    gap = (log_mean - mean_log).clamp_min(1e-12)
    alpha = (3 - gap + ((gap - 3).square() + 24 * gap).sqrt()) / (12 * gap)
    for _ in range(NEWTON_STEPS):
        residual = torch.log(alpha) - torch.digamma(alpha) - gap
        alpha = 1 / (1 / alpha + residual / (alpha.square() * (1 / alpha - torch.polygamma(1, alpha))))
    return alpha


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

    def moment_match(self, count: Tensor, total: Tensor, current: Params, *, prior: float,
                     min_variance: float) -> Params:
        """The MLE: the shape by :func:`gamma_shape` from ``E[log x]`` and ``E[x]``, then ``rate = α / E[x]``; logs
        clamped to ``±LOG_FLOOR``."""
        safe = count.clamp_min(torch.finfo(count.dtype).tiny)
        log_mean = safe_log(total[..., 1] / safe)
        log_alpha = torch.log(gamma_shape(log_mean, total[..., 0] / safe))
        return {"log_concentration": log_alpha.clamp(LOG_FLOOR, -LOG_FLOOR),
                "log_rate": (log_alpha - log_mean).clamp(LOG_FLOOR, -LOG_FLOOR)}

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
