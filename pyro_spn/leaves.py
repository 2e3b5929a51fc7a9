"""Leaf layers: ``K`` components per variable, channel and repetition.

A leaf layer holds, for each of ``C`` channels, ``F`` variables, ``K`` components and ``R`` repetitions,
one univariate distribution (parameters of shape ``[C, F, K, R, *param_event]``). A leaf component of
a variable is the product of its ``C`` channel distributions.

Every leaf type is an exponential family, ``log p(x) = T(x)·η − A(η) + h(x)``, and exposes its pieces
(:meth:`Leaf.natural_parameters`, :meth:`Leaf.log_normalizer`, :meth:`Leaf.sufficient_statistics`,
:meth:`Leaf.log_base_measure`) so that the circuit can evaluate all leaf regions with one batched matmul
instead of materializing ``[N, C, F, K, R]`` log-probabilities.

Sampling comes in three forms, all with the shapes of the parameters they are given:

* ``sample``: an exact draw, no gradient;
* ``relaxed``: a differentiable (reparameterized or relaxed) draw. Normal: ``μ + σ ε``. Binomial: its
  Gaussian approximation ``Np + sqrt(Np(1 − p)) ε``. Bernoulli: the binary Concrete relaxation.
  Categorical: Gumbel-Softmax. Given an exact draw ``value``, the noise is taken *conditional on it*,
  so that the relaxed draw is the relaxation of that very draw;
* straight-through (``rsample(..., hard=True)``): the exact draw forward, bit for bit inside the
  support, and the coupled relaxed draw's gradient backward.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from numbers import Real

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import constraints

from .sampling import conditional_gumbel

Params = dict[str, Tensor]

_SOFTPLUS_ONE = math.log(math.e - 1.0)  # softplus(_SOFTPLUS_ONE) == 1


def _uniform(shape: torch.Size, like: Tensor) -> Tensor:
    """Uniform draws in the open interval (0, 1)."""
    tiny = torch.finfo(like.dtype).tiny
    return torch.rand(shape, dtype=like.dtype, device=like.device).clamp(tiny, 1.0 - 1e-7)


def _straight_through(value: Tensor, relaxed: Tensor) -> Tensor:
    """``value`` forward (exactly), the gradient of ``relaxed`` backward."""
    return value + (relaxed - relaxed.detach())


class Leaf(nn.Module, metaclass=abc.ABCMeta):
    """Base class of leaf layers.

    A leaf is created with its hyper-parameters only (``Binomial(total_count=255)``); the circuit that
    receives it calls :meth:`build` with the shape ``(C, F, K, R)``, which creates the parameters.
    """

    num_statistics: int  # S, the length of the sufficient statistic per entry

    def __init__(self) -> None:
        super().__init__()
        self.shape: tuple[int, int, int, int] | None = None

    # -- construction ------------------------------------------------------------------------------
    def build(self, num_channels: int, num_features: int, num_components: int, num_repetitions: int,
              generator: torch.Generator) -> None:
        """Creates the parameters for ``[C, F, K, R]`` components, initialized from ``generator``."""
        if self.shape is not None:
            raise ValueError(
                f"leaf: this {type(self).__name__} is already part of a circuit; pass a new instance"
            )
        shape = (num_channels, num_features, num_components, num_repetitions)
        self._init_parameters(torch.Size(shape), generator)
        self.shape = shape

    @abc.abstractmethod
    def _init_parameters(self, shape: torch.Size, generator: torch.Generator) -> None:
        """Creates the unconstrained parameters of ``shape = [C, F, K, R]`` components."""

    def _check_built(self) -> None:
        if self.shape is None:
            raise RuntimeError(f"{type(self).__name__} has no parameters yet: give it to a RatSPN first")

    # -- the distribution of every component ----------------------------------------------------------
    @property
    @abc.abstractmethod
    def support(self) -> constraints.Constraint:
        """The support of every component (per channel entry)."""

    @abc.abstractmethod
    def params(self) -> Params:
        """Constrained parameters, each ``[C, F, K, R, *param_event]``."""

    def natural_parameters(self) -> Tensor:
        """``η``, shape ``[C, F, K, R, S]``."""
        return self.natural_parameters_of(self.params())

    def log_normalizer(self) -> Tensor:
        """``A(η)``, shape ``[C, F, K, R]``."""
        return self.log_normalizer_of(self.params())

    @abc.abstractmethod
    def sufficient_statistics(self, x: Tensor) -> Tensor:
        """``T(x)`` for ``x`` of shape ``[*B]`` (values in the support); returns ``[*B, S]``."""

    def log_base_measure(self, x: Tensor) -> Tensor:
        """``h(x)``, same shape as ``x``."""
        return torch.zeros_like(x)

    # -- operations on parameters of any batch shape ``[*B]`` (``params`` broadcast against values) ----
    def log_prob_params(self, x: Tensor, params: Params) -> Tensor:
        """Log-density of ``x`` under components ``params`` (broadcast); ``x`` must be in the support."""
        stats = self.sufficient_statistics(x)
        eta = self.natural_parameters_of(params)
        return (stats * eta).sum(-1) - self.log_normalizer_of(params) + self.log_base_measure(x)

    @abc.abstractmethod
    def natural_parameters_of(self, params: Params) -> Tensor:
        """``η`` of the components ``params``, shape ``[*B, S]``."""

    @abc.abstractmethod
    def log_normalizer_of(self, params: Params) -> Tensor:
        """``A(η)`` of the components ``params``, shape ``[*B]``."""

    @abc.abstractmethod
    def sample_params(self, params: Params) -> Tensor:
        """An exact draw from each component, shape ``[*B]``, no gradient."""

    @abc.abstractmethod
    def relaxed_params(self, params: Params, temperature: Tensor | float, value: Tensor | None = None) -> Tensor:
        """A differentiable draw, shape ``[*B]``; with ``value``, the relaxation of that exact draw."""

    @abc.abstractmethod
    def mode_params(self, params: Params) -> Tensor:
        """The most probable value of each component, shape ``[*B]``."""

    def gaussian_relaxation(self) -> tuple[Tensor, Tensor] | None:
        """``(μ, σ)``, each ``[C, F, K, R]``, when every component's relaxed draw is exactly ``μ + σ ε`` with
        ``ε ~ N(0, 1)`` (then sums of relaxed draws have a closed form); ``None`` otherwise."""
        return None

    @abc.abstractmethod
    def mean_params(self, params: Params) -> Tensor:
        """The mean of each component, shape ``[*B]``."""

    # -- the same over all components of the layer ------------------------------------------------------
    def log_prob(self, x: Tensor) -> Tensor:
        """Log-likelihood of every component.

        Args:
            x: ``[N, C, F]``; NaN entries are marginalized (contribute 0).

        Returns:
            ``[N, C, F, K, R]``.
        """
        self._check_built()
        missing = torch.isnan(x)
        x = torch.where(missing, torch.zeros_like(x), x)[..., None, None]
        params = {k: v.unsqueeze(0) for k, v in self.params().items()}
        log_prob = self.log_prob_params(x, params)
        return torch.where(missing[..., None, None], torch.zeros_like(log_prob), log_prob)

    def sample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        """Exact draws from every component, shape ``[*sample_shape, C, F, K, R]``."""
        with torch.no_grad():
            return self.sample_params(self._expanded_params(sample_shape))

    def rsample(self, sample_shape: Sequence[int] = (), temperature: Tensor | float = 1.0,
                hard: bool = True) -> Tensor:
        """Differentiable draws from every component, shape ``[*sample_shape, C, F, K, R]``.

        With ``hard=True`` (straight-through) the values are exact draws and the gradient is the
        relaxation's; with ``hard=False`` the values are the relaxed draws themselves.
        """
        params = self._expanded_params(sample_shape)
        if not hard:
            return self.relaxed_params(params, temperature)
        value = self.sample_params(params)
        return _straight_through(value, self.relaxed_params(params, temperature, value))

    def mode(self) -> Tensor:
        """The mode of every component, shape ``[C, F, K, R]``."""
        self._check_built()
        return self.mode_params(self.params())

    def mean(self) -> Tensor:
        """The mean of every component, shape ``[C, F, K, R]``."""
        self._check_built()
        return self.mean_params(self.params())

    def _expanded_params(self, sample_shape: Sequence[int]) -> Params:
        self._check_built()
        sample_shape = torch.Size(sample_shape)
        return {name: p.expand(sample_shape + p.shape) for name, p in self.params().items()}

    def extra_repr(self) -> str:
        return "" if self.shape is None else "C={}, F={}, K={}, R={}".format(*self.shape)


class Normal(Leaf):
    """Gaussian leaves ``N(loc, scale)``, reparameterized as ``loc + scale · ε``.

    Args:
        min_scale: lower bound of the scale (``scale = softplus(raw) + min_scale``).
    """

    num_statistics = 2

    def __init__(self, min_scale: float = 1e-3) -> None:
        super().__init__()
        if isinstance(min_scale, bool) or not isinstance(min_scale, Real) or not 0 < min_scale < math.inf:
            raise ValueError(f"min_scale must be a finite number > 0, got {min_scale!r}")
        self.min_scale = float(min_scale)

    def _init_parameters(self, shape: torch.Size, generator: torch.Generator) -> None:
        self.loc = nn.Parameter(torch.randn(shape, generator=generator))
        self.raw_scale = nn.Parameter(_SOFTPLUS_ONE + 0.1 * torch.randn(shape, generator=generator))

    @property
    def support(self) -> constraints.Constraint:
        return constraints.real

    def params(self) -> Params:
        return {"loc": self.loc, "scale": F.softplus(self.raw_scale) + self.min_scale}

    def natural_parameters_of(self, params: Params) -> Tensor:
        precision = params["scale"].pow(-2)
        return torch.stack([params["loc"] * precision, -0.5 * precision], dim=-1)

    def log_normalizer_of(self, params: Params) -> Tensor:
        loc, scale = params["loc"], params["scale"]
        return 0.5 * (loc / scale).pow(2) + scale.log()

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return torch.stack([x, x * x], dim=-1)

    def log_base_measure(self, x: Tensor) -> Tensor:
        return torch.full_like(x, -0.5 * math.log(2 * math.pi))

    def log_prob_params(self, x: Tensor, params: Params) -> Tensor:
        z = (x - params["loc"]) / params["scale"]
        return -0.5 * z * z - params["scale"].log() - 0.5 * math.log(2 * math.pi)

    def sample_params(self, params: Params) -> Tensor:
        with torch.no_grad():
            return self.relaxed_params(params, 1.0)

    def relaxed_params(self, params: Params, temperature: Tensor | float, value: Tensor | None = None) -> Tensor:
        loc, scale = params["loc"], params["scale"]
        shape = torch.broadcast_shapes(loc.shape, scale.shape)
        if value is None:
            eps = torch.randn(shape, dtype=loc.dtype, device=loc.device)
        else:
            eps = ((value - loc) / scale).detach()
        return loc + scale * eps

    def mode_params(self, params: Params) -> Tensor:
        return params["loc"].expand(torch.broadcast_shapes(params["loc"].shape, params["scale"].shape))

    def gaussian_relaxation(self) -> tuple[Tensor, Tensor] | None:
        params = self.params()
        return params["loc"], params["scale"]

    mean_params = mode_params


class Binomial(Leaf):
    """Binomial leaves ``B(total_count, p)``.

    Differentiable draws use the Gaussian approximation ``Np + sqrt(Np(1 − p)) · ε``; straight-through
    draws are exact Binomial counts whose gradient is that of the approximation at the same point.

    Args:
        total_count: ``N >= 1``, the number of trials (255 for 8-bit pixels).
        clamp: clamp relaxed draws to ``[0, N]``, passing the gradient through the clamp unchanged (off by
            default, as in the paper; relaxed draws are not samples of the leaf and may leave ``[0, N]``).
    """

    num_statistics = 1

    def __init__(self, total_count: int, clamp: bool = False) -> None:
        super().__init__()
        if isinstance(total_count, bool) or not isinstance(total_count, int) or total_count < 1:
            raise ValueError(f"total_count must be an integer >= 1, got {total_count!r}")
        self.total_count = total_count
        self.clamp = bool(clamp)

    def _init_parameters(self, shape: torch.Size, generator: torch.Generator) -> None:
        probs = 0.25 + 0.5 * torch.rand(shape, generator=generator)
        self.logits = nn.Parameter(torch.logit(probs))

    @property
    def support(self) -> constraints.Constraint:
        return constraints.integer_interval(0, self.total_count)

    def params(self) -> Params:
        return {"logits": self.logits}

    def natural_parameters_of(self, params: Params) -> Tensor:
        return params["logits"][..., None]

    def log_normalizer_of(self, params: Params) -> Tensor:
        return self.total_count * F.softplus(params["logits"])

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return x[..., None]

    def log_base_measure(self, x: Tensor) -> Tensor:
        n = self.total_count
        return math.lgamma(n + 1) - torch.lgamma(x + 1) - torch.lgamma(n - x + 1)

    def _moments(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        probs = torch.sigmoid(logits)
        mean = self.total_count * probs
        std = (mean * torch.sigmoid(-logits)).sqrt().clamp_min(1e-6)
        return mean, std

    def sample_params(self, params: Params) -> Tensor:
        with torch.no_grad():
            logits = params["logits"]
            count = torch.full_like(logits, float(self.total_count))
            return torch.binomial(count, torch.sigmoid(logits))

    def relaxed_params(self, params: Params, temperature: Tensor | float, value: Tensor | None = None) -> Tensor:
        mean, std = self._moments(params["logits"])
        if value is None:
            eps = torch.randn_like(mean)
        else:
            eps = ((value - mean) / std).detach()
        draw = mean + std * eps
        if self.clamp:
            draw = draw + (draw.clamp(0.0, float(self.total_count)) - draw).detach()
        return draw

    def gaussian_relaxation(self) -> tuple[Tensor, Tensor] | None:
        return None if self.clamp else self._moments(self.logits)

    def mode_params(self, params: Params) -> Tensor:
        probs = torch.sigmoid(params["logits"])
        return torch.floor((self.total_count + 1) * probs).clamp(max=self.total_count)

    def mean_params(self, params: Params) -> Tensor:
        return self.total_count * torch.sigmoid(params["logits"])

    def extra_repr(self) -> str:
        return f"total_count={self.total_count}, " + super().extra_repr()


class Bernoulli(Leaf):
    """Bernoulli leaves; differentiable draws through the binary Concrete relaxation
    ``sigmoid((logit p + L) / τ)`` with logistic noise ``L``."""

    num_statistics = 1

    def _init_parameters(self, shape: torch.Size, generator: torch.Generator) -> None:
        probs = 0.25 + 0.5 * torch.rand(shape, generator=generator)
        self.logits = nn.Parameter(torch.logit(probs))

    @property
    def support(self) -> constraints.Constraint:
        return constraints.boolean

    def params(self) -> Params:
        return {"logits": self.logits}

    def natural_parameters_of(self, params: Params) -> Tensor:
        return params["logits"][..., None]

    def log_normalizer_of(self, params: Params) -> Tensor:
        return F.softplus(params["logits"])

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return x[..., None]

    def sample_params(self, params: Params) -> Tensor:
        with torch.no_grad():
            return torch.bernoulli(torch.sigmoid(params["logits"]))

    def relaxed_params(self, params: Params, temperature: Tensor | float, value: Tensor | None = None) -> Tensor:
        logits = params["logits"]
        u = _uniform(logits.shape, logits)
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

    def mode_params(self, params: Params) -> Tensor:
        return (params["logits"] > 0).to(params["logits"].dtype)

    def mean_params(self, params: Params) -> Tensor:
        return torch.sigmoid(params["logits"])


class Categorical(Leaf):
    """Categorical leaves over ``{0, …, num_categories − 1}``.

    Differentiable draws use Gumbel-Softmax ``y = softmax((log p + g) / τ)``. ``relaxed_params`` returns
    the expected category ``Σ_c c · y_c`` (ordinal data, the layout the circuit's samples use);
    :meth:`relaxed_one_hot` returns ``y`` itself.

    Args:
        num_categories: ``V >= 2``.
    """

    num_statistics: int

    def __init__(self, num_categories: int) -> None:
        super().__init__()
        if isinstance(num_categories, bool) or not isinstance(num_categories, int) or num_categories < 2:
            raise ValueError(f"num_categories must be an integer >= 2, got {num_categories!r}")
        self.num_categories = num_categories
        self.num_statistics = num_categories

    def _init_parameters(self, shape: torch.Size, generator: torch.Generator) -> None:
        self.logits = nn.Parameter(0.5 * torch.randn(shape + (self.num_categories,), generator=generator))

    @property
    def support(self) -> constraints.Constraint:
        return constraints.integer_interval(0, self.num_categories - 1)

    def params(self) -> Params:
        return {"logits": self.logits}

    def natural_parameters_of(self, params: Params) -> Tensor:
        return params["logits"].log_softmax(-1)

    def log_normalizer_of(self, params: Params) -> Tensor:
        return params["logits"].new_zeros(params["logits"].shape[:-1])

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return F.one_hot(x.long(), self.num_categories).to(x.dtype)

    def log_prob_params(self, x: Tensor, params: Params) -> Tensor:
        log_probs = params["logits"].log_softmax(-1)
        shape = torch.broadcast_shapes(x.shape, log_probs.shape[:-1])
        index = x.long().expand(shape)[..., None]
        return log_probs.expand(shape + log_probs.shape[-1:]).gather(-1, index)[..., 0]

    def sample_params(self, params: Params) -> Tensor:
        with torch.no_grad():
            logits = params["logits"]
            gumbel = -torch.log(-torch.log(_uniform(logits.shape, logits)))
            return (logits + gumbel).argmax(-1).to(logits.dtype)

    def relaxed_one_hot(self, params: Params, temperature: Tensor | float, value: Tensor | None = None) -> Tensor:
        """Gumbel-Softmax draw ``y``, shape ``[*B, V]``; with ``value``, the Gumbel noise is drawn
        conditional on ``argmax(log p + g) == value``."""
        log_probs = params["logits"].log_softmax(-1)
        if value is None:
            perturbed = log_probs.detach() - torch.log(-torch.log(_uniform(log_probs.shape, log_probs)))
        else:
            perturbed = conditional_gumbel(log_probs, value.expand(log_probs.shape[:-1]))
        gumbel = (perturbed - log_probs.detach()).detach()
        return ((log_probs + gumbel) / temperature).softmax(-1)

    def relaxed_params(self, params: Params, temperature: Tensor | float, value: Tensor | None = None) -> Tensor:
        y = self.relaxed_one_hot(params, temperature, value)
        categories = torch.arange(self.num_categories, dtype=y.dtype, device=y.device)
        return (y * categories).sum(-1)

    def mode_params(self, params: Params) -> Tensor:
        return params["logits"].argmax(-1).to(params["logits"].dtype)

    def mean_params(self, params: Params) -> Tensor:
        probs = params["logits"].softmax(-1)
        categories = torch.arange(self.num_categories, dtype=probs.dtype, device=probs.device)
        return (probs * categories).sum(-1)

    def extra_repr(self) -> str:
        return f"num_categories={self.num_categories}, " + super().extra_repr()


class _MixedSupport(constraints.Constraint):
    """Per-variable supports: values ``[*B, *event_shape]`` whose trailing elements are the ``C·F`` entries."""

    def __init__(self, entry_type: Tensor, supports: Sequence[constraints.Constraint]) -> None:
        super().__init__()
        self.entry_type = entry_type  # [C·F] group index of every entry
        self.supports = tuple(supports)

    def check(self, value: Tensor) -> Tensor:
        flat = value.reshape(-1, self.entry_type.numel())
        entry_type = self.entry_type.to(value.device)
        ok = torch.zeros_like(flat, dtype=torch.bool)
        for group, support in enumerate(self.supports):
            ok |= (entry_type == group) & support.check(flat)
        return ok.reshape(value.shape)

    def __repr__(self) -> str:
        return f"MixedSupport({', '.join(map(repr, self.supports))})"


class Mixed(Leaf):
    """Different leaf types over consecutive groups of variables, e.g. Binomial pixels and Gaussian latents.

    ``Mixed([(Binomial(total_count=255), 784), (Normal(), 16)])`` makes variables ``0..783`` Binomial and
    ``784..799`` Gaussian; use it with ``RatSPN((800,), ..., leaf=...)``. The group sizes must add up to
    the circuit's number of variables ``F``.

    Every group keeps its own parameters over its own variables. :meth:`params` widens them to all ``F``
    variables and adds a ``"type"`` entry (the group of every variable), which travels with the parameters
    through every gather and expand, so that each operation picks the value of each variable's own type.
    """

    def __init__(self, groups: Sequence[tuple[Leaf, int]]) -> None:
        super().__init__()
        groups = list(groups)
        if not groups or any(
            not isinstance(g, tuple) or len(g) != 2 or not isinstance(g[0], Leaf) or isinstance(g[1], bool)
            or not isinstance(g[1], int) or g[1] < 1 for g in groups
        ):
            raise ValueError(f"groups must be a non-empty list of (leaf, number of variables >= 1), got {groups!r}")
        self.groups = nn.ModuleList(leaf for leaf, _ in groups)
        self.sizes = tuple(size for _, size in groups)
        self.num_statistics = max(leaf.num_statistics for leaf, _ in groups)

    def _init_parameters(self, shape: torch.Size, generator: torch.Generator) -> None:
        num_channels, num_features, num_components, num_repetitions = shape
        if sum(self.sizes) != num_features:
            raise ValueError(
                f"leaf: the Mixed group sizes {self.sizes} add up to {sum(self.sizes)}, "
                f"but the circuit has {num_features} variables"
            )
        for leaf, size in zip(self.groups, self.sizes, strict=True):
            leaf.build(num_channels, size, num_components, num_repetitions, generator)
        group_of_feature = torch.repeat_interleave(torch.arange(len(self.sizes)), torch.tensor(self.sizes))
        self.register_buffer("feature_type", group_of_feature.expand(num_channels, num_features).contiguous())

    @property
    def support(self) -> constraints.Constraint:
        self._check_built()
        return _MixedSupport(self.feature_type.flatten(), [leaf.support for leaf in self.groups])

    def _widen(self, p: Tensor, start: int) -> Tensor:
        """``[C, F_g, K, R, *E]`` → ``[C, F, K, R, *E]``; other groups' slots repeat variable 0 (any valid value)."""
        num_features = self.feature_type.shape[1]
        filler = p[:, :1]
        before = filler.expand((p.shape[0], start) + p.shape[2:])
        after = filler.expand((p.shape[0], num_features - start - p.shape[1]) + p.shape[2:])
        return torch.cat([before, p, after], dim=1)

    def params(self) -> Params:
        self._check_built()
        out = {"type": self.feature_type[:, :, None, None].expand(self.shape)}
        start = 0
        for group, (leaf, size) in enumerate(zip(self.groups, self.sizes, strict=True)):
            for name, p in leaf.params().items():
                out[f"{group}.{name}"] = self._widen(p, start)
            start += size
        return out

    @staticmethod
    def _group_params(params: Params, group: int) -> Params:
        prefix = f"{group}."
        return {name[len(prefix):]: p for name, p in params.items() if name.startswith(prefix)}

    @staticmethod
    def _pick(group_type: Tensor, values: Sequence[Tensor]) -> Tensor:
        """Per entry, the value of its group: ``values[group_type]`` (broadcast)."""
        out = values[0]
        for group in range(1, len(values)):
            out = torch.where(group_type == group, values[group], out)
        return out

    def _per_group(self, params: Params, fn, value: Tensor | None = None) -> Tensor:
        """Applies ``fn(leaf, group_params, safe_value)`` per group and picks each entry's own result; other
        groups' entries of ``value`` are replaced by 0, which lies in every leaf's support."""
        group_type = params["type"]
        results = []
        for group, leaf in enumerate(self.groups):
            safe = None if value is None else torch.where(group_type == group, value, torch.zeros_like(value))
            results.append(fn(leaf, self._group_params(params, group), safe))
        return self._pick(group_type, results)

    def _pad_statistics(self, t: Tensor) -> Tensor:
        return F.pad(t, (0, self.num_statistics - t.shape[-1]))

    def natural_parameters_of(self, params: Params) -> Tensor:
        group_type = params["type"][..., None]
        etas = [self._pad_statistics(leaf.natural_parameters_of(self._group_params(params, g)))
                for g, leaf in enumerate(self.groups)]
        return self._pick(group_type, etas)

    def log_normalizer_of(self, params: Params) -> Tensor:
        return self._per_group(params, lambda leaf, p, _: leaf.log_normalizer_of(p))

    def _by_feature(self, x: Tensor, fn) -> Tensor:
        """For ``x [*B, C, F]``: per group ``fn(leaf, safe x)``, picked by the group of each entry."""
        results = []
        for group, leaf in enumerate(self.groups):
            safe = torch.where(self.feature_type == group, x, torch.zeros_like(x))
            results.append(fn(leaf, safe))
        return results

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        """``T(x)`` for ``x [*B, C, F]`` (the circuit's layout); returns ``[*B, C, F, S]``."""
        stats = self._by_feature(x, lambda leaf, v: self._pad_statistics(leaf.sufficient_statistics(v)))
        return self._pick(self.feature_type[..., None], stats)

    def log_base_measure(self, x: Tensor) -> Tensor:
        """``h(x)`` for ``x [*B, C, F]``."""
        return self._pick(self.feature_type, self._by_feature(x, lambda leaf, v: leaf.log_base_measure(v)))

    def log_prob_params(self, x: Tensor, params: Params) -> Tensor:
        x = x.expand(torch.broadcast_shapes(x.shape, params["type"].shape))
        return self._per_group(params, lambda leaf, p, v: leaf.log_prob_params(v, p), x)

    def sample_params(self, params: Params) -> Tensor:
        return self._per_group(params, lambda leaf, p, _: leaf.sample_params(p))

    def relaxed_params(self, params: Params, temperature: Tensor | float, value: Tensor | None = None) -> Tensor:
        return self._per_group(params, lambda leaf, p, v: leaf.relaxed_params(p, temperature, v), value)

    def mode_params(self, params: Params) -> Tensor:
        return self._per_group(params, lambda leaf, p, _: leaf.mode_params(p))

    def gaussian_relaxation(self) -> tuple[Tensor, Tensor] | None:
        moments = [leaf.gaussian_relaxation() for leaf in self.groups]
        if any(m is None for m in moments):
            return None
        starts = [sum(self.sizes[:g]) for g in range(len(self.sizes))]
        group_type = self.feature_type[:, :, None, None]
        return tuple(
            self._pick(group_type, [self._widen(m[i], start) for m, start in zip(moments, starts, strict=True)])
            for i in range(2)
        )

    def mean_params(self, params: Params) -> Tensor:
        return self._per_group(params, lambda leaf, p, _: leaf.mean_params(p))

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}, " + super().extra_repr()
