"""``SPNDistribution``: a :class:`RatSPN` as a Pyro distribution with a differentiable sampler.

The adapter is thin and exact: ``log_prob`` is the circuit's upward pass, ``sample`` its exact
top-down pass, ``rsample`` the differentiable top-down pass of the paper (Gumbel-Softmax selections at
every sum unit, smooth interpolation of child samples, reparameterized leaves).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
from pyro.distributions import TorchDistribution
from pyro.ops.provenance import detach_provenance, get_provenance, track_provenance
from torch import Tensor
from torch.distributions import constraints

from . import batching, checks, expectations
from .sampling import INTERPOLATIONS, Interpolation, Rule, mpe, sample
from .spn import RatSPN


def _with_provenance(result: Tensor, provenance: frozenset) -> Tensor:
    """``result`` carrying Pyro's ``provenance`` (the non-reparameterized sites ``TraceGraph_ELBO`` tracks) again.

    A value that carries provenance is evaluated as a plain tensor: the circuit's custom autograd functions would
    otherwise lose the gradient of every parameter below the root."""
    return track_provenance(result, provenance) if provenance else result


class _SPNShapes:
    """Shape helpers shared by :class:`SPNDistribution` and :class:`ConditionalSPNDistribution`."""

    spn: RatSPN
    event_shape: torch.Size
    batch_shape: torch.Size
    _validate_args: bool

    @property
    def support(self) -> constraints.Constraint:
        return constraints.independent(self.spn.leaf.support, len(self.spn.event_shape))

    def _check_value(self, value: Tensor, allow_nan: bool, name: str = "value", evidence: bool = False) -> None:
        """Raises ``TypeError`` naming the argument ``name`` for anything but a tensor of real values, ``ValueError``
        for a wrong shape or (when validating) values outside the support; ``evidence`` may not be infinite (a value
        of density zero, on which nothing can be conditioned)."""
        checks.real_tensor(name, value)
        event_dim = len(self.event_shape)
        if value.dim() < event_dim or value.shape[value.dim() - event_dim:] != self.event_shape:
            raise ValueError(
                f"{name}: expected shape [..., {', '.join(map(str, self.event_shape))}] "
                f"(event_shape {tuple(self.event_shape)}), got {tuple(value.shape)}"
            )
        try:
            torch.broadcast_shapes(value.shape[: value.dim() - event_dim], self.batch_shape)
        except RuntimeError as error:
            raise ValueError(
                f"{name}: batch dims {tuple(value.shape[: value.dim() - event_dim])} do not broadcast with "
                f"batch_shape {tuple(self.batch_shape)}"
            ) from error
        if not self._validate_args:
            return
        missing = torch.isnan(value)
        if missing.any() and not allow_nan:
            raise ValueError(f"{name}: NaN entries are only allowed where missing data is expected")
        if evidence:
            checks.no_infinity(name, value)
        inside = self.spn.leaf.support.check(torch.where(missing, torch.zeros_like(value), value))
        if not bool(inside.all()):
            bad = value[~inside].flatten()[:3].tolist()
            raise ValueError(
                f"{name}: entries outside the support {self.spn.leaf.support} (NaN marks a missing entry), "
                f"e.g. {bad}"
            )

    def _samples_shape(self, shape: torch.Size) -> torch.Size:
        """``shape``, the ``[*sample_shape, *batch_shape, *event_shape]`` of samples to draw, once checked to fit in
        the circuit's device memory (``ValueError`` naming ``sample_shape`` otherwise)."""
        logits = self.spn.root.logits
        checks.allocatable("sample_shape", shape, logits.dtype, logits.device)
        return shape

    def _flat(self, value: Tensor) -> tuple[Tensor, torch.Size]:
        """``[*B, *event_shape]`` → ``([prod(B), *event_shape], B)``."""
        batch = value.shape[: value.dim() - len(self.event_shape)]
        return value.reshape((-1,) + tuple(self.event_shape)), batch

    # -- every batched computation runs in row chunks within the memory budget (pyro_spn.batching) --------------
    def _anchor(self) -> Tensor:
        """An empty tensor on the circuit's device (a checkpoint keeps that device's random state)."""
        return self.spn.root.logits.detach()[:0]

    def _records_graph(self, *tensors: Tensor | float | None) -> bool:
        """Whether autograd records a computation of the circuit and ``tensors``."""
        return batching.records_graph(*self.spn.parameters(), *tensors)

    def _log_likelihood(self, flat: Tensor) -> Tensor:
        """The circuit's log-likelihood ``[N]`` of ``flat`` ``[N, *event_shape]``, chunked."""
        grad = self._records_graph(flat)
        row_bytes = batching.upward_row_bytes(self.spn, grad=grad)
        return cast(Tensor, batching.map_rows(lambda _, x: self.spn(x), flat.shape[0], row_bytes, [flat],
                                              self._anchor(), checkpointed=grad))

    def _sample_rows(self, num: int, rule: Rule, temperature: Tensor | float, interpolation: Interpolation,
                     evidence: Tensor | None = None) -> Tensor:
        """:func:`~pyro_spn.sampling.sample` of ``num`` rows ``[N, *event_shape]`` (given ``evidence``
        ``[N, *event_shape]``), chunked."""
        grad = self._records_graph(evidence, temperature)
        row_bytes = batching.sampling_row_bytes(self.spn, rule, interpolation, evidence is not None, grad=grad)

        def draw(rows: int, given: Tensor | None) -> Tensor:
            return sample(self.spn, rows, rule, temperature, interpolation, evidence=given)

        return cast(Tensor, batching.map_rows(draw, num, row_bytes, [evidence], self._anchor(), checkpointed=grad))


