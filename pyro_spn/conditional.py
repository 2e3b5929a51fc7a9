"""``ConditionalSPNDistribution``: the distribution of the missing entries of evidence under a circuit."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from pyro.distributions import TorchDistribution
from pyro.ops.provenance import detach_provenance, get_provenance
from torch import Tensor

from . import checks, expectations
from .rows import CircuitRows, with_provenance
from .sampling import Interpolation, Rule

if TYPE_CHECKING:
    from .distribution import SPNDistribution


class ConditionalSPNDistribution(CircuitRows, TorchDistribution):
    """The distribution of the missing entries of ``evidence`` under an :class:`~pyro_spn.SPNDistribution`.

    Values are complete data ``[*S, *batch_shape, *event_shape]``; the observed entries of the evidence
    are fixed. Create it with :meth:`SPNDistribution.condition <pyro_spn.SPNDistribution.condition>`;
    ``batch_shape`` is the evidence's batch shape broadcast with the parent's (an amortized parent conditions each
    of its circuits on its own evidence).

    Every sum node's choice is drawn from its posterior given the evidence (``∝ w · child likelihood``),
    the repetition mixing included; the sampling rule (straight-through or soft, temperature,
    interpolation) is the parent's.
    """

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(self, parent: SPNDistribution, evidence: Tensor, validate_args: bool | None = None) -> None:
        self.parent = parent
        self.spn = parent.spn
        event_dim = len(parent.event_shape)
        batch_shape = torch.broadcast_shapes(evidence.shape[: evidence.dim() - event_dim], parent.batch_shape)
        self.evidence = evidence.expand(batch_shape + parent.event_shape)
        self._sets = parent._sets
        self._set_of = None if parent._set_of is None else parent._set_of.expand(batch_shape)
        super().__init__(batch_shape, parent.event_shape,
                         validate_args=parent._validate_args if validate_args is None else validate_args)

    def expand(self, batch_shape: Sequence[int], _instance=None) -> ConditionalSPNDistribution:
        batch_shape = checks.shape("batch_shape", batch_shape)
        evidence = self.evidence.expand(batch_shape + self.event_shape)
        return ConditionalSPNDistribution(self.parent.expand(batch_shape) if self.amortized else self.parent,
                                          evidence, validate_args=self._validate_args)

    def _draw(self, sample_shape: Sequence[int], rule: Rule, interpolation: Interpolation) -> Tensor:
        sample_shape = checks.shape("sample_shape", sample_shape)
        shape = self._samples_shape(self._extended_shape(sample_shape))
        flat, _ = self._flat(self.evidence)
        repeated = flat.expand(sample_shape + flat.shape).reshape((-1,) + tuple(self.event_shape))
        sets = self._sets_of(sample_shape + self.batch_shape)
        draws = self._sample_rows(repeated.shape[0], rule, self.parent.temperature, interpolation, repeated, sets)
        return draws.reshape(shape)

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
        flat_complete, sets, batch = self._rows(complete)
        flat_evidence, evidence_sets, _ = self._rows(self.evidence)
        joint = self._log_likelihood(flat_complete, sets).reshape(batch)
        marginal = self._log_likelihood(flat_evidence, evidence_sets).reshape(self.batch_shape)
        return with_provenance(joint - marginal, provenance)

    @property
    def mean(self) -> Tensor:
        """The exact conditional mean ``[*batch_shape, *event_shape]`` (observed entries unchanged)."""
        flat, sets, _ = self._rows(self.evidence)
        return self._sample_rows(flat.shape[0], "expected", 1.0, "unit", flat, sets).reshape(self.evidence.shape)

    @property
    def variance(self) -> Tensor:
        """The exact conditional variance ``[*batch_shape, *event_shape]`` (0 at observed entries)."""
        flat, sets, _ = self._rows(self.evidence)
        if sets is not None:
            return self._variance_rows(flat, sets).reshape(self.evidence.shape)
        return expectations.variance(self.spn, flat).reshape(self.evidence.shape)

    @property
    def covariance_matrix(self) -> Tensor:
        """The exact conditional covariance ``[*batch_shape, D, D]`` (rows and columns of observed entries are 0)."""
        self._no_amortized_covariance()
        flat, _ = self._flat(self.evidence)
        size = math.prod(self.event_shape)
        return expectations.covariance(self.spn, flat).reshape(self.batch_shape + (size, size))
