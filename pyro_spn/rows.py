"""What :class:`~pyro_spn.SPNDistribution` and :class:`~pyro_spn.ConditionalSPNDistribution` share: the support,
value checks, and the computations on rows of data (likelihoods, draws, completions), chunked within the memory
budget (:mod:`pyro_spn.batching`), under the circuit's own parameters or under per-row parameter sets (an amortized
circuit, :mod:`pyro_spn.amortized`).

An amortized distribution holds its parameter sets as ``sets [G, P]`` (flat vectors) and ``set_of [*batch_shape]``,
the set of every batch element (an expanded index, so ``expand`` copies nothing). A computation on rows of shape
``[*S, *batch_shape]`` (flattened to ``N`` rows) gathers each row's set, chunk by chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from pyro.ops.provenance import track_provenance
from torch import Tensor
from torch.distributions import constraints

from . import batching, checks
from .amortized import region_sums, row_parameters, upward_from_regions_rows, upward_rows
from .expectations import finite_support
from .leaves import Leaf, Normal, Params
from .sampling import FAST, ROWS, Interpolation, Rule, mpe, sample, top_down
from .spn import RatSPN


def with_provenance(result: Tensor, provenance: frozenset) -> Tensor:
    """``result`` carrying Pyro's ``provenance`` (the non-reparameterized sites ``TraceGraph_ELBO`` tracks) again.

    A value that carries provenance is evaluated as a plain tensor: the circuit's custom autograd functions would
    otherwise lose the gradient of every parameter below the root."""
    return track_provenance(result, provenance) if provenance else result


def flat_parameter_sets(spn: RatSPN, flat_parameters: Tensor) -> tuple[Tensor, Tensor]:
    """``(sets [G, P], set_of [*B])`` of flat parameters ``[*B, P]`` (checked: a floating-point tensor whose last
    dimension is the circuit's :attr:`~pyro_spn.spn.RatSPN.flat_parameter_size`)."""
    size = spn.flat_parameter_size
    if not isinstance(flat_parameters, Tensor) or not flat_parameters.is_floating_point():
        kind = f"a {flat_parameters.dtype} tensor" if isinstance(flat_parameters, Tensor) else \
            type(flat_parameters).__name__
        raise TypeError(f"flat_parameters must be a floating-point torch.Tensor [*batch_shape, {size}], got {kind}")
    if flat_parameters.dim() < 1 or flat_parameters.shape[-1] != size:
        raise ValueError(f"flat_parameters: expected shape [*batch_shape, {size}] (the circuit's "
                         f"flat_parameter_size), got {tuple(flat_parameters.shape)}")
    batch = flat_parameters.shape[:-1]
    sets = flat_parameters.reshape(-1, size)
    set_of = torch.arange(sets.shape[0], device=flat_parameters.device).reshape(batch)
    return sets, set_of


class CircuitRows:
    """The base of the circuit's distributions (see the module docstring)."""

    spn: RatSPN
    event_shape: torch.Size
    batch_shape: torch.Size
    _validate_args: bool
    #: ``[G, P]`` flat parameter sets (amortized) or ``None`` (the circuit's own parameters).
    _sets: Tensor | None
    #: ``[*batch_shape]``, the parameter set of every batch element (amortized) or ``None``.
    _set_of: Tensor | None

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

    # -- parameter sets (amortized circuits) ---------------------------------------------------------------------
    @property
    def amortized(self) -> bool:
        """Whether the parameters are given per batch element (``flat_parameters``)."""
        return self._sets is not None

    def _rows(self, value: Tensor) -> tuple[Tensor, Tensor | None, torch.Size]:
        """``value [*B, *event_shape]`` as rows ``[N, *event_shape]``, their parameter sets ``[N]`` (amortized: the
        rows are ``value`` broadcast with ``batch_shape``; else ``None``) and the rows' batch shape."""
        if self._set_of is None:
            flat, batch = self._flat(value)
            return flat, None, batch
        batch = torch.broadcast_shapes(value.shape[: value.dim() - len(self.event_shape)], self.batch_shape)
        flat, _ = self._flat(value.expand(batch + self.event_shape))
        return flat, self._set_of.expand(batch).reshape(-1), batch

    def _sets_of(self, shape: torch.Size) -> Tensor | None:
        """The parameter sets ``[N]`` of rows ``[*shape]`` (``shape`` ending in ``batch_shape``), or ``None``."""
        return None if self._set_of is None else self._set_of.expand(shape).reshape(-1)

    def _sets_at(self, index: Tensor) -> Tensor:
        """The flat parameter sets ``[n, P]`` of rows whose sets are ``index [n]`` (``index_select``: its backward
        is an ``index_add``, far faster than an indexing's)."""
        return cast(Tensor, self._sets).index_select(0, index)

    # -- every batched computation runs in row chunks within the memory budget (pyro_spn.batching) --------------
    def _anchor(self) -> Tensor:
        """An empty tensor on the circuit's device (a checkpoint keeps that device's random state)."""
        return self.spn.root.logits.detach()[:0]

    def _records_graph(self, *tensors: Tensor | float | None) -> bool:
        """Whether autograd records a computation of the circuit (or the parameter sets) and ``tensors``."""
        return batching.records_graph(*self.spn.parameters(), self._sets, *tensors)

    def _row_bytes(self, own: int, grad: bool) -> int:
        """The bytes per row of a pass: ``own`` (the pass's under the circuit's parameters) and, amortized, the
        parameter sets' (:func:`~pyro_spn.batching.amortized_row_bytes`)."""
        return own + (batching.amortized_row_bytes(self.spn, grad) if self.amortized else 0)

    def _log_likelihood(self, flat: Tensor, sets: Tensor | None = None) -> Tensor:
        """The circuit's log-likelihood ``[N]`` of ``flat`` ``[N, *event_shape]`` (row ``n`` under parameter set
        ``sets[n]`` if given), chunked."""
        grad = self._records_graph(flat)
        row_bytes = self._row_bytes(batching.upward_row_bytes(self.spn, grad=grad), grad)

        def log_likelihood(_: int, x: Tensor, index: Tensor | None) -> Tensor:
            if index is None:
                return self.spn(x)
            return upward_rows(self.spn, x, row_parameters(self.spn, self._sets_at(index))).log_likelihood

        return cast(Tensor, batching.map_rows(log_likelihood, flat.shape[0], row_bytes, [flat, sets],
                                              self._anchor(), checkpointed=grad))

    def _sample_rows(self, num: int, rule: Rule, temperature: Tensor | float, interpolation: Interpolation,
                     evidence: Tensor | None = None, sets: Tensor | None = None) -> Tensor:
        """:func:`~pyro_spn.sampling.sample` of ``num`` rows ``[N, *event_shape]`` (given ``evidence``
        ``[N, *event_shape]``; row ``n`` under parameter set ``sets[n]`` if given), chunked."""
        grad = self._records_graph(evidence, temperature)
        paths = FAST if sets is None else ROWS
        own = batching.sampling_row_bytes(self.spn, rule, interpolation, evidence is not None, paths, grad=grad)

        def draw(rows: int, given: Tensor | None, index: Tensor | None) -> Tensor:
            if index is None:
                return sample(self.spn, rows, rule, temperature, interpolation, evidence=given)
            parameters = row_parameters(self.spn, self._sets_at(index))
            return sample(self.spn, rows, rule, temperature, interpolation, evidence=given, rows=parameters)

        return cast(Tensor, batching.map_rows(draw, num, self._row_bytes(own, grad), [evidence, sets], self._anchor(),
                                              checkpointed=grad))

    def _mpe_rows(self, flat: Tensor, sets: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """:func:`~pyro_spn.sampling.mpe` of rows ``flat [N, *event_shape]``: ``(completion, value [N])``, chunked."""
        grad = self._records_graph(flat)
        own = batching.sampling_row_bytes(self.spn, "argmax", "region", True, grad=grad)

        def complete(_: int, x: Tensor, index: Tensor | None) -> tuple[Tensor, Tensor]:
            if index is None:
                return mpe(self.spn, x)
            return mpe(self.spn, x, rows=row_parameters(self.spn, self._sets_at(index)))

        return cast(tuple[Tensor, Tensor], batching.map_rows(complete, flat.shape[0], self._row_bytes(own, grad),
                                                             [flat, sets], self._anchor(), checkpointed=grad))

    def _variance_rows(self, flat: Tensor, sets: Tensor) -> Tensor:
        """The exact variance ``[N, C, F]`` of every variable of rows ``flat [N, *event_shape]`` given their observed
        entries, row ``n`` under parameter set ``sets[n]`` (an amortized circuit): the posterior flows ``q`` of the
        leaf components and their closed-form moments, ``Σ q σ² + Σ q (μ − m)²`` with ``m = Σ q μ`` (0 where
        observed), as :func:`pyro_spn.expectations.variance` does for the circuit's own parameters."""
        spn = self.spn
        grad = self._records_graph(flat)
        own = batching.sampling_row_bytes(spn, "expected", "unit", True, ROWS, grad=grad)

        def variance(_: int, x: Tensor, index: Tensor) -> Tensor:
            rows = row_parameters(spn, self._sets_at(index))
            selection = top_down(spn, x.shape[0], "expected", upward=upward_rows(spn, x, rows), rows=rows)
            flows = spn.leaf_layer.variable_selection(selection)  # [N, F, I, R]
            means, variances = spn.leaf.mean(rows.leaf), spn.leaf.variance(rows.leaf)  # [N, C, F, I, R]
            mean = torch.einsum("nfir,ncfir->ncf", flows, means)
            spread = (means - mean[..., None, None]).square()
            out = torch.einsum("nfir,ncfir->ncf", flows, variances + spread)
            return torch.where(torch.isnan(spn.flatten_data(x)), out, torch.zeros_like(out))

        return cast(Tensor, batching.map_rows(variance, flat.shape[0], self._row_bytes(own, grad), [flat, sets],
                                              self._anchor(), checkpointed=grad))

    def _no_amortized_covariance(self) -> None:
        """``ValueError`` for the covariance of an amortized circuit (one upward pass per pair of variables and per
        parameter set: use ``variance``, or draw samples)."""
        if self.amortized:
            raise ValueError("covariance_matrix: not available for an amortized circuit (flat_parameters), whose "
                             "exact covariance costs one upward pass per pair of variables and per batch element; "
                             "use variance, or the covariance of samples")

    def _rbf_expectations(self, points: Tensor, bandwidths: Sequence[float]) -> Tensor:
        """``E_{x~p_b}[exp(−‖x − y‖² / (2σ²))]`` of an amortized circuit for ``points [*S, *B, *event_shape]`` (``B``
        broadcast with ``batch_shape``; NaN leaves a variable out of the kernel), each under its batch element's
        parameters: ``[len(bandwidths), *S, *B]``. Leaf expectations in closed form (Normal) or summed over a finite
        support, then the upward pass, as :func:`pyro_spn.expectations.rbf_expectations` for one parameter set."""
        spn, leaf = self.spn, self.spn.leaf
        support = None if isinstance(leaf, Normal) else finite_support(leaf)
        if support is None and not isinstance(leaf, Normal):
            raise ValueError(f"an exact RBF expectation of an amortized circuit needs Normal leaves or leaves with a "
                             f"finite support (Bernoulli, Binomial, Categorical); got {leaf!r}")
        flat, sets, batch = self._rows(points)
        values = 1 if support is None else len(support)
        own = spn.root.logits.element_size() * (values + 2) * spn.num_channels * spn.num_features * spn.num_leaves \
            * spn.num_repetitions
        grad = self._records_graph(points)

        def expected(_: int, y: Tensor, index: Tensor) -> Tensor:
            rows = row_parameters(spn, self._sets_at(index))
            y = spn.flatten_data(y)
            out = [upward_from_regions_rows(rows, region_sums(spn.leaf_layer, _rbf_leaves(
                leaf, rows.leaf, y, bandwidth, support).sum(1))).log_likelihood.exp() for bandwidth in bandwidths]
            return torch.stack(out, 1)  # [n, len(bandwidths)]

        out = batching.map_rows(expected, flat.shape[0], self._row_bytes(own, grad), [flat, sets], self._anchor(),
                                checkpointed=grad)
        return cast(Tensor, out).T.reshape((len(bandwidths),) + batch)


def _rbf_leaves(leaf: Leaf, params: Params, y: Tensor, bandwidth: float, support: Tensor | None) -> Tensor:
    """``log E_component[exp(−(X − y)² / (2σ²))]`` ``[N, C, F, I, R]`` of every component of every row (parameters
    ``[N, C, F, I, R, *E]``) at ``y [N, C, F]`` (0 where ``y`` is NaN): the Gaussian integral for Normal leaves, else
    a sum over the finite ``support``."""
    missing = torch.isnan(y)
    safe = torch.where(missing, torch.zeros_like(y), y)[..., None, None]
    if support is None:
        variance = params["scale"].square() + bandwidth**2
        out = 0.5 * torch.log(bandwidth**2 / variance) - (params["loc"] - safe).square() / (2 * variance)
    else:
        values = support.to(dtype=y.dtype, device=y.device)
        log_pmf = leaf.log_prob(values.view((-1,) + (1,) * safe.dim()), params).movedim(0, -1)  # [N, C, F, I, R, V]
        out = torch.logsumexp(log_pmf - (values - safe[..., None]).square() / (2 * bandwidth**2), dim=-1)
    return out.masked_fill(missing[..., None, None], 0.0)
