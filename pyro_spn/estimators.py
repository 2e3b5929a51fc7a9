"""Gradients of expectations under a circuit: ``E_{x~p}[f(x)]`` and its gradient w.r.t. the circuit's parameters.

:func:`expectation` returns a scalar whose value estimates ``E_p[f]`` and whose gradient estimates ``∇ E_p[f]``:

======================  ==================================================================================
``"soft"``              the paper's relaxation: ``mean f(x̃)`` over soft samples (biased for ``τ > 0``)
``"straight_through"``  exact samples forward, the relaxation's gradient backward (biased)
``"score"``             exact samples and the score function ``E[(f(x) − b) ∇ log p(x)]`` with the circuit's
                        exact ``log_prob`` and a baseline ``b``: unbiased for every leaf family, discrete included
``"exact"``             no sampling at all, for ``f`` that factorizes over the variables (:class:`RBFKernel`): one
                        upward pass with every leaf replaced by its expectation of the factor
======================  ==================================================================================

Baselines of ``"score"`` (all keep it unbiased: ``b`` never depends on the sample it multiplies):

* ``"leave_one_out"`` (default): ``b_i = mean_{j≠i} f(x_j)``;
* ``"none"``: ``b = 0``.

``f`` maps samples ``[n, *event_shape]`` to ``[n]``; it may have parameters of its own (a discriminator, a kernel
encoder), which receive the gradient of the estimate's value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, cast

import torch
from torch import Tensor

from . import checks
from .distribution import SPNDistribution
from .expectations import rbf_expectations
from .joint import MarginalSPNDistribution

Estimator = Literal["soft", "straight_through", "score", "exact"]
ESTIMATORS: tuple[Estimator, ...] = ("soft", "straight_through", "score", "exact")
Baseline = Literal["leave_one_out", "none"]
#: A circuit's distribution: exact samples, an exact ``log_prob`` and exact expectations.
Circuit = SPNDistribution | MarginalSPNDistribution
BASELINES: tuple[Baseline, ...] = ("leave_one_out", "none")


class RBFKernel:
    """``f(x) = mean_j Π_d exp(−(x_d − y_jd)² / (2σ²))``: the Gaussian (RBF) kernel between a sample and the
    reference points ``y`` (``[M, *event_shape]``), averaged over them. It factorizes over the variables, so
    ``"exact"`` computes ``E_p[f]`` without sampling.

    Args:
        points: the reference points ``y`` ``[M, *event_shape]`` (model space, without NaN).
        bandwidth: ``σ > 0``, in model units.
    """

    def __init__(self, points: Tensor, bandwidth: float) -> None:
        if not isinstance(points, Tensor) or points.dim() < 2:
            raise TypeError(f"points must be a tensor [M, *event_shape], got {points!r}")
        if bool(torch.isnan(points).any()):
            raise ValueError("points must not hold NaN")
        self.points = points
        self.bandwidth = checks.positive("bandwidth", bandwidth)

    def __call__(self, x: Tensor) -> Tensor:
        """``[*n, *event_shape]`` → ``[*n]`` (``n`` any batch dims, e.g. ``[samples, *batch_shape]``)."""
        event_dim = self.points.dim() - 1
        batch = x.shape[: x.dim() - event_dim]
        flat = x.reshape(-1, self.points[0].numel()).to(self.points.dtype)
        squared = torch.cdist(flat, self.points.flatten(1)).square()
        return torch.exp(-squared / (2 * self.bandwidth**2)).mean(1).reshape(batch)

    def expected(self, distribution: Circuit) -> Tensor:
        """``E_{x~p}[k(x, y_j)]`` for every reference point, ``[*batch_shape, M]``, exactly (one upward pass; a joint
        circuit's extras are marginalized; an amortized circuit's per batch element)."""
        return circuit_rbf_expectations(distribution, self.points, (self.bandwidth,))[0]


def _points_per_element(distribution: SPNDistribution, points: Tensor) -> Tensor:
    """``points [M, *event_shape]`` as ``[M, 1, …, 1, *event_shape]``, to broadcast with the batch shape."""
    return points.reshape((points.shape[0],) + (1,) * len(distribution.batch_shape) + points.shape[1:])


def circuit_rbf_expectations(distribution: Circuit, points: Tensor, bandwidths: Sequence[float]) -> Tensor:
    """:func:`~pyro_spn.expectations.rbf_expectations` under a circuit's distribution (a joint circuit's extras
    marginalized): ``[len(bandwidths), M]`` for ``points [M, *event_shape]``; ``[len(bandwidths), *batch_shape, M]``
    for an amortized circuit (every point under every batch element)."""
    if isinstance(distribution, SPNDistribution) and distribution.amortized:
        expected = distribution._rbf_expectations(_points_per_element(distribution, points), bandwidths)
        return expected.movedim(1, -1)
    if isinstance(distribution, MarginalSPNDistribution):
        joint = distribution.circuit
        return rbf_expectations(joint.spn, joint.join(points, None, x_name="points"), bandwidths)
    return rbf_expectations(distribution.spn, points, bandwidths)


def tractable(d: object, estimator: str) -> Circuit:
    """``d`` if it is a circuit's distribution (what ``"score"`` and ``"exact"`` need), else ``TypeError``."""
    if not isinstance(d, SPNDistribution | MarginalSPNDistribution):
        raise TypeError(f"estimator {estimator!r} needs a circuit's distribution (a pyro_spn.SPNDistribution or a "
                        f"joint's MarginalSPNDistribution), got {type(d).__name__}; other models take 'soft' (their "
                        f"own reparameterized samples)")
    return d


