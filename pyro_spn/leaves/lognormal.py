"""Log-normal leaves (positive values whose logarithm is Gaussian)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import constraints

from .. import checks
from .base import Leaf, Params, safe_log
from .normal import gaussian_moment_match

_SOFTPLUS_ONE = math.log(math.e - 1.0)  # softplus(_SOFTPLUS_ONE) == 1
_HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


@dataclass(frozen=True)
class LogNormal(Leaf):
    """Log-normal leaves ``exp(N(loc, scale))``, reparameterized as ``exp(loc + scale · ε)``.

    Parameters: ``loc`` and ``scale = softplus(raw_scale) + min_scale`` of ``log x`` (initialized at
    ``loc ~ N(0, 0.25)``, ``scale ≈ 0.5``).

    Exponential family: ``T(x) = (log x, log² x)``, ``η = (loc / scale², −1 / (2 scale²))``,
    ``A = loc² / (2 scale²) + log scale``, ``h(x) = −log x − ½ log 2π``. Differentiable draws are pathwise (exact);
    coupled to an exact draw ``x``, ``ε = (log x − loc) / scale``. The temperature is not used.

    Args:
        min_scale: the lower bound of the scale of ``log x``.
    """

    min_scale: float = 1e-3
    name: ClassVar[str] = "lognormal"

    def __post_init__(self) -> None:
        object.__setattr__(self, "min_scale", checks.positive("min_scale", self.min_scale))

    @property
    def num_statistics(self) -> int:
        return 2

    @property
    def support(self) -> constraints.Constraint:
        """``x >= 0``: 0, where the density vanishes, is admitted as a limit (the package's placeholder for missing
        entries is 0, which every leaf's support holds); its density is taken at the smallest normal number."""
        return constraints.nonnegative

    def parameter_shapes(self, num_features: int) -> dict[str, tuple[int, tuple[int, ...]]]:
        return {"loc": (num_features, ()), "raw_scale": (num_features, ())}

    def init_parameters(self, shape: torch.Size, generator: torch.Generator) -> Params:
        return {"loc": 0.5 * torch.randn(shape, generator=generator),
                "raw_scale": _SOFTPLUS_ONE - 1.0 + 0.1 * torch.randn(shape, generator=generator)}

    def constrain(self, raw: Params) -> Params:
        return {"loc": raw["loc"], "scale": F.softplus(raw["raw_scale"]) + self.min_scale}

    def natural_parameters(self, params: Params) -> Tensor:
        precision = params["scale"].pow(-2)
        return torch.stack(torch.broadcast_tensors(params["loc"] * precision, -0.5 * precision), dim=-1)

    def log_normalizer(self, params: Params) -> Tensor:
        loc, scale = params["loc"], params["scale"]
        return 0.5 * (loc / scale).pow(2) + scale.log()

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        log_x = safe_log(x)
        return torch.stack([log_x, log_x * log_x], dim=-1)

    def log_base_measure(self, x: Tensor) -> Tensor:
        return -safe_log(x) - _HALF_LOG_TWO_PI

    def moment_match(self, count: Tensor, total: Tensor, current: Params, *, prior: float,
                     min_variance: float) -> Params:
        """:func:`~pyro_spn.leaves.normal.gaussian_moment_match` of ``(log x, log² x)`` (``min_variance`` bounds the
        variance of ``log x``)."""
        return gaussian_moment_match(count, total, min_variance, self.min_scale)

    def cancellation(self, params: Params) -> Tensor:
        """``3 (loc / scale)²``, as for :class:`~pyro_spn.leaves.Normal` leaves of ``log x``."""
        return 3.0 * (params["loc"] / params["scale"]).detach().square()

    def log_prob(self, x: Tensor, params: Params) -> Tensor:
        log_x = safe_log(x)
        z = (log_x - params["loc"]) / params["scale"]
        return -0.5 * z * z - params["scale"].log() - log_x - _HALF_LOG_TWO_PI

    def sample(self, params: Params) -> Tensor:
        with torch.no_grad():
            return self.relaxed(params, 1.0)

    def relaxed(self, params: Params, temperature: Tensor | float, value: Tensor | None = None) -> Tensor:
        loc, scale = params["loc"], params["scale"]
        if value is None:
            eps = torch.randn(torch.broadcast_shapes(loc.shape, scale.shape), dtype=loc.dtype, device=loc.device)
        else:
            eps = ((safe_log(value) - loc) / scale).detach()
        return torch.exp(loc + scale * eps)

    def mode(self, params: Params) -> Tensor:
        return torch.exp(params["loc"] - params["scale"].square())

    def mean(self, params: Params) -> Tensor:
        return torch.exp(params["loc"] + 0.5 * params["scale"].square())

    def variance(self, params: Params) -> Tensor:
        """``(exp(scale²) − 1) exp(2 loc + scale²)``."""
        variance = params["scale"].square()
        return torch.expm1(variance) * torch.exp(2 * params["loc"] + variance)
