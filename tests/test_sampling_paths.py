"""Every path of the sampler's dispatch table (``FAST``) against its reference path (``REFERENCE``).

* deterministic rules (``argmax``, ``expected``): the same values;
* one-hot random rules (``exact``, ``straight_through``): samples of the law of the circuit (given the evidence), by
  a chi² test against exact probabilities, on the path that runs;
* soft rules: samples of the same law as the reference's (two-sample tests per variable, moments);
* differentiable rules whose path differs from its reference: the same expected gradient of a nonlinear function of
  the samples (a z-test over repeated batches).
"""

import pytest
import torch
from conftest import all_states, spread_out, state_index
from scipy import stats

from pyro_spn import RatSPN
from pyro_spn.leaves import Bernoulli, Normal
from pyro_spn.sampling import FAST, REFERENCE, sample, top_down
from pyro_spn.sampling.leaf_values import ContractedSelectionGradient

KEYS = sorted(FAST.children)
STATES = all_states([(0.0, 1.0)] * 4)


def _evidence(n: int, given: bool) -> torch.Tensor | None:
    """Variable 0 observed as 1 (the posterior differs from the prior), the rest missing; ``None`` without evidence."""
    if not given:
        return None
    evidence = torch.full((n, 4), float("nan"), dtype=torch.float64)
    evidence[:, 0] = 1.0
    return evidence


def test_the_table_is_complete():
    rules = ("exact", "soft", "straight_through", "argmax", "expected")
    assert set(FAST.children) == set(REFERENCE.children) == {(r, i, e) for r in rules for i in ("unit", "region")
                                                             for e in (False, True)}
    assert FAST.closed_form_leaves and not REFERENCE.closed_form_leaves


