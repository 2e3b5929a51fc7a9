"""A generic leaf from any univariate exponential-family class of ``torch.distributions``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
import torch.distributions as D
from torch import Tensor
from torch.distributions import constraints

from .. import checks
from .base import MAX_LOGIT, Leaf, Params

#: The raw parameters of the reference points that identify a family's sufficient statistics and base measure
#: (the origin and a unit step along each parameter; see :class:`ExponentialFamily`).
_PROBE_STEP = 1.0
#: The M-step's Newton (Fisher-scoring) steps, and the halvings each may take
#: (see :meth:`ExponentialFamily.moment_match`).
NEWTON_STEPS = 20
HALVINGS = 8
#: The M-step stops early once no component's expected log-likelihood gains more than this, relative to its value.
TOLERANCE = 1e-10


@dataclass(frozen=True)
class ExponentialFamily(Leaf):
    """A leaf family from a univariate ``torch.distributions.ExponentialFamily`` class, by its name:
    ``ExponentialFamily("Gamma")``, ``ExponentialFamily("Chi2")``, ``ExponentialFamily("Normal")``, or with fixed
    hyper-parameters, ``ExponentialFamily("Gamma", fixed={"rate": 2.0})``.

    The learnable parameters are the class's ``arg_constraints`` that are not fixed (``logits`` rather than
    ``probs``), stored unconstrained and mapped by ``torch.distributions.biject_to`` of their constraint (initialized
    at ``biject_to(c)(N(0, 0.25))``, e.g. near 1 for positive ones).

    The exponential-family pieces come from torch: ``η`` is the class's ``_natural_params``, ``A`` its
    ``_log_normalizer``. Torch does not expose ``T(x)`` and ``h(x)``; since ``log p(x; η) + A(η) = T(x)·η + h(x)`` is
    affine in ``η``, they are identified by evaluating ``log p(x)`` at ``P + 1`` fixed reference parameters (the
    origin and a unit step along each raw parameter) and solving that small linear system in float64 (its
    pseudo-inverse is computed once). Where a natural parameter is constant (a fixed hyper-parameter), its statistic is
    absorbed into ``h``, which leaves ``T·η + h`` exact. The construction checks the composition against torch's own
    ``log_prob`` and raises ``ValueError`` for a class that is not a univariate exponential family, or lacks a mode,
    mean or variance. Evaluating the statistics costs ``P + 1`` ``log_prob`` calls: the dedicated leaves (Poisson,
    Gamma, ...) are faster.

    Draws: exact by ``sample``. Differentiable draws are ``rsample`` (pathwise) where torch has one, otherwise the
    Gaussian with the component's mean and variance, ``μ + σ ε`` (a relaxation). Coupled to an exact draw ``x``
    (straight-through), every family uses ``μ + σ (x − μ) / σ``: ``x`` itself, with the gradient of that
    location-scale reparameterization, the exact pathwise gradient for location-scale families (Normal,
    Exponential, Gamma of fixed concentration) and an approximation otherwise (use the dedicated Gamma and Beta
    leaves for their exact pathwise gradients). Modes are torch's: where torch's mode has an infinite density
    (Gamma with concentration below 1), prefer the dedicated leaf for MPE. Values outside the support (the circuit's
    placeholder for missing entries) and values where a reference density is 0 or infinite (a Gamma's at ``x = 0``)
    get statistics and base measure 0. The temperature is not used.

    Args:
        distribution: the name of the class in ``torch.distributions`` (or the class itself).
        fixed: hyper-parameters held fixed, ``name → number`` (stored as sorted pairs).
    """

    distribution: str
    fixed: tuple[tuple[str, float], ...] = ()
    name: ClassVar[str] = "exponential_family"

    def __post_init__(self) -> None:
        object.__setattr__(self, "distribution", _class_name(self.distribution))
        cls = self.torch_class
        object.__setattr__(self, "fixed", _fixed(cls, self.fixed))
        arguments = _arg_constraints(cls)
        fixed = dict(self.fixed)
        if "probs" in fixed or "logits" in fixed:  # two spellings of one parameter
            fixed.update(probs=math.nan, logits=math.nan)
        learnable = [name for name in arguments if name not in fixed]
        if "logits" in learnable and "probs" in learnable:
            learnable.remove("probs")
        if not learnable:
            raise ValueError(f"fixed: every parameter of {self.distribution} is fixed; nothing would be learned")
        transforms = {}
        for name in learnable:
            try:
                transforms[name] = D.biject_to(arguments[name])
            except NotImplementedError:
                raise ValueError(f"distribution: {self.distribution}'s parameter {name} has a constraint "
                                 f"({arguments[name]}) without a bijection") from None
        object.__setattr__(self, "_learnable", tuple(learnable))
        object.__setattr__(self, "_transforms", transforms)
        self._probe()

    # -- the torch class ------------------------------------------------------------------------------
    @property
    def torch_class(self) -> type[D.ExponentialFamily]:
        """The ``torch.distributions`` class."""
        cls = getattr(D, self.distribution)
        assert isinstance(cls, type) and issubclass(cls, D.ExponentialFamily)
        return cls

    @property
    def learnable(self) -> tuple[str, ...]:
        """The names of the learned parameters (``P`` of them)."""
        names: tuple[str, ...] = self.__dict__["_learnable"]
        return names

    def torch_distribution(self, params: Params) -> D.ExponentialFamily:
        """The torch distribution of the components ``params`` (batch shape ``[*B]``), without validation."""
        factory = cast(Any, self.torch_class)
        distribution: D.ExponentialFamily = factory(**params, **dict(self.fixed), validate_args=False)
        return distribution

    def _constrained(self, raw: Tensor) -> Params:
        """The constrained parameters of raw ``[*B, P]``."""
        transforms = self.__dict__["_transforms"]
        return {name: transforms[name](raw[..., k]) for k, name in enumerate(self.learnable)}

    def _probe(self) -> None:
        """Solves for the pseudo-inverse that gives ``(T(x), h(x))`` from ``log p(x) + A`` at the reference points,
        finds a value inside the support, and checks the composition (``ValueError`` where any of it fails)."""
        count = len(self.learnable)
        raw = torch.cat([torch.zeros(1, count), _PROBE_STEP * torch.eye(count)]).double()  # [P+1, P]
        reference = self._reference_distribution(raw)
        eta = torch.stack(torch.broadcast_tensors(*reference._natural_params), dim=-1)  # [P+1, S]
        log_normalizer = reference._log_normalizer(*reference._natural_params)  # [P+1]
        system = torch.cat([eta, torch.ones_like(eta[:, :1])], dim=-1)  # [P+1, S+1]
        object.__setattr__(self, "_reference", (raw, log_normalizer, torch.linalg.pinv(system), eta.shape[-1]))
        object.__setattr__(self, "_placeholder", _value_inside(reference, self.distribution))
        test = self._constrained(torch.linspace(0.3, -0.4, count, dtype=torch.float64)[None])
        x = torch.tensor([self.__dict__["_placeholder"]], dtype=torch.float64)
        composed = self.log_prob_by_pieces(x, test)
        expected = self.torch_distribution(test).log_prob(x)
        if not torch.allclose(composed, expected, rtol=1e-6, atol=1e-6):
            raise ValueError(f"distribution: {self.distribution}'s log-density is not T(x)·η − A(η) + h(x) in its "
                             f"natural parameters (got {composed.tolist()} instead of {expected.tolist()})")

    def _reference_distribution(self, raw: Tensor) -> D.ExponentialFamily:
        """The torch distribution at the raw parameters ``raw [P+1, P]``, checked to be a univariate exponential
        family with the pieces and summaries a leaf needs."""
        try:
            reference = self.torch_distribution(self._constrained(raw))
            if reference.event_shape != ():
                raise ValueError(f"distribution: {self.distribution} is not univariate (event shape "
                                 f"{tuple(reference.event_shape)})")
            reference._log_normalizer(*reference._natural_params)
            for summary in ("mode", "mean", "variance"):
                getattr(reference, summary)
        except (NotImplementedError, TypeError) as error:
            raise ValueError(f"distribution: {self.distribution} cannot be a leaf ({error})") from None
        return reference

    # -- the family -----------------------------------------------------------------------------------
    @property
    def num_statistics(self) -> int:
        count: int = self.__dict__["_reference"][3]
        return count

    @property
    def support(self) -> constraints.Constraint:
        raw = self.__dict__["_reference"][0][:1]
        return _support(self.torch_distribution(self._constrained(raw)))

    def parameter_shapes(self, num_features: int) -> dict[str, tuple[int, tuple[int, ...]]]:
        return {f"raw_{name}": (num_features, ()) for name in self.learnable}

    def init_parameters(self, shape: torch.Size, generator: torch.Generator) -> Params:
        return {f"raw_{name}": 0.5 * torch.randn(shape, generator=generator) for name in self.learnable}

    def constrain(self, raw: Params) -> Params:
        transforms = self.__dict__["_transforms"]
        return {name: transforms[name](raw[f"raw_{name}"]) for name in self.learnable}

    # -- the exponential family -------------------------------------------------------------------------
    def natural_parameters(self, params: Params) -> Tensor:
        natural = self.torch_distribution(params)._natural_params
        return torch.stack(torch.broadcast_tensors(*natural), dim=-1)

    def log_normalizer(self, params: Params) -> Tensor:
        distribution = self.torch_distribution(params)
        return distribution._log_normalizer(*distribution._natural_params).expand(distribution.batch_shape)

    def _pieces(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(T(x) [*B, S], h(x) [*B])`` by the reference points, in ``x``'s dtype; 0 outside the support and where a
        reference density is 0 or infinite there (a Gamma's at ``x = 0``)."""
        raw, log_normalizer, inverse, count = self.__dict__["_reference"]
        reference = self.torch_distribution(self._constrained(raw.to(x.device)))
        inside = _support(reference).check(x)
        safe = torch.where(inside, x, torch.full_like(x, self.__dict__["_placeholder"])).double()
        values = reference.log_prob(safe[..., None]) + log_normalizer.to(x.device)  # [*B, P+1]
        usable = inside & torch.isfinite(values).all(-1)
        values = torch.where(usable[..., None], values, torch.zeros_like(values))
        solved = (values @ inverse.to(x.device).T).to(x.dtype)  # [*B, S+1]
        return solved[..., :count], solved[..., count]

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return self._pieces(x)[0]

    def log_base_measure(self, x: Tensor) -> Tensor:
        return self._pieces(x)[1]

    # -- EM -------------------------------------------------------------------------------------------
    def moment_match(self, count: Tensor, total: Tensor, current: Params, *, prior: float,
                     min_variance: float) -> Params:
        """The MLE by moment matching, ``∇A(η) = E[T]``, solved by Newton's method from the ``current`` parameters.

        Each of at most :data:`NEWTON_STEPS` steps (fewer once none gains more than :data:`TOLERANCE`) linearizes
        the moment equations in the raw parameters ``θ``: ``(JᵀΣJ) Δ = Jᵀ(E[T] − ∇A(η))`` with ``J = ∂η/∂θ`` and
        ``Σ = ∇²A(η)`` (both by autograd of torch's ``_natural_params`` and ``_log_normalizer``; Fisher scoring,
        which is Newton's method on ``∇A(η) = E[T]`` mapped through ``θ ↦ η``). Natural parameters that fixed
        hyper-parameters hold constant drop out (their rows of ``J`` vanish). The step is halved (up to
        :data:`HALVINGS` times, else dropped) until the expected log-likelihood ``η·E[T] − A(η)`` does not decrease,
        so that EM stays monotone however far it is from converged; the raw parameters stay within ``±MAX_LOGIT``
        (a component whose optimum lies beyond, such as a Poisson rate of data that are all 0, stops there).
        ``prior`` and ``min_variance`` do not apply.
        """
        target = total / count.clamp_min(torch.finfo(count.dtype).tiny)[..., None]  # [*B, S]
        raw = torch.stack([current[f"raw_{name}"] for name in self.learnable], dim=-1)  # [*B, P]
        objective = self._expected_log_likelihood(raw, target)
        for _ in range(NEWTON_STEPS):
            raw, improved = self._line_search(raw, self._newton_step(raw, target), target, objective)
            gain, objective = (improved - objective).nan_to_num(nan=0.0), improved
            if bool((gain <= TOLERANCE * (1 + objective.abs())).all()):
                break
        return {f"raw_{name}": raw[..., k] for k, name in enumerate(self.learnable)}

    def _expected_log_likelihood(self, raw: Tensor, target: Tensor) -> Tensor:
        """``η·target − A(η)`` ``[*B]`` at raw parameters ``raw [*B, P]`` (``−inf`` where not finite)."""
        params = self._constrained(raw)
        value = (self.natural_parameters(params) * target).sum(-1) - self.log_normalizer(params)
        return torch.where(torch.isfinite(value), value, torch.full_like(value, -math.inf))

    def _newton_step(self, raw: Tensor, target: Tensor) -> Tensor:
        """The step ``Δ [*B, P]`` of :meth:`moment_match` at ``raw [*B, P]`` towards ``target [*B, S]`` (0 where it is
        not finite)."""
        with torch.enable_grad():
            theta = raw.detach().requires_grad_(True)
            eta = self.natural_parameters(self._constrained(theta))  # [*B, S]
            jacobian = _jacobian_rows(eta, theta)  # [*B, S, P]
            natural = eta.detach().requires_grad_(True)
            distribution = self.torch_distribution(self._constrained(raw.detach()))
            log_normalizer = distribution._log_normalizer(*natural.unbind(-1))
            mean = torch.autograd.grad(log_normalizer.sum(), natural, create_graph=True)[0]  # [*B, S]
            covariance = _jacobian_rows(mean, natural)  # [*B, S, S]
        transposed = jacobian.transpose(-1, -2)
        fisher = transposed @ covariance @ jacobian  # [*B, P, P]
        gradient = transposed @ (target - mean.detach())[..., None]  # [*B, P, 1]
        step = torch.linalg.solve_ex(fisher, gradient)[0][..., 0]
        return torch.where(torch.isfinite(step), step, torch.zeros_like(step))

    def _line_search(self, raw: Tensor, step: Tensor, target: Tensor, objective: Tensor) -> tuple[Tensor, Tensor]:
        """``(raw + 2⁻ᵏ step, its objective)`` for the smallest ``k < HALVINGS`` whose objective is at least
        ``objective [*B]``, per component; ``(raw, objective)`` where there is none. The candidates are clamped to
        ``±MAX_LOGIT`` (so that, e.g., ``exp(raw)`` stays a positive float32)."""
        accepted = torch.zeros_like(objective, dtype=torch.bool)
        for k in range(HALVINGS):
            candidate = (raw + 0.5**k * step).clamp(-MAX_LOGIT, MAX_LOGIT)
            value = self._expected_log_likelihood(candidate, target)
            better = ~accepted & (value >= objective) & torch.isfinite(value)
            raw = torch.where(better[..., None], candidate, raw)
            objective = torch.where(better, value, objective)
            accepted |= better
        return raw, objective

    def log_prob_by_pieces(self, x: Tensor, params: Params) -> Tensor:
        """``T(x)·η − A(η) + h(x)`` (what the circuit's matmul computes), for checks."""
        return super().log_prob(x, params)

    def log_prob(self, x: Tensor, params: Params) -> Tensor:
        return self.torch_distribution(params).log_prob(x)

    # -- draws and summaries ----------------------------------------------------------------------------
    def sample(self, params: Params) -> Tensor:
        with torch.no_grad():
            return self.torch_distribution(params).sample()

    def _moments(self, params: Params) -> tuple[Tensor, Tensor]:
        distribution = self.torch_distribution(params)
        return distribution.mean, distribution.variance.clamp_min(1e-12).sqrt()

    def relaxed(self, params: Params, temperature: Tensor | float, value: Tensor | None = None) -> Tensor:
        if value is None and self.torch_class.has_rsample:
            return self.torch_distribution(params).rsample()
        mean, std = self._moments(params)
        eps = torch.randn_like(mean) if value is None else ((value - mean) / std).detach()
        return mean + std * eps

    def gaussian_relaxation(self, params: Params) -> tuple[Tensor, Tensor] | None:
        return None if self.torch_class.has_rsample else self._moments(params)

    def mode(self, params: Params) -> Tensor:
        distribution = self.torch_distribution(params)
        mode = distribution.mode
        if bool(torch.isnan(mode).any()):  # a tie (Bernoulli with p = 1/2): the mean rounded down, or the mean
            mean = distribution.mean
            fallback = torch.floor(mean) if _support(distribution).is_discrete else mean
            mode = torch.where(torch.isnan(mode), fallback, mode)
        return mode

    def mean(self, params: Params) -> Tensor:
        return self.torch_distribution(params).mean

    def variance(self, params: Params) -> Tensor:
        return self.torch_distribution(params).variance

    # -- configs --------------------------------------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        return {"type": self.name, "distribution": self.distribution, "fixed": dict(self.fixed)}


def _jacobian_rows(output: Tensor, inputs: Tensor) -> Tensor:
    """``∂output_k/∂inputs`` ``[*B, K, D]`` of ``output [*B, K]`` whose entries depend on ``inputs [*B, D]`` of their
    own batch entry only (a row per ``k``, by autograd; 0 where one does not depend on ``inputs``)."""
    rows = []
    for k in range(output.shape[-1]):
        column = output[..., k]
        grad = (torch.autograd.grad(column.sum(), inputs, retain_graph=True, allow_unused=True)[0]
                if column.requires_grad else None)
        rows.append(torch.zeros_like(inputs) if grad is None else grad)
    return torch.stack(rows, dim=-2)


def _value_inside(reference: D.Distribution, name: str) -> float:
    """A value of finite density under the first reference distribution (its mean, mode, 0 or 1)."""
    candidates = torch.stack([reference.mean[0], reference.mode[0], torch.tensor(0.0, dtype=torch.float64),
                              torch.tensor(1.0, dtype=torch.float64)])
    density = reference.log_prob(candidates.view(-1, 1))[:, 0]
    inside = _support(reference).check(candidates) & torch.isfinite(density)
    if not bool(inside.any()):
        raise ValueError(f"distribution: found no value inside the support of {name}")
    return float(candidates[inside][0])


def _class_name(distribution: object) -> str:
    """The name of a ``torch.distributions`` exponential-family class given by name or as the class."""
    if isinstance(distribution, type):
        name = distribution.__name__
        if getattr(D, name, None) is not distribution:
            raise ValueError(f"distribution: {distribution!r} is not a class of torch.distributions (it could not be "
                             f"stored in a config)")
        distribution = name
    if not isinstance(distribution, str):
        raise TypeError(f"distribution must be the name of a torch.distributions class, got {distribution!r}")
    cls = getattr(D, distribution, None)
    if not (isinstance(cls, type) and issubclass(cls, D.ExponentialFamily)) or cls is D.ExponentialFamily:
        families = sorted(n for n in dir(D) if isinstance(getattr(D, n), type)
                          and issubclass(getattr(D, n), D.ExponentialFamily) and n != "ExponentialFamily")
        raise ValueError(f"distribution must name an exponential family of torch.distributions "
                         f"({', '.join(families)}), got {distribution!r}")
    return distribution


def _fixed(cls: type[D.Distribution], fixed: object) -> tuple[tuple[str, float], ...]:
    """The fixed hyper-parameters as sorted ``(name, value)`` pairs, each a parameter of ``cls`` within its
    constraint."""
    pairs = cast(Any, fixed.items() if isinstance(fixed, Mapping) else fixed)
    try:
        items = sorted((str(name), value) for name, value in pairs)
    except (TypeError, ValueError):
        raise TypeError(f"fixed must be a mapping of parameter names to numbers, got {fixed!r}") from None
    arguments = _arg_constraints(cls)
    out = []
    for name, value in items:
        if name not in arguments:
            raise ValueError(f"fixed: {cls.__name__} has no parameter {name!r} (it has {', '.join(arguments)})")
        number = checks.number(f"fixed[{name!r}]", value)
        if not bool(arguments[name].check(torch.tensor(number))):
            raise ValueError(f"fixed[{name!r}] must satisfy {arguments[name]}, got {value!r}")
        out.append((name, number))
    return tuple(out)


def _arg_constraints(cls: type[D.Distribution]) -> dict[str, constraints.Constraint]:
    """The class's ``arg_constraints`` (a class attribute of every torch family; typed as a property)."""
    return cast(dict[str, constraints.Constraint], cls.arg_constraints)


def _support(distribution: D.Distribution) -> constraints.Constraint:
    """The support of a torch distribution (never ``None`` for the families accepted)."""
    support = distribution.support
    assert support is not None
    return support
