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
from pyro.ops.provenance import detach_provenance, get_provenance
from torch import Tensor
from torch.distributions import constraints

from . import checks, expectations
from .conditional import ConditionalSPNDistribution
from .rows import CircuitRows, flat_parameter_sets, with_provenance
from .sampling import INTERPOLATIONS, Interpolation, Rule
from .spn import RatSPN


class SPNDistribution(CircuitRows, TorchDistribution):
    r"""A sum-product network as a Pyro distribution over its data, with a differentiable sampler.

    ``event_shape`` is the data shape the circuit was built for (``(F,)`` or ``(C, H, W)``);
    ``batch_shape`` is ``()`` unless :meth:`expand` ed (as ``pyro.plate`` does). The circuit's
    parameters are the distribution's parameters: train them with any loss, from ``log_prob`` (exact
    likelihood) or from ``rsample`` (samples).

    **Amortized circuits.** With ``flat_parameters`` ``θ [*batch_shape, P]`` (``P`` =
    ``spn.flat_parameter_size``; unconstrained, in the layout of :attr:`~pyro_spn.spn.RatSPN.flat_parameter_layout`,
    e.g. the output of an ``nn.Linear``), every batch element is the circuit with its own parameters: a conditional
    density ``p(y | x)``, an amortized guide ``q(z | x)`` or a decoder ``p(x | z)``. Every method works per batch
    element, gradients flowing into ``θ`` (the circuit's own parameters are then unused); the passes are the batched
    ones of :mod:`pyro_spn.amortized` (no loop over the batch) and sampling runs the reference paths of
    :mod:`pyro_spn.sampling` (the fast ones share one parameter set).

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
        flat_parameters: ``[*batch_shape, P]`` per-element parameters (amortized), or ``None`` (the circuit's own,
            ``batch_shape == ()``).
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

    has_rsample = True

    def __init__(self, spn: RatSPN, *, flat_parameters: Tensor | None = None, temperature: Tensor | float = 1.0,
                 hard: bool = True, interpolation: Interpolation = "unit", validate_args: bool | None = None) -> None:
        if not isinstance(spn, RatSPN):
            raise TypeError(f"spn must be a pyro_spn.RatSPN, got {type(spn).__name__}")
        self.spn = spn
        self.temperature = checks.scalar_temperature("temperature", temperature)
        self.hard = checks.flag("hard", hard)
        self.interpolation = cast(Interpolation, checks.choice("interpolation", interpolation, INTERPOLATIONS))
        self.flat_parameters = flat_parameters
        self._sets = self._set_of = None
        batch_shape = torch.Size()
        if flat_parameters is not None:
            self._sets, self._set_of = flat_parameter_sets(spn, flat_parameters)
            batch_shape = flat_parameters.shape[:-1]
        super().__init__(batch_shape, torch.Size(spn.event_shape), validate_args=validate_args)

    @property
    def arg_constraints(self) -> dict[str, constraints.Constraint]:
        """``temperature`` positive; ``flat_parameters`` (amortized) real vectors."""
        own: dict[str, constraints.Constraint] = {"temperature": constraints.positive}
        return own if self.flat_parameters is None else {**own, "flat_parameters": constraints.real_vector}

    def expand(self, batch_shape: Sequence[int], _instance: SPNDistribution | None = None) -> SPNDistribution:
        new = self._get_checked_instance(SPNDistribution, _instance)
        batch_shape = checks.shape("batch_shape", batch_shape)
        new.spn = self.spn
        new.temperature = self.temperature
        new.hard = self.hard
        new.interpolation = self.interpolation
        new._sets = self._sets
        new._set_of = None if self._set_of is None else self._set_of.expand(batch_shape)
        new.flat_parameters = (None if self.flat_parameters is None
                               else self.flat_parameters.expand(batch_shape + self.flat_parameters.shape[-1:]))
        super(SPNDistribution, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @classmethod
    def infer_shapes(cls, spn: Sequence[int] = (),  # type: ignore[override]
                     temperature: Sequence[int] = (),
                     flat_parameters: Sequence[int] | None = None) -> tuple[torch.Size, torch.Size]:
        """``(batch_shape, event_shape)`` of an ``SPNDistribution`` whose circuit has
        ``event_shape == spn`` (the circuit's shape stands in for the circuit): ``((), spn)``, or
        ``(flat_parameters[:-1], spn)`` for amortized parameters of shape ``flat_parameters``."""
        if tuple(temperature) != ():
            raise ValueError(f"temperature must be a scalar, got shape {tuple(temperature)}")
        batch = torch.Size() if flat_parameters is None else torch.Size(flat_parameters)[:-1]
        return batch, torch.Size(spn)

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
        flat, sets, batch = self._rows(value)
        log_prob = self._log_likelihood(flat, sets).reshape(batch)
        return with_provenance(log_prob.expand(torch.broadcast_shapes(batch, self.batch_shape)), provenance)

    # -- sampling ---------------------------------------------------------------------------------------
    def _draw(self, sample_shape: Sequence[int], rule: Rule, interpolation: Interpolation) -> Tensor:
        shape = self._samples_shape(self._extended_shape(checks.shape("sample_shape", sample_shape)))
        batch = shape[: len(shape) - len(self.event_shape)]
        sets = self._sets_of(batch)
        return self._sample_rows(math.prod(batch), rule, self.temperature, interpolation, sets=sets).reshape(shape)

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
        if self.amortized:
            num, sets = math.prod(self.batch_shape), self._sets_of(self.batch_shape)
            means = self._sample_rows(num, "expected", 1.0, "unit", sets=sets)
            return means.reshape(self.batch_shape + self.event_shape)
        mean = self._sample_rows(1, "expected", 1.0, "unit")[0]
        return mean.expand(self.batch_shape + self.event_shape)

    @property
    def variance(self) -> Tensor:
        """The exact variance ``[*batch_shape, *event_shape]`` (posterior flows and the leaves' closed-form moments,
        :func:`pyro_spn.expectations.variance`); ``stddev`` is its square root."""
        if self.amortized:
            unknown = torch.full(self.batch_shape + self.event_shape, math.nan, dtype=self.spn.root.logits.dtype,
                                 device=self.spn.root.logits.device)
            flat, sets, _ = self._rows(unknown)
            return self._variance_rows(flat, cast(Tensor, sets)).reshape(unknown.shape)
        return expectations.variance(self.spn).expand(self.batch_shape + self.event_shape)

    @property
    def covariance_matrix(self) -> Tensor:
        """The exact covariance ``[*batch_shape, D, D]`` of the flattened event, ``D = prod(event_shape)`` (one upward
        pass per pair; ``ValueError`` above :data:`~pyro_spn.expectations.MAX_COVARIANCE_VARIABLES` variables)."""
        self._no_amortized_covariance()
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
        flat, sets, batch = self._rows(evidence)
        completion, value = self._mpe_rows(flat, sets)
        return completion.reshape(batch + self.event_shape), value.reshape(batch)
