"""The fast straight-through path (no evidence) against the generic per-unit Gumbel-Softmax path.

All-NaN evidence leaves every posterior equal to the prior but takes the generic path, so both must have
the same law: the same exact samples forward and the same expected gradient backward.
"""

import itertools

import pytest
import torch
from scipy.stats import chi2

from pyro_spn import RatSPN
from pyro_spn.leaves import Bernoulli, Normal


def _sum_weight_gradients(spn: RatSPN, weights: torch.Tensor, evidence: torch.Tensor | None) -> torch.Tensor:
    spn.zero_grad()
    n = weights.shape[0]
    x = spn.sample(n, "straight_through", temperature=0.7, interpolation="unit", evidence=evidence)
    ((x * weights).sum(-1) ** 2).mean().backward()  # nonlinear, so the selections' gradients matter
    return torch.cat([layer.logits.grad.flatten() for layer in spn.inner_layers])


def test_fast_and_generic_straight_through_agree_in_expectation():
    """Sensitive enough to catch a fast path whose soft selection is not coupled to its hard draw
    (that mutant gives max |z| ≈ 9 here; the real one ≈ 3)."""
    torch.manual_seed(0)
    spn = RatSPN(4, depth=2, num_repetitions=2, num_sums=3, num_leaves=2, leaf=Normal(), seed=3).double()
    n, repeats = 20_000, 8
    weights = torch.linspace(-1.0, 2.0, 4, dtype=torch.float64).expand(n, 4)
    nan = torch.full((n, 4), float("nan"), dtype=torch.float64)
    fast = torch.stack([_sum_weight_gradients(spn, weights, None) for _ in range(repeats)])
    generic = torch.stack([_sum_weight_gradients(spn, weights, nan) for _ in range(repeats)])
    standard_error = (fast.var(0) / repeats + generic.var(0) / repeats).sqrt()
    z = (fast.mean(0) - generic.mean(0)).abs() / standard_error
    assert z.max() < 5.5, z.max()


@pytest.mark.parametrize("evidence", [False, True])
def test_straight_through_unit_samples_are_exact(evidence):
    torch.manual_seed(1)
    spn = RatSPN(4, depth=2, num_repetitions=3, num_sums=3, num_leaves=2, leaf=Bernoulli(), seed=2).double()
    configurations = torch.tensor(list(itertools.product([0, 1], repeat=4)), dtype=torch.float64)
    with torch.no_grad():
        probs = spn(configurations).exp()
    n = 40_000
    nan = torch.full((n, 4), float("nan"), dtype=torch.float64) if evidence else None
    x = spn.sample(n, "straight_through", temperature=0.5, interpolation="unit", evidence=nan).detach()
    codes = (x * torch.tensor([8.0, 4, 2, 1], dtype=torch.float64)).sum(-1).long()
    counts = torch.bincount(codes, minlength=16).double()
    expected = probs * n
    statistic = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2.sf(statistic, 15) > 1e-3
