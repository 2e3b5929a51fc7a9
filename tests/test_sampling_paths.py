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


def _all_gradients(spn: RatSPN, weights: torch.Tensor) -> torch.Tensor:
    spn.zero_grad()
    x = spn.sample(weights.shape[0], "straight_through", temperature=0.7, interpolation="region")
    ((x * weights).flatten(1).sum(-1) ** 2).mean().backward()
    return torch.cat([p.grad.flatten() for p in spn.parameters()])


def test_contracted_leaf_gradient_matches_drawing_every_component(monkeypatch):
    """Gaussian-relaxed leaves skip drawing the unselected components (their sum is drawn in closed form);
    the expected gradient must equal the one of drawing them all. Two channels and padded regions."""
    torch.manual_seed(0)
    spn = RatSPN((2, 1, 5), depth=2, num_repetitions=2, num_sums=2, num_leaves=3, leaf=Normal(), seed=1).double()
    n, repeats = 20_000, 8
    weights = torch.linspace(-1.0, 1.5, 10, dtype=torch.float64).reshape(1, 2, 1, 5).expand(n, 2, 1, 5)
    contracted = torch.stack([_all_gradients(spn, weights) for _ in range(repeats)])
    monkeypatch.setattr(spn.leaf, "gaussian_relaxation", lambda: None)
    drawn = torch.stack([_all_gradients(spn, weights) for _ in range(repeats)])
    standard_error = (contracted.var(0) / repeats + drawn.var(0) / repeats).sqrt() + 1e-12
    z = (contracted.mean(0) - drawn.mean(0)).abs() / standard_error
    assert z.max() < 5.5, z.max()


def test_contracted_selection_gradient_has_the_law_of_the_drawn_sum():
    """Per leaf selection entry, for a fixed upstream gradient g: an unselected component's gradient is
    N(Σ g μ, Σ g² σ²) over its region's variables and channels; a selected one's is Σ g · coupled."""
    from pyro_spn.spn import _ContractedSelectionGradient

    torch.manual_seed(0)
    spn = RatSPN((2, 1, 5), depth=2, num_repetitions=2, num_sums=2, num_leaves=3, leaf=Normal(), seed=1).double()
    n = 4000
    hard = spn.top_down(n, "hard").detach()
    coupled = torch.randn(n, 2, 5, dtype=torch.float64)
    g = torch.randn(n, 2, 5, dtype=torch.float64)
    mean, std = (m.detach() for m in spn.leaf.gaussian_relaxation())  # [C, F, I, R]
    selection = hard.clone().requires_grad_()
    term = _ContractedSelectionGradient.apply(
        selection, spn, spn._component_slots(mean), spn._component_slots(std * std), coupled
    )
    assert torch.equal(term, torch.zeros_like(term))
    term.backward(g)
    expected_mean = torch.zeros_like(hard)
    expected_var = torch.zeros_like(hard)
    expected_chosen = torch.zeros(hard.shape[:3], dtype=torch.float64)
    for r in range(2):
        for v in range(5):
            region = spn.variable_region[r, v]
            expected_mean[:, r, region] += (g[:, :, v, None] * mean[:, v, :, r]).sum(1)
            expected_var[:, r, region] += (g[:, :, v, None] ** 2 * std[:, v, :, r] ** 2).sum(1)
            expected_chosen[:, r, region] += (g[:, :, v] * coupled[:, :, v]).sum(1)
    selected = hard > 0.5
    assert torch.allclose(selection.grad[selected], expected_chosen[..., None].expand_as(hard)[selected])
    free = ~selected & (expected_var > 0)
    z = (selection.grad - expected_mean)[free] / expected_var[free].sqrt()
    assert abs(z.mean().item()) < 0.02 and abs(z.std().item() - 1) < 0.02
    assert torch.equal(selection.grad[~selected & (expected_var == 0)], expected_mean[~selected & (expected_var == 0)])
