"""Exact moments of a circuit (pyro_spn.expectations.mean / variance / covariance), unconditional and given evidence:
against enumeration of every state for discrete leaves (unbounded counts truncated where every component's tail is
below 1e-12) and against Monte Carlo for continuous ones."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import all_states, spread_out

from pyro_spn import RatSPN, SPNDistribution
from pyro_spn.distribution import ConditionalSPNDistribution
from pyro_spn.expectations import MAX_COVARIANCE_VARIABLES, covariance, mean, moments, support_log_probs, variance
from pyro_spn.leaves import Bernoulli, Binomial, Categorical, Gamma, Mixed, Normal, Poisson

DTYPE = torch.float64
NAN = math.nan


def circuit(leaf, event_shape=3, seed: int = 0, depth: int = 2) -> RatSPN:
    spn = RatSPN(event_shape, depth=depth, num_repetitions=3, num_sums=2, num_leaves=2, leaf=leaf, seed=seed)
    return spread_out(spn.to(DTYPE), seed)


def enumerated_moments(spn: RatSPN, values, evidence: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(mean [N, D], covariance [N, D, D])`` of the flattened variables given each row of ``evidence [N, D]``, by
    enumerating every completion (``values``: each variable's support)."""
    states = all_states(values)  # [S, D]
    shape = (-1,) + tuple(spn.event_shape)
    means, covariances = [], []
    for row in evidence:
        consistent = ((states == row) | torch.isnan(row)).all(1)
        chosen = states[consistent]
        ll = spn(chosen.reshape(shape))
        weights = (ll - torch.logsumexp(ll, 0)).exp()
        m = weights @ chosen
        centered = chosen - m
        means.append(m)
        covariances.append(torch.einsum("s,si,sj->ij", weights, centered, centered))
    return torch.stack(means), torch.stack(covariances)


def rows(d: int, top: float) -> torch.Tensor:
    """Evidence rows over ``d`` variables: none observed, one observed at ``top``, one at 0."""
    out = torch.full((3, d), NAN, dtype=DTYPE)
    out[1, 0] = top
    out[2, d - 1] = 0.0
    return out


# -- the code proposed for SPNDistribution / ConditionalSPNDistribution, as plain functions -------------------
def distribution_variance(d: SPNDistribution) -> torch.Tensor:
    return variance(d.spn).expand(d.batch_shape + d.event_shape)


def distribution_covariance(d: SPNDistribution) -> torch.Tensor:
    size = math.prod(d.event_shape)
    return covariance(d.spn).expand(d.batch_shape + (size, size))


def conditional_variance(c: ConditionalSPNDistribution) -> torch.Tensor:
    flat, _ = c._flat(c.evidence)
    return variance(c.spn, flat).reshape(c.evidence.shape)


def conditional_covariance(c: ConditionalSPNDistribution) -> torch.Tensor:
    flat, _ = c._flat(c.evidence)
    size = math.prod(c.event_shape)
    return covariance(c.spn, flat).reshape(c.batch_shape + (size, size))


# -- discrete circuits against enumeration -------------------------------------------------------------------
DISCRETE = {
    "bernoulli": (lambda: Bernoulli(), 4, (0.0, 1.0)),
    "binomial": (lambda: Binomial(total_count=3), 3, (0.0, 1.0, 2.0, 3.0)),
    "categorical": (lambda: Categorical(3), 3, (0.0, 1.0, 2.0)),
}


