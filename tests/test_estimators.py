"""Gradient estimators of ``E_p[f]`` against exact gradients: by enumeration of every state (discrete leaves) or by
quadrature on a fine grid (Normal leaves). Unbiased estimators must agree in the mean of many estimates within a few
standard errors; the exact estimator must agree to round-off."""

from __future__ import annotations

import pytest
import torch
from conftest import all_states, spread_out

from pyro_spn import RatSPN, SPNDistribution
from pyro_spn.estimators import RBFKernel, expectation, rbf_mmd2
from pyro_spn.leaves import Bernoulli, Binomial, Categorical, Normal

DTYPE = torch.float64
DISCRETE = {"bernoulli": (Bernoulli(), (0.0, 1.0)), "binomial": (Binomial(total_count=3), (0.0, 1.0, 2.0, 3.0)),
            "categorical": (Categorical(3), (0.0, 1.0, 2.0))}


def circuit(leaf, num_features: int, seed: int = 0) -> RatSPN:
    spn = RatSPN(num_features, depth=2, num_repetitions=2, num_sums=2, num_leaves=2, leaf=leaf, seed=seed).to(DTYPE)
    return spread_out(spn, seed)


def nonlinear(x: torch.Tensor) -> torch.Tensor:
    """A function of samples ``[n, F]`` that is neither linear nor factorized."""
    return torch.sin(x.sum(-1)) + x[:, 0] * x[:, -1] - 0.3 * x[:, 1] ** 2


def gradient(spn: RatSPN, value: torch.Tensor) -> torch.Tensor:
    spn.zero_grad()
    value.backward()
    return torch.cat([p.grad.flatten() for p in spn.parameters()])


def exact_discrete(spn: RatSPN, values, f) -> torch.Tensor:
    states = all_states([values] * spn.num_features)
    return (spn(states).exp() * f(states)).sum()


def exact_by_quadrature(spn: RatSPN, f, half_width: float = 7.0, points: int = 241) -> torch.Tensor:
    """``∫∫ p(x) f(x) dx`` for a 2-variable circuit, Simpson's rule on ``[-w, w]²``."""
    grid = torch.linspace(-half_width, half_width, points, dtype=DTYPE)
    weights = torch.ones(points, dtype=DTYPE)
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
    weights *= (grid[1] - grid[0]) / 3
    x = torch.cartesian_prod(grid, grid)
    w = (weights[:, None] * weights[None, :]).flatten()
    return (w * spn(x).exp() * f(x)).sum()


def assert_unbiased(estimates: torch.Tensor, exact: torch.Tensor, bound: float = 5.0) -> None:
    """The mean of ``estimates [repeats, P]`` agrees with ``exact [P]`` within ``bound`` standard errors (and the check
    is informative: some exact entries are far from zero in those units)."""
    mean, error = estimates.mean(0), estimates.std(0) / estimates.shape[0] ** 0.5 + 1e-12
    z = (mean - exact).abs() / error
    assert z.max() < bound, (z.max(), mean, exact)
    assert (exact.abs() / error > 10).any(), "the test has no power"


@pytest.mark.parametrize("name", list(DISCRETE))
def test_score_estimator_is_unbiased_for_discrete_leaves(name):
    leaf, values = DISCRETE[name]
    spn = circuit(leaf, 3)
    exact = gradient(spn, exact_discrete(spn, values, nonlinear))
    d = SPNDistribution(spn)
    torch.manual_seed(0)
    estimates = torch.stack([gradient(spn, expectation(d, nonlinear, 2000, "score")) for _ in range(40)])
    assert_unbiased(estimates, exact)


def test_score_estimator_is_unbiased_for_normal_leaves():
    spn = circuit(Normal(), 2, seed=1)
    exact = gradient(spn, exact_by_quadrature(spn, nonlinear))
    d = SPNDistribution(spn)
    torch.manual_seed(1)
    estimates = torch.stack([gradient(spn, expectation(d, nonlinear, 2000, "score")) for _ in range(40)])
    assert_unbiased(estimates, exact)