class SPNDistribution(_SPNShapes, TorchDistribution):
    r"""A sum-product network as a Pyro distribution over its data, with a differentiable sampler.

    ``event_shape`` is the data shape the circuit was built for (``(F,)`` or ``(C, H, W)``);
    ``batch_shape`` is ``()`` unless :meth:`expand` ed (as ``pyro.plate`` does). The circuit's
    parameters are the distribution's parameters: train them with any loss, from ``log_prob`` (exact
    likelihood) or from ``rsample`` (samples).

    This distribution has the following properties:

    - :meth:`log_prob` is exact; NaN entries of the value are marginalized out.
    - :meth:`sample` is exact ancestral sampling, without gradient.
    - :meth:`rsample` is the differentiable sampler of the paper: every sum unit draws a
      Gumbel-Softmax selection ``softmax((log w + g) / τ)`` over its children and the child samples are
      smoothly interpolated; leaves are reparameterized (Binomial through its Gaussian approximation).

      * With ``hard=True`` (the default) it is a *straight-through* estimator: the samples returned are
        exact samples of the circuit (every choice is the Gumbel-max draw, every leaf value an exact draw
        inside the support), and in the backward pass the gradient is that of the relaxed sample (soft
        selections, reparameterized leaves). ``log_prob`` of these samples is therefore the density of
        what was drawn, which keeps ``pyro.sample``, guides and ELBOs correct; the gradient is biased, as
        every straight-through gradient is.
      * With ``hard=False`` it returns the relaxed samples themselves (the paper's soft child
        interpolation), which sample-based objectives (adversarial, MMD, auto-encoding) use. These are
        *not* samples of the circuit's distribution for ``τ > 0`` and may lie outside its support, so do
        not score them with ``log_prob``.

    Any batch size runs: every batched method computes its rows in chunks whose working memory stays within the
    memory budget of :mod:`pyro_spn.batching` (1 GiB unless ``$PYRO_SPN_MEMORY_BUDGET`` or
    :func:`~pyro_spn.batching.memory_budget` says otherwise), checkpointing each chunk under autograd so that a
    backward keeps only the chunks' outputs. Likelihoods and completions are the same; random draws have the same law
    and are reproducible for the same seed and budget, but differ from an unchunked draw of that seed.

    Args:
        spn: the circuit.
        temperature: ``τ > 0``, a float or a scalar tensor (which may require grad: a learned
            temperature). It divides the perturbed logits; small ``τ`` → nearly one-hot selections.
        hard: straight-through (``True``) or soft (``False``) differentiable samples.
        interpolation: ``"unit"``: every sum unit draws its own Gumbel vector and a region's selection is
            the selection-weighted sum of its units' (the paper's method); ``"region"``: a region draws
            once from its units' logits blended by the selection arriving from above (``K`` times cheaper; the
            same for one-hot selections, a different relaxation for soft ones).
        validate_args: check values passed to :meth:`log_prob` (shape and support).

    References:
        [1] Lang, Mundt, Ramos, Peharz, Kersting: Elevating Perceptual Sample Quality in Probabilistic
        Circuits through Differentiable Sampling.

        [2] Jang, Gu, Poole: Categorical Reparameterization with Gumbel-Softmax.
    """

    arg_constraints = {"temperature": constraints.positive}
    has_rsample = True

    def __init__(self, spn: RatSPN, *, temperature: Tensor | float = 1.0, hard: bool = True,
                 interpolation: Interpolation = "unit", validate_args: bool | None = None) -> None:
        if not isinstance(spn, RatSPN):
            raise TypeError(f"spn must be a pyro_spn.RatSPN, got {type(spn).__name__}")
        self.spn = spn
        self.temperature = checks.scalar_temperature("temperature", temperature)
        self.hard = checks.flag("hard", hard)
        self.interpolation = cast(Interpolation, checks.choice("interpolation", interpolation, INTERPOLATIONS))
        super().__init__(torch.Size(), torch.Size(spn.event_shape), validate_args=validate_args)

    def expand(self, batch_shape: Sequence[int], _instance: SPNDistribution | None = None) -> SPNDistribution:
        new = self._get_checked_instance(SPNDistribution, _instance)
        new.spn = self.spn
        new.temperature = self.temperature
        new.hard = self.hard
        new.interpolation = self.interpolation
        super(SPNDistribution, new).__init__(checks.shape("batch_shape", batch_shape), self.event_shape,
                                             validate_args=False)
        new._validate_args = self._validate_args
        return new

    @classmethod
    def infer_shapes(cls, spn: Sequence[int] = (),  # type: ignore[override]
                     temperature: Sequence[int] = ()) -> tuple[torch.Size, torch.Size]:
        """``(batch_shape, event_shape)`` of an ``SPNDistribution`` whose circuit has
        ``event_shape == spn`` (the circuit's shape stands in for the circuit): ``((), spn)``."""
        if tuple(temperature) != ():
            raise ValueError(f"temperature must be a scalar, got shape {tuple(temperature)}")
        return torch.Size(), torch.Size(spn)

    # -- likelihood -------------------------------------------------------------------------------------
    def log_prob(self, value: Tensor) -> Tensor:
        """Exact log-density (log-mass for discrete leaves).

        Args:
            value: ``[*S, *batch_shape, *event_shape]`` (batch dims broadcast); NaN entries are
                marginalized.

        Returns:
            ``[*S, *batch_shape]``.
        """
        provenance, value = get_provenance(value), detach_provenance(value)
        self._check_value(value, allow_nan=True)
        flat, batch = self._flat(value)
        log_prob = self._log_likelihood(flat).reshape(batch)
        return _with_provenance(log_prob.expand(torch.broadcast_shapes(batch, self.batch_shape)), provenance)

    # -- sampling ---------------------------------------------------------------------------------------
    def _draw(self, sample_shape: Sequence[int], rule: Rule, interpolation: Interpolation) -> Tensor:
        shape = self._samples_shape(self._extended_shape(checks.shape("sample_shape", sample_shape)))
        num = math.prod(shape[: len(shape) - len(self.event_shape)])
        return self._sample_rows(num, rule, self.temperature, interpolation).reshape(shape)

    def sample(self, sample_shape: Sequence[int] = torch.Size()) -> Tensor:
        """Exact samples ``[*sample_shape, *batch_shape, *event_shape]``, without gradient."""
        with torch.no_grad():
            return self._draw(sample_shape, "exact", "region")

    def rsample(self, sample_shape: Sequence[int] = torch.Size()) -> Tensor:
        """Differentiable samples ``[*sample_shape, *batch_shape, *event_shape]``: straight-through
        (exact values) for ``hard=True``, relaxed for ``hard=False``."""
        return self._draw(sample_shape, "straight_through" if self.hard else "soft", self.interpolation)

    @property
    def mean(self) -> Tensor:
        """The exact mean ``[*batch_shape, *event_shape]`` (one top-down pass of expectations)."""
        mean = sample(self.spn, 1, "expected")[0]
        return mean.expand(self.batch_shape + self.event_shape)

    @property
    def variance(self) -> Tensor:
        """The exact variance ``[*batch_shape, *event_shape]`` (posterior flows and the leaves' closed-form moments,
        :func:`pyro_spn.expectations.variance`); ``stddev`` is its square root."""
        return expectations.variance(self.spn).expand(self.batch_shape + self.event_shape)

    @property
    def covariance_matrix(self) -> Tensor:
        """The exact covariance ``[*batch_shape, D, D]`` of the flattened event, ``D = prod(event_shape)`` (one upward
        pass per pair; ``ValueError`` above :data:`~pyro_spn.expectations.MAX_COVARIANCE_VARIABLES` variables)."""
        size = math.prod(self.event_shape)
        return expectations.covariance(self.spn).expand(self.batch_shape + (size, size))

    # -- conditioning -----------------------------------------------------------------------------------
    def condition(self, evidence: Tensor) -> ConditionalSPNDistribution:
        """The distribution of the missing (NaN) entries of ``evidence`` given its observed entries.

        Args:
            evidence: ``[*B, *event_shape]`` with NaN where a value is unknown.

        Returns:
            A distribution with ``batch_shape == B`` over complete values ``[*B, *event_shape]``: its
            samples keep the observed entries and fill in the missing ones; its ``log_prob`` is the exact
            conditional log-density of the missing entries.
        """
        self._check_value(evidence, allow_nan=True, name="evidence", evidence=True)
        return ConditionalSPNDistribution(self, evidence)

    def mpe(self, evidence: Tensor) -> Tensor:
        """The max-product (Viterbi) completion of the missing (NaN) entries of ``evidence``.

        It is the data part of the most probable joint state of the data *and* the circuit's latent choices
        (one max-product upward pass, argmax down, leaf modes). That is the most probable completion only in a
        deterministic circuit; in general it approximates it (and often misses it). See
        :meth:`mpe_with_log_prob` for the state's log-density.

        Args:
            evidence: ``[*B, *event_shape]``; pass all-NaN for the unconditional completion.

        Returns:
            The completion ``[*B, *event_shape]`` (observed entries unchanged).
        """
        return self.mpe_with_log_prob(evidence)[0]

    def mpe_with_log_prob(self, evidence: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`mpe` and the max-product value ``[*B]``: the log-density of the completion jointly with the
        circuit's latent choices that produced it (a lower bound of the completion's ``log_prob``).

        Args:
            evidence: ``[*B, *event_shape]``, NaN where a value is to be completed.

        Returns:
            ``(completion [*B, *event_shape], value [*B])``.
        """
        self._check_value(evidence, allow_nan=True, name="evidence", evidence=True)
        flat, batch = self._flat(evidence)
        grad = self._records_graph(flat)
        row_bytes = batching.sampling_row_bytes(self.spn, "argmax", "region", True, grad=grad)
        completion, value = cast(tuple[Tensor, Tensor], batching.map_rows(
            lambda _, x: mpe(self.spn, x), flat.shape[0], row_bytes, [flat], self._anchor(), checkpointed=grad))
        return completion.reshape(evidence.shape), value.reshape(batch)


class ConditionalSPNDistribution(_SPNShapes, TorchDistribution):
    """The distribution of the missing entries of ``evidence`` under an :class:`SPNDistribution`.

    Values are complete data ``[*S, *batch_shape, *event_shape]``; the observed entries of the evidence
    are fixed. Create it with :meth:`SPNDistribution.condition`.

    Every sum node's choice is drawn from its posterior given the evidence (``∝ w · child likelihood``),
    the repetition mixing included; the sampling rule (straight-through or soft, temperature,
    interpolation) is the parent's.
    """

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(self, parent: SPNDistribution, evidence: Tensor, validate_args: bool | None = None) -> None:
        self.parent = parent
        self.spn = parent.spn
        self.evidence = evidence
        event_dim = len(parent.event_shape)
        batch_shape = evidence.shape[: evidence.dim() - event_dim]
        super().__init__(batch_shape, parent.event_shape,
                         validate_args=parent._validate_args if validate_args is None else validate_args)

    def expand(self, batch_shape: Sequence[int], _instance=None) -> ConditionalSPNDistribution:
        evidence = self.evidence.expand(checks.shape("batch_shape", batch_shape) + self.event_shape)
        return ConditionalSPNDistribution(self.parent, evidence, validate_args=self._validate_args)

    def _draw(self, sample_shape: Sequence[int], rule: Rule, interpolation: Interpolation) -> Tensor:
        sample_shape = checks.shape("sample_shape", sample_shape)
        self._samples_shape(self._extended_shape(sample_shape))
        flat, _ = self._flat(self.evidence)
        repeated = flat.expand(sample_shape + flat.shape).reshape((-1,) + tuple(self.event_shape))
        draws = self._sample_rows(repeated.shape[0], rule, self.parent.temperature, interpolation, repeated)
        return draws.reshape(self._extended_shape(sample_shape))

    def sample(self, sample_shape: Sequence[int] = torch.Size()) -> Tensor:
        """Exact conditional samples ``[*sample_shape, *batch_shape, *event_shape]``, no gradient."""
        with torch.no_grad():
            return self._draw(sample_shape, "exact", "region")

    def rsample(self, sample_shape: Sequence[int] = torch.Size()) -> Tensor:
        """Differentiable conditional samples (the parent's ``hard`` and ``interpolation``)."""
        return self._draw(sample_shape, "straight_through" if self.parent.hard else "soft", self.parent.interpolation)

    def log_prob(self, value: Tensor) -> Tensor:
        """``log p(x_missing | x_observed)``, the missing entries read from ``value``
        ``[*S, *batch_shape, *event_shape]`` (its observed entries are ignored); returns ``[*S, *batch_shape]``."""
        provenance, value = get_provenance(value), detach_provenance(value)
        self._check_value(value, allow_nan=False)
        evidence = self.evidence.expand(torch.broadcast_shapes(value.shape, self.evidence.shape))
        complete = torch.where(torch.isnan(evidence), value.expand_as(evidence), evidence)
        flat_complete, batch = self._flat(complete)
        flat_evidence, _ = self._flat(self.evidence)
        joint = self._log_likelihood(flat_complete).reshape(batch)
        marginal = self._log_likelihood(flat_evidence).reshape(self.batch_shape)
        return _with_provenance(joint - marginal, provenance)

    @property
    def mean(self) -> Tensor:
        """The exact conditional mean ``[*batch_shape, *event_shape]`` (observed entries unchanged)."""
        flat, _ = self._flat(self.evidence)
        return self._sample_rows(flat.shape[0], "expected", 1.0, "unit", flat).reshape(self.evidence.shape)

    @property
    def variance(self) -> Tensor:
        """The exact conditional variance ``[*batch_shape, *event_shape]`` (0 at observed entries)."""
        flat, _ = self._flat(self.evidence)
        return expectations.variance(self.spn, flat).reshape(self.evidence.shape)

    @property
    def covariance_matrix(self) -> Tensor:
        """The exact conditional covariance ``[*batch_shape, D, D]`` (rows and columns of observed entries are 0)."""
        flat, _ = self._flat(self.evidence)
        size = math.prod(self.event_shape)
        return expectations.covariance(self.spn, flat).reshape(self.batch_shape + (size, size))