@pytest.mark.parametrize("name", list(DISCRETE))
def test_moments_match_enumeration(name):
    make, size, values = DISCRETE[name]
    spn = circuit(make(), size)
    evidence = rows(size, values[-1])
    exact_mean, exact_cov = enumerated_moments(spn, [values] * size, evidence)
    torch.testing.assert_close(mean(spn, evidence), exact_mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(covariance(spn, evidence), exact_cov, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(variance(spn, evidence), exact_cov.diagonal(dim1=1, dim2=2), rtol=1e-10, atol=1e-12)
    # without evidence: the first row
    torch.testing.assert_close(covariance(spn), exact_cov[0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(variance(spn), exact_cov[0].diagonal(), rtol=1e-10, atol=1e-12)
    assert (covariance(spn, evidence)[1, 0] == 0).all() and (variance(spn, evidence)[2, -1] == 0)


def test_moments_of_channels_follow_the_flattened_event():
    spn = circuit(Bernoulli(), (2, 1, 2))
    evidence = torch.tensor([[NAN] * 4, [1.0, NAN, NAN, 0.0]], dtype=DTYPE)
    exact_mean, exact_cov = enumerated_moments(spn, [(0.0, 1.0)] * 4, evidence)
    shaped = evidence.reshape(2, 2, 1, 2)
    torch.testing.assert_close(covariance(spn, shaped), exact_cov, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(variance(spn, shaped).reshape(2, 4), exact_cov.diagonal(dim1=1, dim2=2))
    torch.testing.assert_close(mean(spn, shaped).reshape(2, 4), exact_mean)


def test_mixed_leaves_moments_match_enumeration():
    spn = circuit(Mixed([(Binomial(total_count=2), 2), (Categorical(3), 1)]), 3)
    values = [(0.0, 1.0, 2.0)] * 3
    evidence = rows(3, 2.0)
    exact_mean, exact_cov = enumerated_moments(spn, values, evidence)
    torch.testing.assert_close(covariance(spn, evidence), exact_cov, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(variance(spn, evidence), exact_cov.diagonal(dim1=1, dim2=2), rtol=1e-10, atol=1e-12)


def test_unbounded_counts_moments_match_truncated_enumeration():
    spn = circuit(Poisson(), 2, depth=1)
    with torch.no_grad():
        spn.leaf_layer.log_rate.clamp_(-1.0, 1.5)  # rates up to e^1.5: the tail beyond 40 is far below 1e-12
    support = [float(k) for k in range(41)]
    evidence = rows(2, 3.0)
    exact_mean, exact_cov = enumerated_moments(spn, [support] * 2, evidence)
    torch.testing.assert_close(mean(spn, evidence), exact_mean, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(covariance(spn, evidence), exact_cov, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(variance(spn, evidence), exact_cov.diagonal(dim1=1, dim2=2), rtol=1e-8, atol=1e-10)


def test_covariance_gradient_matches_enumeration():
    spn = circuit(Bernoulli(), 3)
    evidence = rows(3, 1.0)
    params = list(spn.parameters())
    ours = torch.autograd.grad(covariance(spn, evidence).sum() + variance(spn, evidence).sum(), params)
    _, exact_cov = enumerated_moments(spn, [(0.0, 1.0)] * 3, evidence)
    exact = torch.autograd.grad(exact_cov.sum() + exact_cov.diagonal(dim1=1, dim2=2).sum(), params)
    for a, b in zip(ours, exact, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-11)


# -- continuous circuits against Monte Carlo -------------------------------------------------------------------
def assert_close_to_monte_carlo(samples: torch.Tensor, cov: torch.Tensor) -> None:
    """``cov [D, D]`` within 5 standard errors of the sample covariance of ``samples [n, D]``."""
    n = samples.shape[0]
    centered = samples - samples.mean(0)
    products = centered[:, :, None] * centered[:, None, :]
    estimate = products.mean(0)
    error = products.std(0) / math.sqrt(n)
    assert bool(((estimate - cov).abs() <= 5 * error + 1e-9).all()), (estimate, cov, error)


@pytest.mark.parametrize("leaf", [Normal(), Gamma()], ids=["normal", "gamma"])
def test_continuous_covariance_matches_monte_carlo(leaf):
    torch.manual_seed(0)
    spn = circuit(leaf, 3)
    d = SPNDistribution(spn)
    with torch.no_grad():
        samples = d.sample((40_000,))
        cov = covariance(spn)
    assert_close_to_monte_carlo(samples, cov)
    torch.testing.assert_close(variance(spn), cov.diagonal())
    torch.testing.assert_close(cov, cov.T)
    assert bool((torch.linalg.eigvalsh(cov) > 0).all())


def test_conditional_covariance_matches_monte_carlo():
    torch.manual_seed(1)
    spn = circuit(Normal(), 3)
    evidence = torch.tensor([NAN, 0.7, NAN], dtype=DTYPE)
    conditional = SPNDistribution(spn).condition(evidence)
    with torch.no_grad():
        samples = conditional.sample((40_000,))
        cov = conditional_covariance(conditional)
    assert cov.shape == (3, 3)
    assert bool((cov[1] == 0).all()) and bool((cov[:, 1] == 0).all())
    assert_close_to_monte_carlo(samples, cov)
    torch.testing.assert_close(conditional_variance(conditional), cov.diagonal())


# -- the distribution wrappers, limits, per-component moments ----------------------------------------------
def test_distribution_wrappers_have_torch_shapes():
    spn = circuit(Binomial(total_count=3), (1, 2, 2))
    d = SPNDistribution(spn)
    assert distribution_variance(d).shape == (1, 2, 2)
    assert distribution_covariance(d).shape == (4, 4)
    expanded = d.expand((5,))
    assert distribution_covariance(expanded).shape == (5, 4, 4)
    torch.testing.assert_close(distribution_variance(d).sqrt().flatten(), distribution_covariance(d).diagonal().sqrt())
    evidence = torch.full((2, 1, 2, 2), NAN, dtype=DTYPE)
    evidence[1, 0, 0, 0] = 2.0
    conditional = d.condition(evidence)
    assert conditional_variance(conditional).shape == (2, 1, 2, 2)
    assert conditional_covariance(conditional).shape == (2, 4, 4)
    assert conditional_variance(conditional)[1, 0, 0, 0] == 0


def test_covariance_refuses_too_many_variables_and_bad_evidence():
    spn = RatSPN(MAX_COVARIANCE_VARIABLES + 1, depth=1, num_repetitions=1, num_sums=1, num_leaves=1, leaf=Normal())
    with pytest.raises(ValueError, match="covariance"):
        covariance(spn)
    assert variance(spn).shape == (MAX_COVARIANCE_VARIABLES + 1,)
    small = circuit(Normal(), 3)
    with pytest.raises(ValueError, match="evidence"):
        covariance(small, torch.zeros(2, 4, dtype=DTYPE))


@pytest.mark.parametrize("leaf", [Bernoulli(), Binomial(total_count=4), Categorical(5)], ids=["b", "binomial", "c"])
def test_closed_form_moments_equal_sums_over_the_support(leaf):
    spn = circuit(leaf, 3)
    params = spn.leaf_layer.params()
    values, log_pmf = support_log_probs(leaf, params, params["logits"])
    pmf = log_pmf.exp()
    expected = torch.stack([(pmf * values).sum(-1), (pmf * values.square()).sum(-1)], -1)
    torch.testing.assert_close(moments(leaf, params), expected, rtol=1e-12, atol=1e-12)