def test_the_leave_one_out_baseline_reduces_the_variance_and_keeps_the_mean():
    leaf, values = DISCRETE["binomial"]
    spn = circuit(leaf, 3, seed=2)

    def shifted(x: torch.Tensor) -> torch.Tensor:
        return nonlinear(x) + 10.0  # a constant offset: no effect on the gradient, much on a baseline-free score

    exact = gradient(spn, exact_discrete(spn, values, shifted))
    d = SPNDistribution(spn)
    torch.manual_seed(2)
    with_baseline = torch.stack([gradient(spn, expectation(d, shifted, 500, "score")) for _ in range(40)])
    without = torch.stack([gradient(spn, expectation(d, shifted, 500, "score", baseline="none")) for _ in range(40)])
    assert_unbiased(with_baseline, exact)
    assert_unbiased(without, exact)
    assert with_baseline.var(0).sum() < 0.2 * without.var(0).sum()


@pytest.mark.parametrize("name", list(DISCRETE))
def test_exact_estimator_matches_enumeration(name):
    leaf, values = DISCRETE[name]
    spn = circuit(leaf, 4, seed=3)
    points = torch.tensor([[0.0, 1.0, 1.0, 2.0], [1.0, 0.0, 2.0, 0.0], [2.0, 2.0, 0.0, 1.0]], dtype=DTYPE)
    points = points.clamp(max=values[-1])
    kernel = RBFKernel(points, bandwidth=1.3)
    exact = exact_discrete(spn, values, kernel)
    value = expectation(SPNDistribution(spn), kernel, 1, "exact")
    torch.testing.assert_close(value, exact, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gradient(spn, value), gradient(spn, exact_discrete(spn, values, kernel)),
                               rtol=1e-8, atol=1e-10)


def test_exact_estimator_matches_quadrature_for_normal_leaves():
    spn = circuit(Normal(), 2, seed=4)
    kernel = RBFKernel(torch.tensor([[0.5, -1.0], [2.0, 0.0]], dtype=DTYPE), bandwidth=0.8)
    value = expectation(SPNDistribution(spn), kernel, 1, "exact")
    exact = exact_by_quadrature(spn, kernel)
    torch.testing.assert_close(value, exact, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(gradient(spn, value), gradient(spn, exact_by_quadrature(spn, kernel)),
                               rtol=1e-6, atol=1e-8)


def test_rbf_mmd2_is_unbiased_in_value_and_gradient():
    leaf, values = DISCRETE["binomial"]
    spn = circuit(leaf, 3, seed=5)
    data = torch.tensor([[0.0, 1.0, 3.0], [2.0, 2.0, 1.0], [3.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=DTYPE)
    bandwidths = (0.7, 2.0)
    states = all_states([values] * 3)

    def exact_mmd2() -> torch.Tensor:
        p = spn(states).exp()
        total = torch.zeros((), dtype=DTYPE)
        for bandwidth in bandwidths:
            gram = torch.exp(-torch.cdist(states, states).square() / (2 * bandwidth**2))
            cross = torch.exp(-torch.cdist(states, data).square() / (2 * bandwidth**2)).mean(1)
            within = torch.exp(-torch.cdist(data, data).square() / (2 * bandwidth**2))
            within = (within.sum() - within.diagonal().sum()) / (len(data) * (len(data) - 1))
            total = total + p @ gram @ p - 2 * p @ cross + within
        return total

    exact_value = exact_mmd2()
    exact = gradient(spn, exact_value)
    d = SPNDistribution(spn)
    torch.manual_seed(5)
    runs = [rbf_mmd2(d, data, bandwidths, 64) for _ in range(60)]
    values_ = torch.stack([r.detach() for r in runs])
    assert abs(float(values_.mean() - exact_value.detach())) < 5 * float(values_.std()) / 60**0.5 + 1e-12
    estimates = torch.stack([gradient(spn, r) for r in [rbf_mmd2(d, data, bandwidths, 64) for _ in range(60)]])
    assert_unbiased(estimates, exact)


def test_argument_errors():
    spn = circuit(Bernoulli(), 3)
    d = SPNDistribution(spn)
    with pytest.raises(ValueError, match="estimator"):
        expectation(d, nonlinear, 10, "reinforce")
    with pytest.raises(ValueError, match="baseline"):
        expectation(d, nonlinear, 10, baseline="mean")
    with pytest.raises(TypeError, match="RBFKernel"):
        expectation(d, nonlinear, 10, "exact")
    with pytest.raises(TypeError, match="num_samples"):
        expectation(d, nonlinear, 2.5)
    with pytest.raises(TypeError, match="distribution"):
        expectation(spn, nonlinear, 10)
    with pytest.raises(ValueError, match="bandwidth"):
        RBFKernel(torch.zeros(2, 3), 0.0)
