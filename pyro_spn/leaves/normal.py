"""Gaussian leaves."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import constraints

from .. import checks
from .base import Leaf, Params

_SOFTPLUS_ONE = math.log(math.e - 1.0)  # softplus(_SOFTPLUS_ONE) == 1
_HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


def inverse_softplus(y: Tensor) -> Tensor:
    """``softplus⁻¹(y)`` for ``y > 0``: ``y + log(1 − e^(−y))``."""
    return y + torch.log(-torch.expm1(-y))


def gaussian_moment_match(count: Tensor, total: Tensor, min_variance: float, min_scale: float) -> Params:
    """``loc = E[t]`` and ``raw_scale = softplus⁻¹(scale − min_scale)`` with ``scale² = max(E[t²] − loc²,
    min_variance)`` (the maximizer under that constraint) from ``count [*B]`` and ``total = (Σ q t, Σ q t²)``
    ``[*B, 2]``: the M-step of Normal (``t = x``) and LogNormal (``t = log x``) leaves."""
    safe = count.clamp_min(torch.finfo(count.dtype).tiny)
    loc = total[..., 0] / safe
    variance = (total[..., 1] / safe - loc.square()).clamp_min(min_variance)
    return {"loc": loc, "raw_scale": inverse_softplus((variance.sqrt() - min_scale).clamp_min(1e-12))}


@dataclass(frozen=True)
class Normal(Leaf):
    """Gaussian leaves ``N(loc, scale)``, reparameterized as ``loc + scale · ε``.

    Parameters: ``loc`` and ``scale = softplus(raw_scale) + min_scale`` (initialized at ``loc ~ N(0, 1)``,
    ``scale ≈ 1``).

    Args:
        min_scale: the lower bound of the scale.
    """

    min_scale: float = 1e-3
    name: ClassVar[str] = "normal"

    def __post_init__(self) -> None:
        object.__setattr__(self, "min_scale", checks.positive("min_scale", self.min_scale))

    @property
    def num_statistics(self) -> int:
        return 2

    @property
    def support(self) -> constraints.Constraint:
        return constraints.real

    def parameter_shapes(self, num_features: int) -> dict[str, tuple[int, tuple[int, ...]]]:
        return {"loc": (num_features, ()), "raw_scale": (num_features, ())}

    def init_parameters(self, shape: torch.Size, generator: torch.Generator) -> Params:
        return {"loc": torch.randn(shape, generator=generator),
                "raw_scale": _SOFTPLUS_ONE + 0.1 * torch.randn(shape, generator=generator)}

    def constrain(self, raw: Params) -> Params:
        return {"loc": raw["loc"], "scale": F.softplus(raw["raw_scale"]) + self.min_scale}

    def natural_parameters(self, params: Params) -> Tensor:
        precision = params["scale"].pow(-2)
        return torch.stack([params["loc"] * precision, -0.5 * precision], dim=-1)

    def log_normalizer(self, params: Params) -> Tensor:
        loc, scale = params["loc"], params["scale"]
        return 0.5 * (loc / scale).pow(2) + scale.log()

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return torch.stack([x, x * x], dim=-1)

    def cancellation(self, params: Params) -> Tensor:
        """``3 (loc / scale)²``: the terms ``x·loc/scale²``, ``x²/(2 scale²)`` and ``loc²/(2 scale²)`` add up to at
        most ``3 (x − loc)²/(2 scale²) + 3 loc²/scale²``, and only the second part can exceed ``3 |log p(x)|``."""
        return 3.0 * (params["loc"] / params["scale"]).detach().square()

    def log_base_measure(self, x: Tensor) -> Tensor:
        return torch.full_like(x, -_HALF_LOG_TWO_PI)

    def moment_match(self, count: Tensor, total: Tensor, current: Params, *, prior: float,
                     min_variance: float) -> Params:
        """:func:`gaussian_moment_match` of ``(x, x²)``."""
        return gaussian_moment_match(count, total, min_variance, self.min_scale)

    def log_prob(self, x: Tensor, params: Params) -> Tensor:
        z = (x - params["loc"]) / params["scale"]
        return -0.5 * z * z - params["scale"].log() - _HALF_LOG_TWO_PI

    def sample(self, params: Params) -> Tensor:
        with torch.no_grad():
            return self.relaxed(params, 1.0)

    def relaxed(self, params: Params, temperature: Tensor | float, value: Tensor | None = None) -> Tensor:
        loc, scale = params["loc"], params["scale"]
        if value is None:
            eps = torch.randn(torch.broadcast_shapes(loc.shape, scale.shape), dtype=loc.dtype, device=loc.device)
        else:
            eps = ((value - loc) / scale).detach()
        return loc + scale * eps

    def mode(self, params: Params) -> Tensor:
        return params["loc"].expand(torch.broadcast_shapes(params["loc"].shape, params["scale"].shape))

    mean = mode

    def variance(self, params: Params) -> Tensor:
        return params["scale"].square().expand(torch.broadcast_shapes(params["loc"].shape, params["scale"].shape))

    def gaussian_relaxation(self, params: Params) -> tuple[Tensor, Tensor] | None:
        return params["loc"], params["scale"]
