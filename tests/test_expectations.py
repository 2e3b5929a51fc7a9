"""Exact expectations under a circuit (pyro_spn.expectations) against enumeration of every state: posterior flows,
per-variable statistics given evidence, and their gradients."""

from __future__ import annotations

import pytest
import torch
from conftest import all_states, spread_out

from pyro_spn import RatSPN
from pyro_spn.expectations import (
    bernoulli_log_terms,
    expected_statistics,
    moments,
    posterior_flows,
    rbf_expectations,
)
from pyro_spn.leaves import Bernoulli, Binomial, Categorical, Mixed, Normal

DTYPE = torch.float64
NAN = float("nan")
LEAVES = {"bernoulli": (Bernoulli(), (0.0, 1.0)), "binomial": (Binomial(total_count=3), (0.0, 1.0, 2.0, 3.0)),
          "categorical": (Categorical(3), (0.0, 1.0, 2.0))}


def circuit(leaf, num_features: int = 4, seed: int = 0) -> RatSPN:
    spn = RatSPN(num_features, depth=2, num_repetitions=3, num_sums=2, num_leaves=2, leaf=leaf, seed=seed).to(DTYPE)
    return spread_out(spn, seed)


def evidence_rows(values) -> torch.Tensor:
    top = values[-1]
    return torch.tensor([[NAN, NAN, NAN, NAN], [top, NAN, 0.0, NAN], [NAN, 1.0, NAN, top], [0.0, NAN, NAN, NAN]],
                        dtype=DTYPE)


def enumerated(spn: RatSPN, values, evidence: torch.Tensor, h) -> torch.Tensor:
    """``E[h(X_f) | evidence]`` ``[N, F, K]`` by enumerating every completion; 0 at the observed entries."""
    states = all_states([values] * spn.num_features)  # [S, F]
    out = []
    for row in evidence:
        consistent = ((states == row) | torch.isnan(row)).all(1)
        ll = spn(states[consistent])
        weights = (ll - torch.logsumexp(ll, 0)).exp()  # [S']
        out.append(torch.einsum("s,sfk->fk", weights, h(states[consistent])))
    return torch.stack(out) * torch.isnan(evidence)[..., None]


def free(stats: torch.Tensor, evidence: torch.Tensor) -> torch.Tensor:
    """``expected_statistics``' entries ``[N, 1, F, K]`` of the free variables (0 at the observed ones)."""
    return stats[:, 0] * torch.isnan(evidence)[..., None]


def square_and_value(x: torch.Tensor) -> torch.Tensor:
    return torch.stack([x, x.square()], dim=-1)


@pytest.mark.parametrize("name", list(LEAVES))
def test_moments_given_evidence_match_enumeration(name):
    leaf, values = LEAVES[name]
    spn = circuit(leaf, seed=1)
    evidence = evidence_rows(values)
    got = free(expected_statistics(spn, evidence, moments), evidence)  # [N, F, 2]
    torch.testing.assert_close(got, enumerated(spn, values, evidence, square_and_value), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["bernoulli", "binomial"])
def test_bernoulli_log_terms_and_their_gradient_match_enumeration(name):
    leaf, values = LEAVES[name]
    spn = circuit(leaf, seed=2)
    evidence = evidence_rows(values)
    scale, eps = values[-1], 1e-3

    def terms(x: torch.Tensor) -> torch.Tensor:
        p = (x / scale).clamp(eps, 1 - eps)
        return torch.stack([p.log(), torch.log1p(-p)], dim=-1)

    weights = torch.linspace(-1.0, 2.0, 2 * 4 * 4, dtype=DTYPE).view(4, 4, 2)

    def gradient(value: torch.Tensor) -> torch.Tensor:
        spn.zero_grad()
        (value * weights).sum().backward()
        return torch.cat([p.grad.flatten() for p in spn.parameters()])

    got = free(expected_statistics(spn, evidence, bernoulli_log_terms(scale, eps)), evidence)
    want = enumerated(spn, values, evidence, terms)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gradient(got), gradient(enumerated(spn, values, evidence, terms)), rtol=1e-8,
                               atol=1e-10)


def test_posterior_flows_sum_to_one_and_have_exact_gradients():
    leaf, values = LEAVES["binomial"]
    spn = circuit(leaf, seed=3)
    evidence = evidence_rows(values)
    flows = posterior_flows(spn, evidence)
    assert flows.shape == (4, 4, 2, 3)
    torch.testing.assert_close(flows.sum((2, 3)), torch.ones(4, 4, dtype=DTYPE))
    # the gradient of the conditional means (a linear function of the flows) against enumeration
    got = free(expected_statistics(spn, evidence, moments), evidence)[..., 0]
    want = enumerated(spn, values, evidence, square_and_value)[..., 0]
    spn.zero_grad()
    got.sum().backward()
    mine = torch.cat([p.grad.flatten() for p in spn.parameters()])
    spn.zero_grad()
    want.sum().backward()
    theirs = torch.cat([p.grad.flatten() for p in spn.parameters()])
    torch.testing.assert_close(mine, theirs, rtol=1e-8, atol=1e-10)