def with_rule(d: object, estimator: Estimator) -> object:
    """The model whose ``rsample`` the relaxed estimator ``estimator`` uses: a circuit's distribution (or a joint's
    data marginal) with soft (``"soft"``) or straight-through (``"straight_through"``) samples; any other model (a
    GAN generator) as it is, its own reparameterized samples."""
    hard = estimator == "straight_through"
    if isinstance(d, SPNDistribution):
        return SPNDistribution(d.spn, flat_parameters=d.flat_parameters, temperature=d.temperature, hard=hard,
                               interpolation=d.interpolation)
    if isinstance(d, MarginalSPNDistribution):
        return d.circuit.distribution(temperature=d.joint.temperature, hard=hard, interpolation=d.joint.interpolation)
    return d


def critic_samples(d: object, n: int, estimator: Estimator) -> Tensor:
    """``n`` samples, no gradient, for an objective's own networks (a discriminator, a kernel encoder) to train on: the
    relaxed samples the circuit is trained through for ``"soft"``, exact samples for the other estimators (a model
    without exact samples, a GAN generator, gives its own)."""
    with torch.no_grad():
        if estimator != "soft" and isinstance(d, SPNDistribution | MarginalSPNDistribution):
            return d.sample((n,))
        return cast(SPNDistribution, with_rule(d, estimator)).rsample((n,))


def _baseline(values: Tensor, baseline: Baseline) -> Tensor:
    """The baseline of every value ``[..., n]``: the mean of the others in its row (leave-one-out), or 0."""
    n = values.shape[-1]
    if baseline == "none" or n < 2:
        return torch.zeros_like(values)
    return (values.sum(-1, keepdim=True) - values) / (n - 1)


def score_surrogate(values: Tensor, log_p: Tensor, baseline: Baseline = "leave_one_out") -> Tensor:
    """``mean values + mean((values − b) · (log_p − log_p))``: the value of ``mean values`` and, backward, its own
    gradient (through ``f``'s parameters) plus the score-function term ``mean((f − b) ∇ log p)``.

    Args:
        values: ``f(x)`` at exact samples ``x``, ``[..., n]``: each row's ``n`` samples are independent draws of one
            distribution (the rows may differ, e.g. a decoder's for different codes).
        log_p: ``log p(x)`` of the samples, the same shape, differentiable w.r.t. the circuit's parameters.
        baseline: ``"leave_one_out"`` (``b_i = mean_{j≠i} f(x_j)`` within the row) or ``"none"``.
    """
    advantage = values.detach() - _baseline(values.detach(), baseline)
    return values.mean() + (advantage * (log_p - log_p.detach())).mean()


def expectation(distribution: object, f: Callable[[Tensor], Tensor], num_samples: int,
                estimator: Estimator = "score", *, baseline: Baseline = "leave_one_out") -> Tensor:
    """An estimate of ``E_{x~p}[f(x)]`` whose gradient estimates ``∇ E_p[f]`` (see the module docstring).

    Args:
        distribution: the circuit's distribution, or a joint circuit's data marginal (its temperature and
            interpolation serve the relaxed estimators); with ``"soft"`` also any model with reparameterized samples
            (``rsample``, e.g. a GAN generator).
        f: ``[n, *batch_shape, *event_shape]`` → ``[n, *batch_shape]`` (``batch_shape`` is ``()`` but for an
            amortized circuit, whose estimate is then the mean over its batch elements); for ``"exact"`` an
            :class:`RBFKernel`.
        num_samples: ``n`` samples (ignored by ``"exact"``).
        estimator: ``"soft"``, ``"straight_through"``, ``"score"`` or ``"exact"``.
        baseline: the score estimator's baseline, ``"leave_one_out"`` or ``"none"``.

    Returns:
        A scalar.
    """
    checks.choice("estimator", estimator, ESTIMATORS)
    checks.choice("baseline", baseline, BASELINES)
    if estimator == "soft":
        relaxed = cast(SPNDistribution, with_rule(distribution, estimator))
        return f(relaxed.rsample((checks.integer("num_samples", num_samples),))).mean()
    circuit = tractable(distribution, estimator)
    if estimator == "exact":
        if not isinstance(f, RBFKernel):
            raise TypeError(f"f must be a pyro_spn.estimators.RBFKernel for estimator 'exact' (a function that "
                            f"factorizes over the variables), got {type(f).__name__}")
        return f.expected(circuit).mean()
    n = checks.integer("num_samples", num_samples)
    if estimator == "straight_through":
        return f(cast(SPNDistribution, with_rule(circuit, estimator)).rsample((n,))).mean()
    with torch.no_grad():
        x = circuit.sample((n,))
    return score_surrogate(f(x).movedim(0, -1), circuit.log_prob(x).movedim(0, -1), baseline)


