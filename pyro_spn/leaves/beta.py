"""Beta leaves (values in ``[0, 1]``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor
from torch.distributions import constraints

from .base import LOG_FLOOR, Leaf, Params, safe_log
from .gamma import standard_gamma, standard_gamma_rsample

#: Newton steps of the M-step (quadratic convergence from the start of :func:`beta_concentrations`).
NEWTON_STEPS = 12


def beta_concentrations(mean_log: Tensor, mean_log1m: Tensor) -> tuple[Tensor, Tensor]:
    """The maximum-likelihood ``(α, β)`` of a Beta law from ``a = E[log x]`` and ``b = E[log(1 − x)]`` (equal shapes).

    The log-likelihood ``(α − 1) a + (β − 1) b − log B(α, β)`` is concave (an exponential family in its natural
    parameters); Newton's method starts from the solution of its stationarity conditions ``ψ(α) − ψ(α + β) = a``,
    ``ψ(β) − ψ(α + β) = b`` with ``ψ(z) ≈ log(z − ½)`` (Minka, *Estimating a Dirichlet distribution*), and every step
    is shortened so that it at most halves either concentration.
    """
    first, second = mean_log.exp(), mean_log1m.exp()
    closed = (first + second).clamp(max=1 - 1e-12)  # <= 1 by Jensen's inequality
    total = (1 - closed / 2) / (1 - closed)
    alpha, beta = 0.5 + first * (total - 0.5), 0.5 + second * (total - 0.5)
    for _ in range(NEWTON_STEPS):
        psi_total, tri_total = torch.digamma(alpha + beta), torch.polygamma(1, alpha + beta)
        grad_alpha = mean_log - torch.digamma(alpha) + psi_total
        grad_beta = mean_log1m - torch.digamma(beta) + psi_total
        h_alpha, h_beta = tri_total - torch.polygamma(1, alpha), tri_total - torch.polygamma(1, beta)
        det = h_alpha * h_beta - tri_total.square()
        step_alpha = (tri_total * grad_beta - h_beta * grad_alpha) / det
        step_beta = (tri_total * grad_alpha - h_alpha * grad_beta) / det
        inf = torch.full_like(alpha, math.inf)
        limit = torch.minimum(torch.where(step_alpha < 0, -0.5 * alpha / step_alpha, inf),
                              torch.where(step_beta < 0, -0.5 * beta / step_beta, inf)).clamp(max=1.0)
        limit = limit.nan_to_num(nan=0.0)
        alpha, beta = alpha + limit * step_alpha.nan_to_num(nan=0.0), beta + limit * step_beta.nan_to_num(nan=0.0)
    return alpha, beta


@dataclass(frozen=True)
class Beta(Leaf):
    """Beta leaves ``Beta(concentration1 α, concentration0 β)``, parameterized by ``log_concentration1`` and
    ``log_concentration0`` (initialized with ``α, β ~ U(1, 5)``).

    Exponential family: ``T(x) = (log x, log(1 − x))``, ``η = (α − 1, β − 1)``,
    ``A = log Γ(α) + log Γ(β) − log Γ(α + β)``, ``h = 0``. Differentiable draws are pathwise: ``X = G₁ / (G₁ + G₂)``
    with reparameterized ``G₁ ~ Gamma(α)``, ``G₂ ~ Gamma(β)`` (implicit gradients); coupled to an exact draw ``x``,
    ``G₁ = x S`` and ``G₂ = (1 − x) S`` with ``S ~ Gamma(α + β)`` drawn afresh (``S`` is independent of ``X``), so
    that the draw is ``x`` itself with a pathwise gradient. The temperature is not used. Exact draws are kept within
    ``[tiny, 1 − ε/2]``; the density at 0 or 1 is taken at the nearest such value (where ``α < 1`` or ``β < 1`` the
    mode lies there: where both are, the end of the larger density there, 0 where ``α <= β``).
    """

    name: ClassVar[str] = "beta"

    @property
    def num_statistics(self) -> int:
        return 2

    @property
    def support(self) -> constraints.Constraint:
        return constraints.unit_interval

    def parameter_shapes(self, num_features: int) -> dict[str, tuple[int, tuple[int, ...]]]:
        return {"log_concentration1": (num_features, ()), "log_concentration0": (num_features, ())}

    def init_parameters(self, shape: torch.Size, generator: torch.Generator) -> Params:
        return {"log_concentration1": torch.log(1.0 + 4.0 * torch.rand(shape, generator=generator)),
                "log_concentration0": torch.log(1.0 + 4.0 * torch.rand(shape, generator=generator))}

    def constrain(self, raw: Params) -> Params:
        return {"log_concentration1": raw["log_concentration1"], "log_concentration0": raw["log_concentration0"]}

    @staticmethod
    def _alpha_beta(params: Params) -> tuple[Tensor, Tensor]:
        alpha, beta = torch.broadcast_tensors(params["log_concentration1"].exp(), params["log_concentration0"].exp())
        return alpha, beta

    def natural_parameters(self, params: Params) -> Tensor:
        alpha, beta = self._alpha_beta(params)
        return torch.stack([alpha - 1, beta - 1], dim=-1)

    def log_normalizer(self, params: Params) -> Tensor:
        alpha, beta = self._alpha_beta(params)
        return torch.lgamma(alpha) + torch.lgamma(beta) - torch.lgamma(alpha + beta)

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return torch.stack([safe_log(x), safe_log(1 - x)], dim=-1)

    def moment_match(self, count: Tensor, total: Tensor, current: Params, *, prior: float,
                     min_variance: float) -> Params:
        """The MLE by :func:`beta_concentrations` of ``E[log x]`` and ``E[log(1 − x)]``; logs clamped to
        ``±LOG_FLOOR``."""
        safe = count.clamp_min(torch.finfo(count.dtype).tiny)[..., None]
        alpha, beta = beta_concentrations(*(total / safe).unbind(-1))
        return {"log_concentration1": alpha.log().clamp(LOG_FLOOR, -LOG_FLOOR),
                "log_concentration0": beta.log().clamp(LOG_FLOOR, -LOG_FLOOR)}

    @staticmethod
    def _clamp(x: Tensor) -> Tensor:
        finfo = torch.finfo(x.dtype)
        return x.clamp(finfo.tiny, 1 - finfo.eps / 2)

    def sample(self, params: Params) -> Tensor:
        with torch.no_grad():
            return self.relaxed(params, 1.0)

    def relaxed(self, params: Params, temperature: Tensor | float, value: Tensor | None = None) -> Tensor:
        alpha, beta = self._alpha_beta(params)
        if value is None:
            first, second = standard_gamma_rsample(alpha), standard_gamma_rsample(beta)
        else:
            with torch.no_grad():
                total = torch._standard_gamma((alpha + beta).detach())
                x = self._clamp(value.detach().expand(alpha.shape))
            first, second = standard_gamma(alpha, x * total), standard_gamma(beta, (1 - x) * total)
        draw = first / (first + second)
        return draw + (self._clamp(draw) - draw).detach()

    def mode(self, params: Params) -> Tensor:
        alpha, beta = self._alpha_beta(params)
        interior = (alpha - 1) / (alpha + beta - 2)
        edge = (alpha > beta).to(alpha.dtype)  # both <= 1 or one of them: the end the density rises to
        at_zero = (alpha <= 1) & (beta > 1)
        at_one = (alpha > 1) & (beta <= 1)
        mode = torch.where((alpha > 1) & (beta > 1), interior, edge)
        mode = torch.where(at_zero, torch.zeros_like(mode), torch.where(at_one, torch.ones_like(mode), mode))
        return self._clamp(mode)

    def mean(self, params: Params) -> Tensor:
        alpha, beta = self._alpha_beta(params)
        return alpha / (alpha + beta)

    def variance(self, params: Params) -> Tensor:
        alpha, beta = self._alpha_beta(params)
        total = alpha + beta
        return alpha * beta / (total.square() * (total + 1))