def test_normal_moments_match_quadrature_of_the_conditional():
    spn = circuit(Normal(), num_features=2, seed=4)
    evidence = torch.tensor([[NAN, 0.7], [NAN, -1.5]], dtype=DTYPE)
    got = expected_statistics(spn, evidence, moments)[:, 0, 0]  # [N, 2] for the free variable
    grid = torch.linspace(-12.0, 12.0, 4001, dtype=DTYPE)
    for row, moment in zip(evidence, got, strict=True):
        points = torch.stack([grid, row[1].expand_as(grid)], dim=1)
        density = spn(points).exp()
        density = density / torch.trapezoid(density, grid)
        want = torch.stack([torch.trapezoid(density * grid, grid), torch.trapezoid(density * grid**2, grid)])
        torch.testing.assert_close(moment, want, rtol=1e-6, atol=1e-8)


def test_mixed_leaves_take_each_familys_statistics():
    leaf = Mixed([(Binomial(total_count=3), 2), (Normal(), 2)])
    spn = circuit(leaf, seed=5)
    evidence = torch.tensor([[NAN, NAN, 0.3, -0.2], [1.0, NAN, NAN, 0.5]], dtype=DTYPE)
    got = free(expected_statistics(spn, evidence, moments), evidence)[:, :2]  # the Binomial variables
    states = all_states([(0.0, 1.0, 2.0, 3.0)] * 2)
    for row, moment in zip(evidence, got, strict=True):
        complete = torch.cat([states, row[2:].expand(len(states), 2)], dim=1)
        consistent = (complete[:, :2] == row[:2]) | torch.isnan(row[:2])
        complete = complete[consistent.all(1)]
        ll = spn(complete)
        w = (ll - torch.logsumexp(ll, 0)).exp()
        want = torch.einsum("s,sfk->fk", w, square_and_value(complete[:, :2])) * torch.isnan(row[:2])[:, None]
        torch.testing.assert_close(moment, want, rtol=1e-10, atol=1e-12)


def test_rbf_expectations_match_enumeration_and_reject_continuous_families_without_closed_form():
    leaf, values = LEAVES["categorical"]
    spn = circuit(leaf, seed=6)
    states = all_states([values] * 4)
    # points in the support (a table of the support's kernel values) and off it (a sum per point)
    for points in (torch.tensor([[0.0, 2.0, 1.0, 1.0], [2.0, 2.0, 0.0, 1.0]], dtype=DTYPE),
                   torch.tensor([[0.5, 2.0, 1.0, -1.0], [2.0, 3.5, 0.25, 1.0]], dtype=DTYPE)):
        gram = torch.exp(-torch.cdist(states, points).square() / (2 * 0.9**2))
        torch.testing.assert_close(rbf_expectations(spn, points, (0.9,))[0], spn(states).exp() @ gram, rtol=1e-10,
                                   atol=1e-12)
    normal = circuit(Normal(), seed=6)
    with pytest.raises(ValueError, match="finite support"):
        expected_statistics(normal, evidence_rows((0.0, 1.0)), bernoulli_log_terms(1.0, 1e-6))


def test_rbf_expectations_of_mixed_leaves_with_missing_entries_match_enumeration_and_quadrature():
    """A one-hot table contraction (the Binomial variables), a closed form (the Normal one) and NaN (marginalized)
    entries in one circuit, against a sum over the discrete states and Simpson's rule over the real one."""
    spn = circuit(Mixed([(Binomial(total_count=3), 3), (Normal(), 1)]), seed=7)
    points = torch.tensor([[0.0, 3.0, 1.0, 0.4], [2.0, NAN, 1.0, -1.0], [1.0, 1.0, 2.0, NAN], [3.0, 0.0, 0.0, 1.5],
                           [1.0, 2.0, 3.0, 0.0]], dtype=DTYPE)
    bandwidths = (0.7, 2.5)
    grid = torch.linspace(-14.0, 14.0, 1401, dtype=DTYPE)
    weights = torch.ones(len(grid), dtype=DTYPE)
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
    weights *= (grid[1] - grid[0]) / 3
    discrete = all_states([(0.0, 1.0, 2.0, 3.0)] * 3)
    states = torch.cat([discrete.repeat_interleave(len(grid), 0), grid.repeat(len(discrete))[:, None]], dim=1)
    mass = spn(states).exp() * weights.repeat(len(discrete))
    for index, bandwidth in enumerate(bandwidths):
        observed = ~torch.isnan(points)
        squared = ((states[:, None, :] - torch.nan_to_num(points)[None]) ** 2 * observed[None]).sum(-1)
        want = mass @ torch.exp(-squared / (2 * bandwidth**2))
        got = rbf_expectations(spn, points, bandwidths)[index]
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-10)
