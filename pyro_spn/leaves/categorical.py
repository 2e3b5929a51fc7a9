"""Categorical leaves (ordinal or nominal values ``0..num_categories-1``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import constraints

from .. import checks
from ..gumbel import conditional_gumbel
from .base import LOG_FLOOR, Leaf, Params, uniform


@dataclass(frozen=True)
class Categorical(Leaf):
    """Categorical leaves over ``{0, …, num_categories − 1}``, parameterized by ``logits [..., V]``
    (initialized from ``N(0, 0.25)``).

    Differentiable draws use Gumbel-Softmax ``y = softmax((log p + g) / τ)``. :meth:`relaxed` returns the expected
    category ``Σ_c c · y_c`` (ordinal data, the layout the circuit's samples use); :meth:`relaxed_one_hot`
    returns ``y`` itself.

    Args:
        num_categories: ``V >= 2``.
    """

    num_categories: int
    name: ClassVar[str] = "categorical"

    def __post_init__(self) -> None:
        object.__setattr__(self, "num_categories", checks.integer("num_categories", self.num_categories, 2))

    @property
    def num_statistics(self) -> int:
        return self.num_categories

    @property
    def support(self) -> constraints.Constraint:
        return constraints.integer_interval(0, self.num_categories - 1)

    def parameter_shapes(self, num_features: int) -> dict[str, tuple[int, tuple[int, ...]]]:
        return {"logits": (num_features, (self.num_categories,))}

    def init_parameters(self, shape: torch.Size, generator: torch.Generator) -> Params:
        return {"logits": 0.5 * torch.randn(shape + (self.num_categories,), generator=generator)}

    def constrain(self, raw: Params) -> Params:
        return {"logits": raw["logits"]}

    def natural_parameters(self, params: Params) -> Tensor:
        return params["logits"].log_softmax(-1)

    def log_normalizer(self, params: Params) -> Tensor:
        return params["logits"].new_zeros(params["logits"].shape[:-1])

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return F.one_hot(x.long(), self.num_categories).to(x.dtype)

    def moment_match(self, count: Tensor, total: Tensor, current: Params, *, prior: float,
                     min_variance: float) -> Params:
        """``log p_v = log(count_v + β) − log(count + Vβ)`` (a ``Dirichlet(β + 1)`` prior, ``β = prior``), floored at
        ``LOG_FLOOR``."""
        log_probs = torch.log(total.clamp_min(0.0) + prior).clamp_min(LOG_FLOOR)
        return {"logits": log_probs - log_probs.logsumexp(-1, keepdim=True)}

    def log_prob(self, x: Tensor, params: Params) -> Tensor:
        log_probs = params["logits"].log_softmax(-1)
        shape = torch.broadcast_shapes(x.shape, log_probs.shape[:-1])
        index = x.long().expand(shape)[..., None]
        return log_probs.expand(shape + log_probs.shape[-1:]).gather(-1, index)[..., 0]

    def sample(self, params: Params) -> Tensor:
        with torch.no_grad():
            logits = params["logits"]
            gumbel = -torch.log(-torch.log(uniform(logits.shape, logits)))
            return (logits + gumbel).argmax(-1).to(logits.dtype)

    def relaxed_one_hot(self, params: Params, temperature: Tensor | float, value: Tensor | None = None) -> Tensor:
        """Gumbel-Softmax draw ``y``, shape ``[*B, V]``; with ``value``, the Gumbel noise is drawn
        conditional on ``argmax(log p + g) == value``."""
        log_probs = params["logits"].log_softmax(-1)
        if value is None:
            perturbed = log_probs.detach() - torch.log(-torch.log(uniform(log_probs.shape, log_probs)))
        else:
            perturbed = conditional_gumbel(log_probs, value.expand(log_probs.shape[:-1]))
        gumbel = (perturbed - log_probs.detach()).detach()
        return ((log_probs + gumbel) / temperature).softmax(-1)

    def relaxed(self, params: Params, temperature: Tensor | float, value: Tensor | None = None) -> Tensor:
        y = self.relaxed_one_hot(params, temperature, value)
        return (y * torch.arange(self.num_categories, dtype=y.dtype, device=y.device)).sum(-1)

    def mode(self, params: Params) -> Tensor:
        return params["logits"].argmax(-1).to(params["logits"].dtype)

    def mean(self, params: Params) -> Tensor:
        probs = params["logits"].softmax(-1)
        return (probs * torch.arange(self.num_categories, dtype=probs.dtype, device=probs.device)).sum(-1)

    def variance(self, params: Params) -> Tensor:
        """``Σ_c p_c (c − mean)²`` of the category as a number."""
        probs = params["logits"].softmax(-1)
        values = torch.arange(self.num_categories, dtype=probs.dtype, device=probs.device)
        mean = (probs * values).sum(-1, keepdim=True)
        return (probs * (values - mean).square()).sum(-1)