@pytest.mark.parametrize("key", [k for k in KEYS if k[0] in ("argmax", "expected")], ids=str)
def test_deterministic_paths_equal_their_reference(key):
    rule, interpolation, given = key
    spn = spread_out(RatSPN(4, depth=2, num_repetitions=3, num_sums=3, num_leaves=2, leaf=Normal(), seed=4).double())
    evidence = _evidence(5, given)
    args = (spn, 5, rule, 1.0, interpolation, evidence)
    torch.testing.assert_close(sample(*args, paths=FAST), sample(*args, paths=REFERENCE), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("key", [k for k in KEYS if k[0] in ("exact", "straight_through")], ids=str)
def test_one_hot_paths_draw_exact_samples(key, fit):
    rule, interpolation, given = key
    torch.manual_seed(1)
    spn = spread_out(RatSPN(4, depth=2, num_repetitions=3, num_sums=3, num_leaves=2, leaf=Bernoulli(), seed=2).double())
    with torch.no_grad():
        probs = spn(STATES).exp()
    if given:
        probs = probs * (STATES[:, 0] == 1)
        probs = probs / probs.sum()
    n = 40_000
    x = sample(spn, n, rule, 0.5, interpolation, _evidence(n, given)).detach()
    assert fit(torch.bincount(state_index(x, [(0.0, 1.0)] * 4), minlength=16), probs) > 1e-3


def _gradients(spn: RatSPN, rule: str, interpolation: str, given: bool, paths, n: int) -> torch.Tensor:
    spn.zero_grad()
    weights = torch.linspace(-1.0, 2.0, 4, dtype=torch.float64)
    x = sample(spn, n, rule, 0.7, interpolation, _evidence(n, given), paths=paths)
    ((x * weights).sum(-1) ** 2).mean().backward()  # nonlinear, so the selections' gradients matter
    return torch.cat([p.grad.flatten() for p in spn.parameters()])


@pytest.mark.parametrize("key", [k for k in KEYS if k[0] in ("soft", "straight_through")
                                 and (FAST.children[k] is not REFERENCE.children[k] or k[0] == "soft")], ids=str)
def test_fast_differentiable_paths_have_the_expected_gradient_of_their_reference(key):
    """Sensitive enough to catch a fast straight-through path whose soft selection is not coupled to its hard draw
    (that mutant gives max |z| ≈ 9 here; the real one ≈ 3)."""
    rule, interpolation, given = key
    torch.manual_seed(0)
    spn = RatSPN(4, depth=2, num_repetitions=2, num_sums=3, num_leaves=2, leaf=Normal(), seed=3).double()
    n, repeats = 20_000, 8
    fast = torch.stack([_gradients(spn, rule, interpolation, given, FAST, n) for _ in range(repeats)])
    reference = torch.stack([_gradients(spn, rule, interpolation, given, REFERENCE, n) for _ in range(repeats)])
    standard_error = (fast.var(0) / repeats + reference.var(0) / repeats).sqrt() + 1e-12
    z = (fast.mean(0) - reference.mean(0)).abs() / standard_error
    assert z.max() < 5.5, z.max()


@pytest.mark.parametrize("leaf", [Normal(), Bernoulli()], ids=["closed-form-leaves", "drawn-leaves"])
@pytest.mark.parametrize("key", [k for k in KEYS if k[0] == "soft"], ids=str)
def test_soft_paths_draw_the_law_of_their_reference(key, leaf):
    _, interpolation, given = key
    torch.manual_seed(5)
    spn = spread_out(RatSPN(4, depth=2, num_repetitions=3, num_sums=3, num_leaves=2, leaf=leaf, seed=6).double())
    n = 20_000
    with torch.no_grad():
        fast = sample(spn, n, "soft", 0.6, interpolation, _evidence(n, given), paths=FAST)
        reference = sample(spn, n, "soft", 0.6, interpolation, _evidence(n, given), paths=REFERENCE)
    for v in range(1 if given else 0, 4):
        assert stats.ks_2samp(fast[:, v].numpy(), reference[:, v].numpy()).pvalue > 1e-3 / 4, v
    products = lambda x: (x[:, :, None] * x[:, None, :]).flatten(1)  # noqa: E731
    difference = products(fast).mean(0) - products(reference).mean(0)
    error = ((products(fast).var(0) + products(reference).var(0)) / n).sqrt() + 1e-12
    assert (difference.abs() / error).max() < 5.0


def _all_gradients(spn: RatSPN, weights: torch.Tensor) -> torch.Tensor:
    spn.zero_grad()
    x = sample(spn, weights.shape[0], "straight_through", temperature=0.7, interpolation="region")
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
    monkeypatch.setattr(Normal, "gaussian_relaxation", lambda self, params: None)
    drawn = torch.stack([_all_gradients(spn, weights) for _ in range(repeats)])
    standard_error = (contracted.var(0) / repeats + drawn.var(0) / repeats).sqrt() + 1e-12
    z = (contracted.mean(0) - drawn.mean(0)).abs() / standard_error
    assert z.max() < 5.5, z.max()


def test_contracted_selection_gradient_has_the_law_of_the_drawn_sum():
    """Per leaf selection entry, for a fixed upstream gradient g: an unselected component's gradient is
    N(Σ g μ, Σ g² σ²) over its region's variables and channels; a selected one's is Σ g · coupled."""
    torch.manual_seed(0)
    spn = RatSPN((2, 1, 5), depth=2, num_repetitions=2, num_sums=2, num_leaves=3, leaf=Normal(), seed=1).double()
    n = 4000
    hard = top_down(spn, n, "exact").detach()
    coupled = torch.randn(n, 2, 5, dtype=torch.float64)
    g = torch.randn(n, 2, 5, dtype=torch.float64)
    mean, std = (m.detach() for m in spn.leaf.gaussian_relaxation(spn.leaf_layer.params()))  # [C, F, I, R]
    selection = hard.clone().requires_grad_()
    layer = spn.leaf_layer
    term = ContractedSelectionGradient.apply(
        selection, layer, layer.component_slots(mean), layer.component_slots(std * std), coupled
    )
    assert torch.equal(term, torch.zeros_like(term))
    term.backward(g)
    expected_mean = torch.zeros_like(hard)
    expected_var = torch.zeros_like(hard)
    expected_chosen = torch.zeros(hard.shape[:3], dtype=torch.float64)
    for r in range(2):
        for v in range(5):
            region = spn.leaf_layer.variable_region[r, v]
            expected_mean[:, r, region] += (g[:, :, v, None] * mean[:, v, :, r]).sum(1)
            expected_var[:, r, region] += (g[:, :, v, None] ** 2 * std[:, v, :, r] ** 2).sum(1)
            expected_chosen[:, r, region] += (g[:, :, v] * coupled[:, :, v]).sum(1)
    selected = hard > 0.5
    assert torch.allclose(selection.grad[selected], expected_chosen[..., None].expand_as(hard)[selected])
    free = ~selected & (expected_var > 0)
    z = (selection.grad - expected_mean)[free] / expected_var[free].sqrt()
    assert abs(z.mean().item()) < 0.02 and abs(z.std().item() - 1) < 0.02
    assert torch.equal(selection.grad[~selected & (expected_var == 0)], expected_mean[~selected & (expected_var == 0)])
