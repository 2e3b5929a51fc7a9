"""The leaf spec interface: what a leaf family is, independent of any circuit.

A :class:`Leaf` is an immutable description of a family of univariate distributions, its *hyper-parameters*
only (``Binomial(total_count=255)``): it can be reused by any number of circuits, compared, printed, hashed and
stored in a config (:meth:`Leaf.to_config`). The circuit that uses it owns the parameters: it asks the spec
for their initial values (:meth:`Leaf.init_parameters`, unconstrained tensors ``[C, F, I, R, *E]`` for ``C``
channels, ``F`` variables, ``I`` components and ``R`` repetitions) and passes them back, constrained by
:meth:`Leaf.constrain`, to every other method.

Every leaf family is an exponential family, ``log p(x) = T(x)·η − A(η) + h(x)``, and the spec exposes its pieces
(:meth:`~Leaf.natural_parameters`, :meth:`~Leaf.log_normalizer`, :meth:`~Leaf.sufficient_statistics`,
:meth:`~Leaf.log_base_measure`) so that the circuit can evaluate all leaf regions with one batched matmul
instead of materializing ``[N, C, F, I, R]`` log-probabilities; :meth:`~Leaf.cancellation` says how much
precision that sum can lose.

All methods that take parameters ``params`` (a dict of tensors of batch shape ``[*B]``, plus each parameter's
own event dims) broadcast them against their values. Draws come in three forms:

* :meth:`~Leaf.sample`: an exact draw, no gradient;
* :meth:`~Leaf.relaxed`: a differentiable (reparameterized or relaxed) draw. Given an exact draw ``value``,
  the noise is taken *conditional on it*, so that the relaxed draw is the relaxation of that very draw;
* straight-through (:func:`straight_through`): the exact draw forward, bit for bit inside the support, and the
  coupled relaxed draw's gradient backward.

EM (:class:`pyro_spn.em.EM`) fits a family through its M-step, :meth:`Leaf.moment_match`: from the expected count
and expected sufficient statistics of every component, the unconstrained parameters that maximize the expected
complete log-likelihood ``η·Σ q T(x) − Σ q · A(η)`` (closed forms, or a few Newton steps where there are none).
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.distributions import constraints

Params = dict[str, Tensor]

#: The M-steps clamp logits to ``[-MAX_LOGIT, MAX_LOGIT]`` (probabilities within about 1e-13 of 0 and 1) and
#: log-parameters (log-rates, log-probabilities, log-weights) to ``[LOG_FLOOR, -LOG_FLOOR]``.
MAX_LOGIT = 30.0
LOG_FLOOR = -60.0


def uniform(shape: torch.Size, like: Tensor) -> Tensor:
    """Uniform draws in the open interval ``(0, 1)``, of ``like``'s dtype and device."""
    tiny = torch.finfo(like.dtype).tiny
    return torch.rand(shape, dtype=like.dtype, device=like.device).clamp(tiny, 1.0 - 1e-7)


def safe_log(x: Tensor) -> Tensor:
    """``log x`` with ``x`` floored at the dtype's smallest normal number: finite at 0, the circuit's placeholder for
    missing entries (multiplied by 0 afterwards) and the edge of the support of Gamma, Beta and LogNormal leaves,
    whose density there is taken at ``0⁺``."""
    return torch.log(x.clamp_min(torch.finfo(x.dtype).tiny))


def straight_through(value: Tensor, relaxed: Tensor) -> Tensor:
    """``value`` forward (exactly), the gradient of ``relaxed`` backward."""
    return value + (relaxed - relaxed.detach())