def rbf_mmd2(distribution: Circuit, data: Tensor, bandwidths: tuple[float, ...],
             num_samples: int) -> Tensor:
    """``MMD²(p, data)`` under ``Σ_σ k_σ`` with exact expectations under the circuit and an unbiased gradient with no
    relaxation: ``E_{x,x'~p}[k] − 2 E_{x~p, y~data}[k] + E_{y,y'}[k]``.

    The data term ``E_{x~p}[k(x, y)]`` is exact (one upward pass per bandwidth over the batch). The model term
    ``E_{x,x'}[k(x, x')]`` is ``E_{x'}[g(x')]`` with ``g(x') = E_x[k(x, x')]`` exact: its value is the mean of ``g``
    at ``num_samples`` exact samples ``x'``, and its gradient ``2 E_{x'}[∇ g(x')]`` (both arguments depend on the
    parameters, symmetrically), an unbiased estimate. The data-only term is the unbiased within-batch mean.

    Args:
        distribution: the circuit's distribution (or a joint circuit's data marginal).
        data: ``[M, *event_shape]`` (model space).
        bandwidths: the RBF bandwidths ``σ`` (model units).
        num_samples: exact samples ``x'`` of the model term.

    Returns:
        A scalar.
    """
    with torch.no_grad():
        samples = distribution.sample((checks.integer("num_samples", num_samples),))
    if isinstance(distribution, SPNDistribution) and distribution.amortized:
        return _amortized_rbf_mmd2(distribution, samples, data, bandwidths)
    points = torch.cat([samples, data.to(samples.dtype)])
    expected = circuit_rbf_expectations(distribution, points, bandwidths)  # [B, n + M]
    model, cross = expected[:, : len(samples)].mean(1), expected[:, len(samples):].mean(1)  # [B] each
    within = _within_data(data.to(samples.dtype), bandwidths)
    return ((2 * model - model.detach()) - 2 * cross + within).sum()


def _within_data(data: Tensor, bandwidths: tuple[float, ...]) -> Tensor:
    """The unbiased within-data term ``E_{y,y'}[k]`` of every bandwidth, ``[B]`` (0 for fewer than two points)."""
    flat = data.flatten(1)
    if len(flat) < 2:
        return flat.new_zeros(len(bandwidths))
    squared = torch.cdist(flat, flat).square()
    off_diagonal = ~torch.eye(len(flat), dtype=torch.bool, device=flat.device)
    return torch.stack([torch.exp(-squared / (2 * s**2))[off_diagonal].mean() for s in bandwidths])


def _amortized_rbf_mmd2(distribution: SPNDistribution, samples: Tensor, data: Tensor,
                        bandwidths: tuple[float, ...]) -> Tensor:
    """:func:`rbf_mmd2` of an amortized circuit: every batch element against the same ``data``, each element's model
    term from its own exact ``samples [n, *batch_shape, *event_shape]``; the mean over the batch elements."""
    data = data.to(samples.dtype)
    model = distribution._rbf_expectations(samples, bandwidths).mean(1)  # [B, *batch_shape]
    cross = distribution._rbf_expectations(_points_per_element(distribution, data), bandwidths).mean(1)
    within = _within_data(data, bandwidths).reshape((-1,) + (1,) * len(distribution.batch_shape))
    return ((2 * model - model.detach()) - 2 * cross + within).sum(0).mean()


__all__ = ["BASELINES", "ESTIMATORS", "Circuit", "RBFKernel", "circuit_rbf_expectations", "critic_samples",
           "expectation", "rbf_mmd2", "score_surrogate", "tractable", "with_rule"]