class Leaf(abc.ABC):
    """Base class of leaf specs (frozen dataclasses of hyper-parameters).

    Subclasses set :attr:`name` (the family's name in configs and on the command line) and implement the
    abstract methods; :meth:`log_prob` and :meth:`num_parameters` have generic implementations.
    """

    #: The family's name in configs (``"normal"``, ``"binomial"``, ...).
    name: ClassVar[str]

    # -- the family -----------------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def num_statistics(self) -> int:
        """``S``, the length of the sufficient statistic of one entry."""

    @property
    @abc.abstractmethod
    def support(self) -> constraints.Constraint:
        """The support of every component (per entry)."""

    # -- parameters -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def parameter_shapes(self, num_features: int) -> dict[str, tuple[int, tuple[int, ...]]]:
        """The unconstrained parameters of ``num_features`` variables: ``name → (variables, event shape)``.

        A parameter of ``(F_p, E)`` is stored as a tensor ``[C, F_p, I, R, *E]``.
        """

    @abc.abstractmethod
    def init_parameters(self, shape: torch.Size, generator: torch.Generator) -> Params:
        """Initial unconstrained parameters for ``shape = [C, F, I, R]`` components, drawn from ``generator``;
        the names and shapes of :meth:`parameter_shapes`."""

    @abc.abstractmethod
    def constrain(self, raw: Params) -> Params:
        """The constrained parameters (each ``[C, F, I, R, *E]``) of unconstrained ones."""

    def num_parameters(self, num_channels: int, num_features: int, num_components: int,
                       num_repetitions: int) -> int:
        """The number of scalar parameters of ``[C, F, I, R]`` components (arithmetic, nothing is built)."""
        per_component = sum(count * math.prod(event)
                            for count, event in self.parameter_shapes(num_features).values())
        return num_channels * num_components * num_repetitions * per_component

    # -- the exponential family -------------------------------------------------------------------------
    @abc.abstractmethod
    def natural_parameters(self, params: Params) -> Tensor:
        """``η`` of the components ``params``, shape ``[*B, S]``."""

    @abc.abstractmethod
    def log_normalizer(self, params: Params) -> Tensor:
        """``A(η)`` of the components ``params``, shape ``[*B]``."""

    @abc.abstractmethod
    def sufficient_statistics(self, x: Tensor) -> Tensor:
        """``T(x)`` for ``x`` of shape ``[*B]`` (values in the support); returns ``[*B, S]``."""

    def log_base_measure(self, x: Tensor) -> Tensor:
        """``h(x)``, same shape as ``x``."""
        return torch.zeros_like(x)

    def cancellation(self, params: Params) -> Tensor | None:
        """How much ``T(x)·η − A(η)`` can cancel, per component ``[*B]`` (no gradient): summed in a dtype of
        precision ``ε``, an entry's ``log p(x) − h(x)`` is off by at most about ``ε · (3 |log p(x)| + κ)``.

        ``None`` (the default) where the terms are never much larger than the result beyond what the family's
        own closed form rounds (the circuit then contracts them in its own dtype); otherwise the circuit sums
        them in float64 and recomputes by :meth:`log_prob` the values whose ``κ`` is too large even for that
        (:meth:`pyro_spn.layers.LeafLayer.log_likelihood`).
        """
        return None

    def log_prob(self, x: Tensor, params: Params) -> Tensor:
        """Log-density (log-mass) of ``x`` under the components ``params`` (broadcast); ``x`` in the support."""
        stats = self.sufficient_statistics(x)
        eta = self.natural_parameters(params)
        return (stats * eta).sum(-1) - self.log_normalizer(params) + self.log_base_measure(x)

    # -- draws and summaries ----------------------------------------------------------------------------
    @abc.abstractmethod
    def sample(self, params: Params) -> Tensor:
        """An exact draw from each component, shape ``[*B]``, no gradient."""

    @abc.abstractmethod
    def relaxed(self, params: Params, temperature: Tensor | float, value: Tensor | None = None) -> Tensor:
        """A differentiable draw, shape ``[*B]``; with ``value``, the relaxation of that exact draw."""

    @abc.abstractmethod
    def mode(self, params: Params) -> Tensor:
        """The most probable value of each component, shape ``[*B]``."""

    @abc.abstractmethod
    def mean(self, params: Params) -> Tensor:
        """The mean of each component, shape ``[*B]``."""

    def variance(self, params: Params) -> Tensor:
        """The variance of each component, shape ``[*B]`` (every built-in family has the exact closed form; the
        default raises ``NotImplementedError``)."""
        raise NotImplementedError(f"{type(self).__name__} leaves have no variance")

    def gaussian_relaxation(self, params: Params) -> tuple[Tensor, Tensor] | None:
        """``(μ, σ)``, each ``[*B]``, when every component's relaxed draw is exactly ``μ + σ ε`` with
        ``ε ~ N(0, 1)`` (then sums of relaxed draws have a closed form); ``None`` otherwise."""
        return None

    # -- EM -------------------------------------------------------------------------------------------
    @property
    def maximizable(self) -> bool:
        """Whether EM can fit the family: it implements :meth:`moment_match`."""
        return type(self).moment_match is not Leaf.moment_match

    def maximize(self, count: Tensor, total: Tensor, current: Params, *, prior: float,
                 min_variance: float) -> Params:
        """EM's M-step: :meth:`moment_match`, with NaN for the components of zero count (the caller keeps their
        parameters).

        Args:
            count: ``[C, F, I, R]`` expected counts of the components (float64, ``>= 0``).
            total: ``[C, F, I, R, S]`` expected sufficient statistics ``Σ q T(x)`` (float64; for a
                :class:`~pyro_spn.leaves.Mixed` leaf, each group's first ``S_g`` entries).
            current: the unconstrained parameters now (the names and shapes of :meth:`init_parameters`).
            prior: a pseudo-count ``>= 0`` of the discrete families' conjugate priors (see :meth:`moment_match`).
            min_variance: ``> 0``, the smallest variance of Gaussian leaves (of ``log x`` for log-normal ones).

        Returns:
            The new unconstrained parameters, float64, the shapes of ``current``.
        """
        fitted = self.moment_match(count, total, {name: p.detach().double() for name, p in current.items()},
                                   prior=prior, min_variance=min_variance)
        unused = count <= 0
        return {name: p.masked_fill(unused.reshape(unused.shape + (1,) * (p.dim() - unused.dim())), math.nan)
                for name, p in fitted.items()}

    def moment_match(self, count: Tensor, total: Tensor, current: Params, *, prior: float,
                     min_variance: float) -> Params:
        """The unconstrained parameters maximizing ``η·total − count·A(η)`` per component (the arguments and result of
        :meth:`maximize`; ``current`` in float64; entries of zero count may hold any value). Families without an
        M-step keep this default, which raises ``ValueError``."""
        raise ValueError(f"leaf: EM has no M-step for {type(self).__name__} leaves")

    # -- configs --------------------------------------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        """The spec as a JSON-serializable dict, ``{"type": name, **hyper-parameters}``
        (:func:`pyro_spn.leaves.leaf_from_config` reads it back)."""
        assert dataclasses.is_dataclass(self)
        return {"type": self.name, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}


def log_ratio(numerator: Tensor, denominator: Tensor, prior: float, bound: float) -> Tensor:
    """``log(numerator + prior) − log(denominator + prior)`` clamped to ``[-bound, bound]`` (0 where both are 0): the
    M-step of a log-odds or log-rate (``numerator``, ``denominator`` ``>= 0``, any shape)."""
    ratio = torch.log(numerator.clamp_min(0.0) + prior) - torch.log(denominator.clamp_min(0.0) + prior)
    return ratio.nan_to_num(nan=0.0).clamp(-bound, bound)


class LogitParameters:
    """One real, unconstrained parameter per component, ``logits``, starting at ``logit p`` with
    ``p ~ U(0.25, 0.75)`` (Bernoulli, Binomial, Geometric, NegativeBinomial)."""

    def parameter_shapes(self, num_features: int) -> dict[str, tuple[int, tuple[int, ...]]]:
        return {"logits": (num_features, ())}

    def init_parameters(self, shape: torch.Size, generator: torch.Generator) -> Params:
        return {"logits": torch.logit(0.25 + 0.5 * torch.rand(shape, generator=generator))}

    def constrain(self, raw: Params) -> Params:
        return {"logits": raw["logits"]}


class LogitLeaf(LogitParameters, Leaf):
    """A family with ``logits`` (:class:`LogitParameters`) and the identity as sufficient statistic
    (``η = logits``): Bernoulli and Binomial (``trials`` of them)."""

    @property
    def num_statistics(self) -> int:
        return 1

    @property
    @abc.abstractmethod
    def trials(self) -> int:
        """The number of trials ``N`` (``x ∈ 0..N``)."""

    def moment_match(self, count: Tensor, total: Tensor, current: Params, *, prior: float,
                     min_variance: float) -> Params:
        """``logits = log(Σx + β) − log(N·count − Σx + β)``, the posterior mode under a ``Beta(β + 1, β + 1)`` prior
        (``β = prior``), clamped to ``±MAX_LOGIT``."""
        successes = total[..., 0]
        return {"logits": log_ratio(successes, self.trials * count - successes, prior, MAX_LOGIT)}

    def natural_parameters(self, params: Params) -> Tensor:
        return params["logits"][..., None]

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return x[..., None]


class CountLeaf(Leaf):
    """A family of counts ``{0, 1, 2, …}`` with the identity as sufficient statistic (Poisson, Geometric,
    NegativeBinomial). Differentiable draws use the Gaussian with the component's mean and variance,
    ``μ + σ · ε`` (a relaxation: the draws are real numbers, and may be negative); coupled to an exact draw ``k``,
    ``ε = (k − μ) / σ``, so that the straight-through gradient is that of the Gaussian at the same point, as for
    :class:`~pyro_spn.leaves.Binomial`. The temperature is not used."""

    @property
    def num_statistics(self) -> int:
        return 1

    @property
    def support(self) -> constraints.Constraint:
        return constraints.nonnegative_integer

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return x[..., None]

    def gaussian_relaxation(self, params: Params) -> tuple[Tensor, Tensor] | None:
        """``(mean, std)``, the std floored at 1e-6 (before the square root, which keeps its slope finite)."""
        return self.mean(params), self.variance(params).clamp_min(1e-12).sqrt()

    def relaxed(self, params: Params, temperature: Tensor | float, value: Tensor | None = None) -> Tensor:
        moments = self.gaussian_relaxation(params)
        assert moments is not None
        mean, std = moments
        eps = torch.randn_like(mean) if value is None else ((value - mean) / std).detach()
        return mean + std * eps
